"""The automations runner (AUTOMATIONS.md §4.2): claims due automations and runs their steps.

Processes with the ``worker`` role run :meth:`AutomationRunner.run`; ``mailgate automations step``
calls :meth:`AutomationRunner.run_due` (one pass: what is due now) or ``run`` (``--loop``).

One run of one automation: claim it (``claim_automations``, lease ``claim_lease``, a heartbeat
while it runs), take the bound session's lease with fresh answers (busy: give the claim back with a
back-off, never wait holding it), run :func:`mailgate.automations.engine.advance` in the action
thread pool within ``step_budget`` (the step code sees an action context: ``send_email``,
``background_action``, ``interview_email``, ``user_info`` ... work as in a callback), then commit
everything in one transaction fenced by the automation's version and claim: steps, data, the
answers, the messages consumed and sent, the tasks queued, an ``automation`` event for the
session's pages. A refused commit (the claim lapsed and another runner took over) applies nothing.
Store trouble is not a step error: the run is given back and tried again, ``max_attempts`` times,
then the automation fails with ``WorkerLost``.

``send_email`` inside a step is journaled by (step, call index) in a commit of its own right after
the relay's answer, and its Message-ID is derived from the pair: a re-run of the step (its runner
died) gets the recorded answer instead of sending again (G3). Step ids are derived from what the run
started from, so a re-run makes the same ids and finds its journal.

Timers: the loop sleeps until the earliest ``wake_at`` (``next_wake``, read from the index: O(1),
whatever the number waiting), at most ``timer_poll``; its own commits and the store's doorbell wake
it early. A tick claims only what is due.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from mailgate import metrics
from mailgate.automations import engine
from mailgate.automations.context import CURRENT_RUN
from mailgate.automations.errors import OrphanedAutomation, UnknownAutomationClass
from mailgate.automations.registry import AutomationRegistry
from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.core import automation_broadcasts as broadcasts
from mailgate.core.actions import Invoker, cron_enabled
from mailgate.core.automation_journal import Run, SendJournal
from mailgate.core.automation_rows import (
    THREADED_ACTION,
    automation_event,
    message_done,
    new_message,
    new_step,
    queued,
    step_ids,
    step_row,
    step_update,
)
from mailgate.core.context import CURRENT, User
from mailgate.core.interviews import Registry
from mailgate.core.threads import DaemonThreadPool, LoopResults
from mailgate.errors import AutomationFenced, MailgateError, StoreError
from mailgate.outbound.transport import Outbound
from mailgate.store.base import (
    AutomationUpdate,
    Changes,
    ClaimedAutomation,
    CommitResult,
    NewEvent,
    NewStep,
    NewTask,
    Recheck,
    SessionSave,
    StepUpdate,
    Store,
)

log = logging.getLogger(__name__)

Hydrate = Callable[..., Awaitable[Any]]
Commit = Callable[[Changes], Awaitable[CommitResult]]
BUSY_BACKOFF = (0.05, 2.0)  # seconds: first and longest back-off when the bound session is busy


def step_budget(config: Config) -> float:
    """``[automations] step_budget``, 0 meaning ``[sessions] lock_timeout``."""
    return config.automations.step_budget or config.sessions.lock_timeout


class AutomationRunner:
    """Runs due automations in this process (see the module docstring)."""

    def __init__(self, config: Config, store: Store, classes: AutomationRegistry, interviews: Registry,
                 invoker: Invoker, commit: Commit, hydrate: Hydrate, outbound: Outbound, process_id: str) -> None:
        self.config = config
        self.store = store
        self.classes = classes
        self.interviews = interviews
        self.invoker = invoker
        self.commit = commit
        self.hydrate = hydrate
        self.outbound = outbound
        self.holder = f"{process_id}:automations"
        self.engine_config = engine.EngineConfig(recheck_interval=config.automations.recheck_interval,
                                                 timezone=config.scheduler.timezone)
        self.resolver: engine.Resolver | None = None
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}  # automation id -> runs lost to store trouble in a row
        self._busy: dict[str, int] = {}  # automation id -> busy-session back-offs in a row
        self._orphans: dict[str, float] = {}  # automation id -> when last found orphaned (store clock); logged once
        self._stopping = False
        self._watching = False
        self.journal = SendJournal(store, outbound, self.holder)
        self.executor = DaemonThreadPool(config.automations.concurrency, name="mailgate-automation")
        self._results: LoopResults | None = None  # the engine's outcomes back to the loop, batched
        self._asking: list[asyncio.Future[list[ClaimedAutomation]]] = []  # successors asked for in this turn
        # successors claimed and waiting for the run that asked for them to end: their claims are
        # renewed with the running ones' (a slow commit must not let them lapse, or another runner
        # would run them too)
        self._waiting: set[str] = set()
        # automation id -> until when (store clock) its claim is known to be ours: set by the claim,
        # moved on by each heartbeat that renewed it; a run whose claim may have lapsed (heartbeats
        # late on an overloaded host) asks the store before it runs any code (see _still_held)
        self._held_until: dict[str, float] = {}
        self._claimed_at = float("-inf")  # when the last claim started
        self._counted = float("-inf")  # when the automations gauge was last read
        self._backlog_at = float("-inf")
        self._broadcast_at = float("-inf")
        self.runs = 0  # runs committed by this process (tests, the CLI's summary)
        self.active = False  # running in this process (the worker role): what orphaned() says is known
        self._rechecks = RecheckBatch(store, self.holder)

    # -- the loop ----------------------------------------------------------------------------------
    def wake(self) -> None:
        """Something may be due sooner than the runner thought (a commit, the doorbell). With every
        slot taken the loop could claim nothing: the run that frees one wakes it (``_done``)."""
        if len(self._running) < self.config.automations.concurrency:
            self._wake.set()

    async def run(self) -> None:
        """Run automations as they become due, until cancelled (the daemon's ``automations`` task)."""
        self._watch()
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(), name="automation-heartbeat")
        self.active = True
        try:
            while not self._stopping:
                await self._tick()
        finally:
            self.active = False
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def run_due(self) -> int:
        """One pass: run what is due now and return when nothing due is left to this process (the
        seed's ``automation_step``); the number of runs committed."""
        self._watch()
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(), name="automation-heartbeat")
        before = self.runs
        with contextlib.suppress(StoreError):
            await broadcasts.expand(self.store, self.commit)
        try:
            while True:
                started = await self._claim()
                if not started and not self._running:
                    break
                await self._wait_one()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        return self.runs - before

    async def stop(self, grace: float) -> None:
        """Let running automations finish for ``grace`` seconds; the others' claims are given back
        (their runs commit nothing)."""
        self._stopping = True
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=grace)
        left = [aid for aid, task in self._running.items() if not task.done()]
        for task in self._running.values():
            task.cancel()
        if left:
            with contextlib.suppress(StoreError):
                await self.store.release_automations(self.holder, left)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            self.store.watch_automations(self.wake)

    async def _tick(self) -> None:
        self._wake.clear()
        if time.monotonic() - self._backlog_at >= 1.0:  # the due backlog, through the timer index
            self._backlog_at = time.monotonic()
            with contextlib.suppress(StoreError):
                due, oldest = await self.store.automation_backlog()
                metrics.AUTOMATIONS_DUE.set(due)
                metrics.AUTOMATION_DUE_LAG.set(max(0.0, self.store.now() - oldest) if oldest is not None else 0.0)
        if time.monotonic() - self._broadcast_at >= self.config.automations.timer_poll:
            self._broadcast_at = time.monotonic()
            with contextlib.suppress(StoreError):
                await broadcasts.expand(self.store, self.commit)
        if time.monotonic() - self._counted > 30:
            self._counted = time.monotonic()
            with contextlib.suppress(StoreError):
                for state, n in (await self.store.count_automations()).items():
                    metrics.AUTOMATIONS.labels(state).set(n)
        started = await self._claim()
        if started and len(self._running) < self.config.automations.concurrency:
            return  # perhaps more is due: claim again at once
        timeout = self.config.automations.timer_poll
        if len(self._running) < self.config.automations.concurrency:
            nxt = await self.store.next_wake()
            now = self.store.now()
            if nxt is not None:
                if nxt > now:
                    timeout = min(timeout, nxt - now)
                elif nxt > self._claimed_at:  # it became due after the claim looked: claim again now
                    timeout = 0
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: 3.11's can swallow a cancellation
                await self._wake.wait()

    async def _claim(self) -> int:
        free = self.config.automations.concurrency - len(self._running)
        if free <= 0 or self._stopping:
            return 0
        self._claimed_at = self.store.now()  # at most the time the claim compares wake_at with
        try:
            claimed = await self.store.claim_automations(self.holder, free, self.config.automations.claim_lease)
        except StoreError as exc:
            log.warning("claiming due automations failed: %s; trying again", exc, extra={"event": "automation.claim_failed"})
            return 0
        self._held(claimed, self._claimed_at)
        self._start(claimed)
        return len(claimed)

    def _start(self, claimed: list[ClaimedAutomation]) -> None:
        for c in claimed:
            task = asyncio.get_running_loop().create_task(self._run_one(c), name=f"automation {c.automation.id}")
            self._running[c.automation.id] = task
            task.add_done_callback(functools.partial(self._done, c.automation.id))

    def _successor(self) -> asyncio.Future[list[ClaimedAutomation]] | None:
        """The claim of the automation due next, for the slot of a run about to commit (none or one;
        started at once instead if another slot is free).

        Asked for before that commit is submitted: the successors asked for in one turn of the loop
        are claimed with one ``claim_automations`` sent in the next turn, ahead of the writer's next
        batch, so on SQLite the claim and the commits share a group commit (a run costs one writer
        round trip, not a claim and then a commit). A successor starts only once the run that asked
        for it has ended, so at most ``concurrency`` runs have run code that is not committed (G2)."""
        if self._stopping:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[ClaimedAutomation]] = loop.create_future()
        self._asking.append(future)
        if len(self._asking) == 1:
            loop.create_task(self._claim_successors(), name="automation-successors")
        return future

    async def _claim_successors(self) -> None:
        asking, self._asking = self._asking, []
        asked_at = self.store.now()
        try:
            claimed = await self.store.claim_automations(self.holder, len(asking), self.config.automations.claim_lease)
        except StoreError:
            claimed = []  # the loop's own claim finds them
        except BaseException:
            for future in asking:
                future.cancel()
            raise
        self._held(claimed, asked_at)
        concurrency = self.config.automations.concurrency
        for i, future in enumerate(asking):
            mine = claimed[i:i + 1]
            if mine and not self._stopping and len(self._running) < concurrency:
                # a slot is free besides the asking run's (which still counts): no need to wait for
                # that run's end (PostgreSQL answers the claim before the commit)
                self._start(mine)
                mine = []
            if not future.done():
                self._waiting.update(c.automation.id for c in mine)
                future.set_result(mine)
            elif mine:  # its run was cancelled (stopping): the claim goes back
                await self._release_quietly([c.automation.id for c in mine])

    async def _take_successor(self, run: Run) -> None:
        """Start the run's successor in its slot (the runner stopping: give its claim back)."""
        successor, run.successor = run.successor, None
        if successor is None:
            return
        claimed = await successor  # cancelled with this run: _claim_successors gives the claim back
        self._waiting.difference_update(c.automation.id for c in claimed)
        if self._stopping:
            await self._release_quietly([c.automation.id for c in claimed])
            return
        self._start(claimed)

    async def _release_quietly(self, ids: list[str]) -> None:
        if ids:
            with contextlib.suppress(StoreError):
                await self.store.release_automations(self.holder, ids)

    def _held(self, claimed: list[ClaimedAutomation], asked_at: float) -> None:
        for c in claimed:
            self._held_until[c.automation.id] = asked_at + self.config.automations.claim_lease

    async def _still_held(self, automation_id: str) -> bool:
        """True if this runner's claim of the automation is sure to last a while yet: from the claim or
        the last heartbeat, else by renewing it now. False if it lapsed and another runner took it:
        this one must not run its code too."""
        lease = self.config.automations.claim_lease
        if self._held_until.get(automation_id, float("-inf")) - self.store.now() > lease / 3:
            return True
        at = self.store.now()
        if automation_id not in await self.store.heartbeat_automations(self.holder, [automation_id], lease):
            self._held_until.pop(automation_id, None)
            return False
        self._held_until[automation_id] = at + lease
        return True

    def _done(self, automation_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(automation_id) is task:
            del self._running[automation_id]
            self._held_until.pop(automation_id, None)
        self.wake()  # not when its successor took the slot

    async def _wait_one(self) -> None:
        if self._running:
            await asyncio.wait(list(self._running.values()), return_when=asyncio.FIRST_COMPLETED)

    async def _heartbeat(self) -> None:
        lease = self.config.automations.claim_lease
        while True:
            await asyncio.sleep(lease / 3)
            held = [*self._running, *self._waiting]
            if held:
                at = self.store.now()
                with contextlib.suppress(StoreError):
                    kept = set(await self.store.heartbeat_automations(self.holder, held, lease))
                    for aid in held:
                        if aid in kept:
                            self._held_until[aid] = at + lease
                        else:
                            self._held_until.pop(aid, None)

    # -- one automation ----------------------------------------------------------------------------
    async def _run_one(self, claimed: ClaimedAutomation) -> None:
        auto = claimed.automation
        try:
            cls = self.classes.resolve(auto.cls)
        except UnknownAutomationClass:
            return await self._orphaned(auto.id, auto.cls, f"its class {auto.cls} is not loaded")
        run = Run(claimed, cls, auto.version)
        try:
            if not await self._still_held(auto.id):
                log.warning("automation %s: its claim lapsed before its run (heartbeats late: this host or the store is "
                            "overloaded, or [automations] claim_lease is too short); left to the runner that holds it now",
                            auto.id, extra={"event": "automation.claim_lapsed", "automation": auto.id})
                return
            if auto.session_id is not None and not await self._lease(run):
                return
            await self._advance(run)
            self._failures.pop(auto.id, None)
            self._orphans.pop(auto.id, None)  # restored, or moved with goto
        except OrphanedAutomation as exc:
            await self._orphaned(auto.id, auto.cls, str(exc))
        except AutomationFenced as exc:
            log.info("automation %s: its run was refused at commit (%s)", auto.id, exc,
                     extra={"event": "automation.fenced", "automation": auto.id})
            with contextlib.suppress(StoreError):  # still ours (a submit or kill moved it on): due again at once
                await self.store.release_automations(self.holder, [auto.id])
        except StoreError as exc:
            await self._store_trouble(run, exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of the runner or the engine: the automation fails, the runner lives on
            log.exception("automation %s: the runner failed", auto.id, extra={"event": "automation.failed"})
            await self._fail(run, "RunnerError", traceback.format_exc().strip().splitlines()[-1], traceback.format_exc())
        finally:
            if run.lease_holder is not None and run.session is not None:
                with contextlib.suppress(StoreError):
                    await self.store.release_lease(run.session.id, run.lease_holder)
            await self._take_successor(run)

    async def _lease(self, run: Run) -> bool:
        """Take the bound session's lease with its answers as committed; False (claim given back) if
        it is busy or the session is gone."""
        auto = run.claimed.automation
        assert auto.session_id is not None
        holder = f"{self.holder}:{auto.id}"
        busy, session = await self.store.acquire_lease_and_read(auto.session_id, holder, self.config.sessions.lease_ttl,
                                                                step_budget(self.config))
        if busy is not None:
            n = self._busy.get(auto.id, 0)
            self._busy[auto.id] = n + 1
            backoff = min(BUSY_BACKOFF[0] * 2 ** n, BUSY_BACKOFF[1])
            await self.store.release_automations(self.holder, [auto.id], self.store.now() + backoff)
            return False
        self._busy.pop(auto.id, None)
        run.lease_holder = holder
        if session is None:  # deleted: its automations went with it
            await self.store.release_automations(self.holder, [auto.id])
            return False
        run.session = session
        return True

    async def _snapshot(self, run: Run, answers: dict[str, Any] | None) -> engine.Snapshot:
        c = run.claimed
        steps = [step_row(s) for s in c.steps]
        have = {s.id for s in steps}
        if any(s.split_id is not None and s.split_id not in have for s in steps):
            # the Split steps of open paths (for Join), up the nesting: read from the history
            history = {s.id: s for s in await self.store.automation_history(c.automation.id)}
            wanted = [s.split_id for s in steps]
            while wanted:
                sid = wanted.pop()
                if sid is not None and sid not in have and sid in history:
                    steps.append(step_row(history[sid]))
                    have.add(sid)
                    wanted.append(history[sid].split_id)
        return engine.Snapshot(
            automation_id=c.automation.id, data=codec.decode(c.automation.data), steps=tuple(steps),
            messages=tuple(queued(m) for m in c.messages), answers=answers, session_id=c.automation.session_id,
            # no open step while running: nothing entered yet (every path of a running automation holds
            # an open step); its version may have moved (a journaled send before a crash, a wake-up)
            state=c.automation.state, fresh=not c.steps,
        )

    async def _advance(self, run: Run) -> None:
        auto = run.claimed.automation
        answers = codec.decode(run.session.answers) if run.session is not None else None
        if answers is not None:
            await self.hydrate(answers)
        snap = await self._snapshot(run, answers)
        now = self.store.now()
        await self._threaded_ended(run, snap, now)
        for s in snap.steps:  # timer lateness: how late the due timers are taken up
            if s.state == "waiting" and s.wake_at is not None and s.wake_at <= now:
                # a recheck moved only the automation's due time: the step's own may be older
                due = max(s.wake_at, auto.wake_at) if auto.wake_at is not None and auto.wake_at <= now else s.wake_at
                metrics.AUTOMATION_TIMER_LATENESS.observe(now - due)
        ctx = self._context(run)
        ids = step_ids(auto.id, snap)
        budget = step_budget(self.config)

        hooks = {"send_email": ctx.send_hook, "send_email_async": ctx.send_hook_async}
        loop = asyncio.get_running_loop()

        def call() -> engine.Outcome:
            token = CURRENT.set(ctx)
            try:
                return engine.advance(run.cls, snap, now=now, config=self.engine_config, clock=_tracking(self.store.now, run),
                                      new_id=ids, hooks=hooks, awaiter=_on_loop(loop, run))
            finally:
                CURRENT.reset(token)

        if self._results is None or self._results.loop is not loop:
            self._results = LoopResults(loop)
        # the runs started in one turn of the loop go to the workers with one wake-up, and their
        # outcomes come back with one (run_in_executor costs a thread hop each way per run)
        future = self.executor.call(self._results, _timed(call))
        # past the budget the future fails with TimeoutError (the outcome, if it comes, is dropped); a
        # bare timer cancelled at the end, not asyncio.timeout and a shield (a task and two futures
        # more per run), nor a shared slot that would keep every outcome alive for the whole budget
        timer = loop.call_later(budget, _time_out, future)
        try:
            outcome = await future
        except TimeoutError:
            _abandon(run)
            return await self._timed_out(run, snap, budget)
        except asyncio.CancelledError:  # the runner stops: its async steps stop with it
            _abandon(run)
            raise
        finally:
            timer.cancel()
        await self._commit(run, snap, outcome, ctx)

    async def _threaded_ended(self, run: Run, snap: engine.Snapshot, now: float) -> None:
        """The ``threaded=True`` steps whose task ended (its ``task_done`` is queued). The task's commit
        closed the step's row (``NewMessage.closes_step``); a message queued without it (by an older
        version) has the row, done with the task's value or failed with its error, commit with this run."""
        running = {s.id: s for s in snap.steps if s.state == "running"}
        for m in run.claimed.messages:
            if m.message != "task_done" or m.token != THREADED_ACTION:
                continue
            run.threaded_closed = True
            if not running:
                continue
            ref = codec.decode_value(m.data).get("task")
            task = await self.store.get_task(ref.id) if ref is not None else None
            step_id = codec.decode_value(task.arguments).get("step") if task is not None else None
            step = running.pop(step_id, None) if step_id is not None else None
            if task is None or step is None:
                continue
            if task.state == "succeeded":
                value = codec.decode_value(task.result)["value"] if task.result else None
                run.threaded.append(engine.threaded_done(step, finished_at=now, result=value))
            else:
                run.threaded.append(replace(step, state="failed", message=f"{task.error_type}({task.error_message!r})",
                                            error_type=task.error_type, error_message=task.error_message,
                                            error_trace=task.error_trace, finished_at=now, wake_at=None))

    def _context(self, run: Run) -> Any:
        """The action context the step code runs in (bound automations only: free-standing ones have
        no session, and the session functions then say so)."""
        session = run.session
        user = User.from_json(run.claimed.automation.owner)
        action = f"automation {run.claimed.automation.cls}"
        if session is None:  # free-standing: send_email and user_info work; session functions cannot commit
            ctx = self.invoker.new_context("callback", "", None, action, {}, user)  # type: ignore[arg-type]
        else:
            ctx = self.invoker.new_context("callback", session.id, self.interviews.get(session.interview), action, {},
                                           user)
            ctx.accessed_at = session.accessed_at
            ctx.modified_at = session.modified_at
        ctx.send_hook = self.journal.hook(run, ctx)
        ctx.send_hook_async = self.journal.hook_async(run, ctx)
        return ctx

    # -- the commit ----------------------------------------------------------------------------------
    async def _commit(self, run: Run, snap: engine.Snapshot, out: engine.Outcome, ctx: Any) -> None:
        auto = run.claimed.automation
        save = None
        release = None
        new_tasks: list[Any] = []
        mailboxes: list[Any] = []
        starts: list[Any] = []
        sent = [new_message(m, auto.id) for m in out.sent]
        if out.messages:
            sent += await broadcasts.next_hops(self.store, list(run.claimed.messages), out.messages)
        events: list[NewEvent] = []
        if run.session is None and (ctx.new_tasks or ctx.new_mailboxes or out.tasks):
            raise MailgateError("a step of a free-standing automation (no session) called background_action() or "
                                "interview_email() or has a threaded=True step, which belong to a session; bind the automation to a session")
        if run.session is not None:
            session = run.session
            text = codec.encode(snap.answers or {})
            if text != session.answers:  # steps are no session access: touch=False
                save = SessionSave(session.id, text, session.version, touch=False,
                                   allow_cron=cron_enabled(snap.answers or {}, session.interview))
            release = (session.id, run.lease_holder) if run.lease_holder else None
            new_tasks = [replace(t, automation_id=auto.id) for t in ctx.new_tasks]
            new_tasks += [NewTask(uuid.uuid4().hex, session.id, session.interview, THREADED_ACTION,
                                  codec.encode_value({"step": t.step_id, "node": t.node}), auto.owner, None,
                                  self.config.tasks.max_attempts, automation_id=auto.id) for t in out.tasks]
            mailboxes = list(ctx.new_mailboxes)
            starts = list(ctx.new_automations)  # Class(**data) in a step: bound to the same session
            sent += ctx.automation_messages
            if out.created or out.finished_steps or out.state != "running" or run.threaded or run.threaded_closed:
                # the pages hear of a change only: a recheck that stays false tells them nothing
                events.append(NewEvent(session.id, "automation", json.dumps(automation_event(auto.id, auto.cls, snap, out))))
        data = codec.encode(out.data)
        if (save is None and not sent and not events and not new_tasks and not mailboxes and not starts
                and _recheck_only(run, snap, out, data)):
            # a false AsSoonAs evaluated again: only its next recheck time is written, batched (§4.1)
            if not await self._rechecks.add(Recheck(auto.id, run.version, out.wake_at)):
                raise AutomationFenced(f"automation {auto.id} moved on or was taken over; its recheck was not saved")
            self.runs += 1
            return
        update = AutomationUpdate(
            auto.id, run.version, self.holder, state=out.state, data=data,  # type: ignore[arg-type]
            wake_at=out.wake_at, steps_finished=[step_update(s) for s in (*out.updated, *run.threaded)],
            steps_opened=[new_step(s) for s in out.created], messages_done=[message_done(m) for m in out.messages],
        )
        changes = Changes(save=save, new_tasks=tuple(new_tasks), mailboxes=tuple(mailboxes), events=tuple(events),
                          release_lease=release, automations=(update,),
                          messages=tuple(sent), new_automations=tuple(starts))
        run.successor = self._successor()
        await self.commit(changes)
        run.lease_holder = None if release is not None else run.lease_holder
        self.runs += 1
        self.wake()
        self._report(run, out)

    def _report(self, run: Run, out: engine.Outcome) -> None:
        auto = run.claimed.automation
        for m in out.messages:
            _counter(metrics.AUTOMATION_MESSAGES, m.state).inc()
            if m.state == "dropped":
                log.info("automation %s: message %s dropped: %s", auto.id, m.id, m.error,
                         extra={"event": "automation.message_dropped", "automation": auto.id, "message": m.id})
        for s in out.finished_steps:
            _counter(metrics.AUTOMATION_STEPS, s.state).inc()
            if log.isEnabledFor(logging.DEBUG):  # the extra dict is built for nothing otherwise
                log.debug("automation %s: step %s (%s) %s", auto.id, s.node, s.id, s.message,
                          extra={"event": "automation.step", "automation": auto.id, "step": s.id, "node": s.node,
                                 "state": s.state})
            if s.state == "failed" and out.state == "failed":
                log.warning("automation %s (%s) failed at %s: %s: %s", auto.id, auto.cls, s.node, s.error_type,
                            s.error_message, extra={"event": "automation.failed", "automation": auto.id, "node": s.node})
        if out.state != "running":
            _counter(metrics.AUTOMATIONS_ENDED, out.state).inc()

    # -- when a run does not end normally ------------------------------------------------------------
    async def _timed_out(self, run: Run, snap: engine.Snapshot, budget: float) -> None:
        """The run overran the step budget: nothing it did commits; the step running then fails with
        StepTimeout (its thread is abandoned)."""
        step_id, node = run.current_step
        message = f"the step ran past its {budget:g} s budget ([automations] step_budget); nothing it did was saved"
        if step_id is not None and node is not None and step_id not in {s.id for s in snap.steps}:
            # a step entered in this run: its row is written failed (the path to it is not)
            row = NewStep(step_id, node, "failed", message=f"StepTimeout({message!r})", error_type="StepTimeout",
                          error_message=message, attempts=1, started=True)
            return await self._fail(run, "StepTimeout", message, "", opened=row)
        await self._fail(run, "StepTimeout", message, "", step_id)

    async def _fail(self, run: Run, kind: str, message: str, trace: str, step_id: str | None = None,
                    opened: NewStep | None = None) -> None:
        auto = run.claimed.automation
        steps = []
        if step_id is not None:
            steps.append(StepUpdate(step_id, "failed", f"{kind}({message!r})", error_type=kind, error_message=message,
                                    error_trace=trace or None))
        release = None
        if run.session is not None and run.lease_holder is not None:
            release = (run.session.id, run.lease_holder)
        try:
            await self.commit(Changes(release_lease=release, automations=(AutomationUpdate(
                auto.id, run.version, self.holder, state="failed", steps_finished=steps,
                steps_opened=(opened,) if opened is not None else ()),)))
        except MailgateError as exc:
            log.error("automation %s: could not record its failure (%s): %s", auto.id, kind, exc,
                      extra={"event": "automation.failed", "automation": auto.id})
            return
        run.lease_holder = None if release is not None else run.lease_holder
        metrics.AUTOMATIONS_ENDED.labels("failed").inc()
        log.warning("automation %s (%s) failed: %s: %s", auto.id, auto.cls, kind, message,
                    extra={"event": "automation.failed", "automation": auto.id})

    async def _store_trouble(self, run: Run, exc: StoreError) -> None:
        auto = run.claimed.automation
        n = self._failures.get(auto.id, 0) + 1
        self._failures[auto.id] = n
        if n >= self.config.automations.max_attempts:
            self._failures.pop(auto.id, None)
            message = f"{n} runs in a row failed in the store, the last with: {exc}"
            step = next((st for st in run.claimed.steps if st.state == "waiting"), None)
            first = getattr(run.cls._flow, "first", None)
            if step is None and first is not None:  # nothing entered yet: the first node's row says why
                row = NewStep(uuid.uuid4().hex, first, "failed", message=f"WorkerLost({message!r})",
                              error_type="WorkerLost", error_message=message, started=True)
                await self._fail(run, "WorkerLost", message, "", opened=row)
            else:
                await self._fail(run, "WorkerLost", message, "", step.id if step is not None else None)
            return
        log.warning("automation %s: store trouble (%s), run %d of %d; it runs again", auto.id, exc, n,
                    self.config.automations.max_attempts, extra={"event": "automation.retry", "automation": auto.id})
        with contextlib.suppress(StoreError):
            await self.store.release_automations(self.holder, [auto.id], self.store.now() + 0.1 * 2 ** n)

    def orphaned(self) -> list[str]:
        """The automations this runner found orphaned lately (class or open node gone): each is found
        again at every recheck while it stays so; one not seen for two recheck intervals (fixed by a
        goto, killed, or run by another process) is forgotten. What ``/healthz`` and ``mailgate
        healthcheck`` report, without reading any automation."""
        a = self.config.automations
        horizon = self.store.now() - (2 * a.recheck_interval + a.timer_poll)
        for aid, seen in list(self._orphans.items()):
            if seen < horizon:
                del self._orphans[aid]
        return sorted(self._orphans)

    async def _orphaned(self, automation_id: str, cls: str, why: str) -> None:
        first = automation_id not in self._orphans
        self._orphans[automation_id] = self.store.now()
        if first:
            log.warning("automation %s (%s) is orphaned: %s; it is not run (restore its class or node, or move it "
                        "with: mailgate automations goto %s NODE)", automation_id, cls, why, automation_id,
                        extra={"event": "automation.orphaned", "automation": automation_id})
        with contextlib.suppress(StoreError):
            # not due again before a recheck: an orphan must not spin the runner
            await self.store.release_automations(self.holder, [automation_id],
                                                 self.store.now() + self.config.automations.recheck_interval)


_COUNTERS: dict[tuple[int, str], Any] = {}


def _counter(family: Any, label: str) -> Any:
    """``family.labels(label)``, looked up once (``labels`` costs a few microseconds per call, three
    times per run)."""
    key = (id(family), label)
    child = _COUNTERS.get(key)
    if child is None:
        child = _COUNTERS[key] = family.labels(label)
    return child


def _recheck_only(run: Run, snap: engine.Snapshot, out: engine.Outcome, data: str) -> bool:
    """Whether a run changed nothing but due times: no step entered, ended or given another state, no
    message consumed or sent, no task, the data and state as read, no journaled send in between."""
    auto = run.claimed.automation
    if (out.state != auto.state or out.created or out.messages or out.sent or out.tasks or run.threaded
            or run.version != auto.version or data != auto.data):
        return False
    before = {s.id: s for s in snap.steps}
    return all(s.id in before and replace(s, wake_at=before[s.id].wake_at) == before[s.id] for s in out.updated)


class RecheckBatch:
    """Rechecks of the runs that end together go to the store in one ``recheck_automations`` call
    (one statement): the first one starts a writer task, the others join its next batch."""

    def __init__(self, store: Store, holder: str) -> None:
        self.store = store
        self.holder = holder
        self._waiting: list[tuple[Recheck, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, recheck: Recheck) -> bool:
        """Whether the recheck was applied (False: its fence did not hold)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((recheck, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write(), name="automation-rechecks")
        return await done

    async def _write(self) -> None:
        await asyncio.sleep(0)  # the runs ending in this turn of the loop join the first batch
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                applied = set(await self.store.recheck_automations(self.holder, [r for r, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - each run handles it (store trouble is retried)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for r, done in batch:
                if not done.done():
                    done.set_result(r.automation_id in applied)


def _tracking(clock: Callable[[], float], run: Run) -> Callable[[], float]:
    """The engine's clock, which also keeps ``run.current_step`` at the step the engine is running
    (the engine reads the clock as a step starts): what a step budget overrun blames."""

    def now() -> float:
        outbox = CURRENT_RUN.get()
        if outbox is not None:
            run.current_step[:] = [outbox.step_id, outbox.node]
        return clock()

    return now


def _time_out(future: asyncio.Future[Any]) -> None:
    """The step budget ran out before the engine's outcome came back."""
    if not future.done():
        future.set_exception(TimeoutError())


def _abandon(run: Run) -> None:
    """Past the step budget (or stopping): the run's async steps are cancelled and it starts no more; a
    sync step's thread cannot be stopped and is abandoned (nothing it did commits)."""
    run.abandoned = True
    for pending in list(run.pending):
        pending.cancel()


def _on_loop(loop: asyncio.AbstractEventLoop, run: Run) -> engine.Awaiter:
    """The engine's awaiter for one run: an ``async def`` step callable runs on the daemon's loop (in
    the engine thread's context: the step's action context and outbox), the engine thread waiting for
    it; the runner cancels it at the step budget."""

    def wait(awaitable: Awaitable[Any]) -> Any:
        coro = engine.awaitable_call(awaitable)
        if run.abandoned:  # past the budget already: start nothing more
            coro.close()
            raise StepCancelled("the run overran its step budget")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        run.pending.add(future)
        if run.abandoned:  # the budget ran out between the check above and the add: the loop missed it
            future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise StepCancelled("the step was cancelled at its step budget") from None
        finally:
            run.pending.discard(future)

    return wait


class StepCancelled(Exception):  # noqa: N818 - what the abandoned engine thread sees; nothing of it commits
    """An async step cancelled at the step budget (the run's outcome is discarded)."""


def _timed(call: Callable[[], engine.Outcome]) -> Callable[[], engine.Outcome]:
    def tracked() -> engine.Outcome:
        started = time.monotonic()
        try:
            return call()
        finally:
            metrics.AUTOMATION_RUN_SECONDS.observe(time.monotonic() - started)

    return tracked
