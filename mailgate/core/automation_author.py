"""The author runtime of automations (AUTOMATIONS.md §4.1 Binding, Messages): what ``Class(**data)``,
``Class.start``, handles, ``run``/``nice`` and messages sent from outside a step do.

- Inside an action (any context with a session: foreground, cron, callback, a step):
  ``Class(**data)`` creates an automation bound to the action's session **in the action's commit**
  (created only if the action commits), and ``send_message`` joins that commit too.
- From free code (the API, the CLI, tests, a thread): ``await Class.start_async(...)`` /
  ``Class.start(...)`` and ``await handle.send_message_async(...)`` commit on their own.
- Nodes never run in the caller's thread: ``run()``/``nice()`` wake this process's runner.

Messages sent from outside a step return a :class:`MessageHandle`: ``wait(timeout)`` and ``result()``
(the receiver's return value), since the receiver may run in another process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from mailgate.automations import context as automation_context
from mailgate.automations.errors import AutomationError
from mailgate.automations.flow import Automation
from mailgate.automations.registry import AutomationRegistry
from mailgate.automations.unique import unique_key
from mailgate.core import answers as codec
from mailgate.core import automation_broadcasts as broadcasts
from mailgate.core.automation_rows import sender_json, text_value
from mailgate.core.automation_runner import AutomationRunner
from mailgate.core.bridge import on_loop, run_on_loop
from mailgate.core.context import ANONYMOUS, CURRENT, User
from mailgate.errors import ActionError, AutomationFenced, NotFound
from mailgate.store.base import (
    AutomationRecord,
    AutomationStart,
    AutomationUpdate,
    Changes,
    NewAutomation,
    NewMessage,
    Store,
)

T = TypeVar("T")
WAIT_POLL = 0.05  # seconds between two reads while waiting for another process's work


def automation_key(secret: bytes, automation_id: str) -> str:
    """The automation's key for URLs: 128 bits of HMAC-SHA256 of its id, URL-safe."""
    digest = hmac.new(secret, automation_id.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _user(user: Any) -> User:
    if user is None:
        return ANONYMOUS
    if isinstance(user, User):
        return user
    if isinstance(user, dict):
        return User(**{**user, "privileges": tuple(user.get("privileges", ()))})
    if isinstance(user, str):
        return User(id=user)
    raise AutomationError(f"user must be a User, a dict of its fields or a user id, not {type(user).__name__}")


class MessageHandle:
    """A message queued for an automation: ``wait(timeout)`` until it is delivered or dropped,
    ``result()`` the receiver's return value (None if dropped or not delivered yet). For a broadcast
    (``broadcast=True``): until its last hop was consumed, and ``result()`` is the list of the results
    of the receivers it reached, in order (the seed's return value)."""

    def __init__(self, binding: AuthorBinding, message_id: str, automation_id: str | None, state: str = "queued",
                 broadcast: bool = False) -> None:
        self._binding = binding
        self.id = message_id
        self.automation_id = automation_id
        self.state = state
        self.broadcast = broadcast
        self._result: Any = None
        self._hops = 0  # a broadcast's hops read so far

    def __repr__(self) -> str:
        return f"<MessageHandle {self.id} {self.state}>"

    async def wait_async(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if await self.refresh_async():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(WAIT_POLL)

    def wait(self, timeout: float = 10.0) -> bool:
        return self._binding.blocking(self.wait_async(timeout), "MessageHandle.wait()", "wait_async",
                                      timeout + 5)  # type: ignore[no-any-return]

    async def refresh_async(self) -> bool:
        """Read the message's state; True once it was delivered or dropped."""
        if self.broadcast and self.state != "dropped" and self._result is None:
            self.state, self._result, self._hops = await broadcasts.results(self._binding.store, self.id, self._hops)
            if self.state == "delivered" and self._result is None:
                self._result = []
            return self.state != "queued"
        if self.state != "queued" or self.automation_id is None:
            return self.state != "queued"
        for m in await self._binding.store.automation_messages(self.automation_id):
            if m.id == self.id:
                self.state = m.state
                self._result = text_value(m.result)
                break
        else:  # the automation is gone (killed, deleted): its messages with it
            self.state = "dropped"
        return self.state != "queued"

    def result(self) -> Any:
        return self._result


class AuthorBinding:
    """One runtime's implementation of the author API's storage side (see the module docstring)."""

    def __init__(self, store: Store, classes: AutomationRegistry, runner: AutomationRunner, secret: bytes,
                 loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.store = store
        self.classes = classes
        self.runner = runner
        self.secret = secret
        self.loop = loop
        self.read_timeout = read_timeout

    # -- plumbing -------------------------------------------------------------------------------------
    def blocking(self, coro: Coroutine[Any, Any, T], what: str, instead: str, timeout: float | None = None) -> T:
        """Run ``coro`` on the runtime's loop for sync code; refused on the loop itself."""
        if on_loop(self.loop):
            coro.close()
            raise ActionError(f"{what} would block the event loop; in async code use `await ...{instead}(...)`")
        return run_on_loop(self.loop, coro, timeout or self.read_timeout)

    def _name(self, cls: type[Automation]) -> str:
        name = cls.get_automation_class_name()
        self.classes.resolve(name)  # a class this process does not know would never run: say so now
        return name

    def _bind(self, cls: type[Automation], rec: AutomationRecord) -> Automation:
        instance = cls._bind(rec.id, codec.decode(rec.data), session_id=rec.session_id, state=rec.state)
        instance._key = rec.key
        return instance

    def _new(self, cls: type[Automation], data: dict[str, Any], session_id: str | None,
             user: User) -> tuple[NewAutomation, Automation]:
        if not isinstance(data, dict):
            raise AutomationError(f"{cls.__name__}: data must be a dict, not {type(data).__name__}")
        text = codec.encode(data)
        automation_id = uuid.uuid4().hex
        new = NewAutomation(id=automation_id, cls=self._name(cls), session_id=session_id, data=text,
                            key=automation_key(self.secret, automation_id), owner=user.to_json(),
                            unique_key=unique_key(cls, data, session_id), wake_at=self.store.now())
        instance = cls._bind(automation_id, codec.decode(text), session_id=session_id)
        instance._key = new.key
        return new, instance

    # -- creation ---------------------------------------------------------------------------------------
    def create_in_action(self, instance: Automation, data: dict[str, Any]) -> None:
        """``Class(**data)`` in an action or step: created in its commit, bound to its session."""
        ctx = CURRENT.get()
        if ctx is None:
            raise AutomationError(f"{type(instance).__name__}(...) creates an automation inside an action; from other "
                                  f"code use `await {type(instance).__name__}.start_async(...)` (or start() in a thread)")
        data.pop("autorun", None)  # it always runs: in the runner, once the action has committed
        new, made = self._new(type(instance), data, ctx.session_id, ctx.user)
        ctx.new_automations.append(AutomationStart(new))
        instance.id, instance.data, instance.session_id = made.id, made.data, made.session_id
        instance.answers, instance._state, instance._key = None, "running", made._key

    async def start(self, cls: type[Automation], session: str | None, user: Any, autorun: bool,
                    data: dict[str, Any]) -> tuple[Automation, bool]:
        new, _ = self._new(cls, data, session, _user(user))
        if not autorun:  # created idle: its first node is entered at run() / nice()
            new = replace(new, wake_at=None)
        rec, created = await self.store.create_automation(new)
        self.runner.wake()
        return self._bind(cls, rec), created

    async def create_on_message(self, cls: type[Automation], message: str, token: str | None, data: Any, user: Any,
                                session: str | None) -> MessageHandle | None:
        if not cls.satisfies_data_requirements(message, data):
            return None
        fields = dict(data) if isinstance(data, dict) else {}
        new, _ = self._new(cls, fields, session, _user(user))
        msg = NewMessage(id=uuid.uuid4().hex, message=message, automation_id=new.id, token=token,
                         data=codec.encode_value(data), sender=sender_json(None, user=_user(user).to_json()))
        rec, _created = await self.store.create_automation(new, messages=[msg])
        self.runner.wake()
        return MessageHandle(self, msg.id, rec.id)

    # -- handles ------------------------------------------------------------------------------------------
    def handle(self, instance: Automation, automation_id: Any) -> None:
        if not isinstance(automation_id, str) or not automation_id:
            raise AutomationError(f"automation_id must be an automation's id (a string), not {automation_id!r}")
        instance.id, instance.data, instance.session_id = automation_id, {}, None
        instance.answers, instance._state, instance._key = None, "running", None

    async def by_key(self, cls: type[Automation], key: str) -> Automation:
        rec = await self.store.get_automation_by_key(key)
        if rec is None or self.classes.resolve(rec.cls) is not cls:
            raise NotFound(f"no {cls.__name__} automation has the key {key!r}")
        return self._bind(cls, rec)

    async def run(self, instance: Automation, wait: float | None) -> list[str]:
        if instance.id is None:
            raise AutomationError("this automation has no id yet (created in an action that has not committed)")
        await self.poke(instance.id)
        deadline = time.monotonic() + (wait or 0)
        while True:
            rec = await self.store.get_automation(instance.id)
            if rec is None:
                raise NotFound(f"no automation {instance.id!r}")
            now = self.store.now()
            settled = rec.state != "running" or (rec.claim_holder is None or (rec.claim_until or 0) < now) and (
                rec.wake_at is None or rec.wake_at > now)
            if settled or time.monotonic() >= deadline:
                instance.data.clear()
                instance.data.update(codec.decode(rec.data))
                instance._state = rec.state
                steps = await self.store.automation_history(instance.id)
                return sorted({s.node for s in steps if s.open})
            await asyncio.sleep(WAIT_POLL)

    def nice(self, instance: Automation) -> None:
        if instance.id is None:
            raise AutomationError("this automation has no id yet (created in an action that has not committed)")
        if on_loop(self.loop):
            self.loop.create_task(self.poke(instance.id))
        else:
            asyncio.run_coroutine_threadsafe(self.poke(instance.id), self.loop)

    async def poke(self, automation_id: str) -> None:
        """Make a running automation due now (a fenced commit of its wake time alone) and wake the runner;
        one being run already, or changed meanwhile, is left as it is (it runs anyway)."""
        rec = await self.store.get_automation(automation_id)
        now = self.store.now()
        if (rec is not None and rec.state == "running" and (rec.wake_at is None or rec.wake_at > now)
                and (rec.claim_until is None or rec.claim_until < now)):
            with contextlib.suppress(AutomationFenced):
                await self.store.commit(Changes(automations=[AutomationUpdate(
                    rec.id, rec.version, None, data=None, wake_at=now, keep_claim=True)]))
        self.runner.wake()

    # -- messages -------------------------------------------------------------------------------------------
    def send_now(self, automation_id: str | None, cls: type[Automation] | None, message: str, token: str | None,
                 data: Any) -> MessageHandle | None:
        """A message from outside a step: in an action's commit, else (a thread) in its own."""
        ctx = CURRENT.get()
        if ctx is not None:
            msg = self._message(automation_id, cls, message, token, data, ctx.user)
            if msg is None:
                return None
            ctx.automation_messages.append(msg)
            return MessageHandle(self, msg.id, automation_id, broadcast=cls is not None)
        return self.blocking(self.send(automation_id, cls, message, token, data), "send_message()",
                             "send_message_async")

    async def send(self, automation_id: str | None, cls: type[Automation] | None, message: str, token: str | None,
                   data: Any, user: User = ANONYMOUS) -> MessageHandle | None:
        msg = self._message(automation_id, cls, message, token, data, user)
        if msg is None:
            return None
        rec = await self.store.enqueue_message(msg)
        self.runner.wake()
        return MessageHandle(self, rec.id, automation_id, rec.state, broadcast=cls is not None)

    def _message(self, automation_id: str | None, cls: type[Automation] | None, message: str, token: str | None,
                 data: Any, user: User) -> NewMessage | None:
        if not isinstance(message, str) or not message:
            raise AutomationError(f"send_message: the message name must be a non-empty string, not {message!r}")
        if cls is not None and not cls.satisfies_data_requirements(message, data):
            return None
        return NewMessage(id=uuid.uuid4().hex, message=message, automation_id=automation_id,
                          broadcast_class=self._name(cls) if cls is not None else None, token=token,
                          data=codec.encode_value(data), sender=sender_json(None, user=user.to_json()))


def install(binding: AuthorBinding) -> None:
    automation_context.install_binding(binding)


def uninstall(binding: AuthorBinding) -> None:
    automation_context.remove_binding(binding)
