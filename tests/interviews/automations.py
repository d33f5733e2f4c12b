"""Automations the runner tests run in a real daemon (loaded from this file path, like an operator's)."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Any

from mailgate import (
    Interview,
    action_argument,
    background_action,
    background_response,
    interview_email,
    user_info,
)
from mailgate.automations import flow, this

interview = Interview("autotest")


class CaseForm:
    fields = {"note": "text"}

    def clean(self, values: dict[str, Any]) -> dict[str, Any]:
        if not values.get("note"):
            raise flow.ValidationError({"note": "required"})
        return {"note": str(values["note"])}


class ReplyOrRemind(flow.Automation):
    """AUTOMATIONS.md §5.1: mail, wait up to 3 days for a reply, thank or remind, wait again, then a
    caseworker takes over."""

    class Meta:
        name = "ReplyOrRemind"

    start = flow.Execute(this.ask)
    wait = flow.Execute().AsSoonAs(this.replied).SkipAfter(datetime.timedelta(days=3))
    branch = flow.If(this.replied).Then(this.thank).Else(this.remind)
    thank = flow.Execute(this.send_thanks).Next(this.end)
    remind = flow.Execute(this.send_reminder)
    wait_again = flow.Execute().AsSoonAs(this.replied).SkipAfter(datetime.timedelta(days=3))
    branch_again = flow.If(this.replied).Then(this.thank).Else(this.give_up)
    give_up = flow.Form(CaseForm, description="No reply after two mails").Permission("caseworker")
    end = flow.End()

    def ask(self, task: Any) -> None:
        self.data["reply_to"] = interview_email(key="docs")
        task.send_email(to=self.data["to"], subject="Your documents", body="Please reply.",
                        reply_to=self.data["reply_to"])

    def replied(self, task: Any) -> bool:
        return bool(self.data.get("replied", False))

    def send_thanks(self, task: Any) -> None:
        task.send_email(to=self.data["to"], subject="Thank you", body="Got it.")

    def send_reminder(self, task: Any) -> None:
        task.send_email(to=self.data["to"], subject="Reminder", body="Still waiting.")

    def receive_email(self, token: str | None, data: Any) -> str:
        self.data["replied"] = True
        self.data["reply_token"] = token
        return "thanks"


class Timer(flow.Automation):
    """Waits ``delay`` seconds, then records the step once per run in a file (crash tests count the
    lines: one per execution) and ends."""

    class Meta:
        name = "Timer"

    wait = flow.Execute().AfterWaitingFor(this.delay)
    fire = flow.Execute(this.record)
    end = flow.End()

    def delay(self, task: Any) -> datetime.timedelta:
        return datetime.timedelta(seconds=float(self.data.get("delay", 0)))

    def record(self, task: Any) -> None:
        path = self.data.get("log")
        if path:
            with open(path, "a") as f:
                f.write(f"{task.automation.id} {os.getpid()}\n")
        sleep = float(self.data.get("sleep", 0))
        if sleep:
            time.sleep(sleep)  # a slow step: the crash tests kill the runner meanwhile
        self.data["fired_at"] = task.now


class MailThenSleep(flow.Automation):
    """Sends one mail, then sleeps (a kill -9 lands here), then ends: §5.9."""

    class Meta:
        name = "MailThenSleep"

    mail = flow.Execute(this.send_once).AfterWaitingFor(datetime.timedelta(seconds=1))
    end = flow.End()

    def send_once(self, task: Any) -> None:
        task.send_email(to="someone@example.org", subject="Once", body="Exactly once.")
        self.data["attempt"] = task.attempt
        flag = Path(self.data["flag"])
        flag.write_text(str(task.attempt))
        if task.attempt == 1:
            time.sleep(60)


class Inbox(flow.Automation):
    """Counts messages: each ``ping`` adds to ``pings``; ``stop`` ends it."""

    class Meta:
        name = "Inbox"

    wait = flow.Execute().AsSoonAs(this.stopped)
    end = flow.End()

    def stopped(self, task: Any) -> bool:
        return bool(self.data.get("stop"))

    def receive_ping(self, token: str | None, data: Any) -> Any:
        self.data["pings"] = self.data.get("pings", 0) + 1
        self.data.setdefault("tokens", []).append(token)
        return {"count": self.data["pings"]}

    def receive_stop(self, token: str | None, data: Any) -> None:
        self.data["stop"] = True


class Faulty(flow.Automation):
    """Fails at ``boom`` unless ``data["fixed"]``; after a retry it finishes."""

    class Meta:
        name = "Faulty"

    boom = flow.Execute(this.explode)
    end = flow.End()

    def explode(self, task: Any) -> None:
        if not Path(self.data["fixed_flag"]).exists():
            raise ValueError("not fixed yet")
        self.data["ran"] = True


class Sleeper(flow.Automation):
    """A step that runs past any budget."""

    class Meta:
        name = "Sleeper"

    nap = flow.Execute(this.sleep)
    end = flow.End()

    def sleep(self, task: Any) -> None:
        time.sleep(float(self.data.get("seconds", 30)))


class Single(flow.Automation):
    """``unique = True``: one running instance."""

    class Meta:
        name = "Single"

    unique = True
    wait = flow.Execute().AsSoonAs(this.done)
    end = flow.End()

    def done(self, task: Any) -> bool:
        return bool(self.data.get("done"))

    def receive_finish(self, token: str | None, data: Any) -> None:
        self.data["done"] = True


class Delegate(flow.Automation):
    """Starts a background action and waits for its ``task_done`` message."""

    class Meta:
        name = "Delegate"

    kick = flow.Execute(this.start_task)
    wait = flow.Execute().AsSoonAs(this.task_ended)
    end = flow.End()

    def start_task(self, task: Any) -> None:
        self.data["task"] = background_action("double", value=21)

    def task_ended(self, task: Any) -> bool:
        return "done_token" in self.data

    def receive_task_done(self, token: str | None, data: Any) -> None:
        self.data["done_token"] = token
        self.data["done_task"] = data["task"].id


class Threaded(flow.Automation):
    """A ``threaded=True`` step on the worker pool; its task_done lets the path go on."""

    class Meta:
        name = "Threaded"

    work = flow.Execute(this.slow, threaded=True)
    wait = flow.Execute().AsSoonAs(this.got)
    end = flow.End()

    def slow(self, task: Any) -> dict[str, Any]:
        return {"x": 42, "answers": sorted(task.answers or {})}

    def got(self, task: Any) -> bool:
        return "done" in self.data

    def receive_task_done(self, token: str | None, data: Any) -> None:
        self.data["done"] = token


class TwoSteps(flow.Automation):
    """Two steps with a wait between them (a commit boundary), each logging its executions to a file:
    §5.9's kill -9 right after the first step's commit."""

    class Meta:
        name = "TwoSteps"

    first = flow.Execute(this.log_first)
    second = flow.Execute(this.log_second).AfterWaitingFor(this.gap)
    end = flow.End()

    def gap(self, task: Any) -> datetime.timedelta:
        return datetime.timedelta(seconds=float(self.data.get("gap", 0)))

    def log_first(self, task: Any) -> None:
        with open(self.data["log"], "a") as f:
            f.write(f"first {task.attempt}\n")

    def log_second(self, task: Any) -> None:
        with open(self.data["log"], "a") as f:
            f.write(f"second {task.attempt}\n")


@interview.action("start_threaded")
def start_threaded(answers: dict[str, Any]) -> None:
    answers["automation"] = Threaded().id


class Listener(flow.Automation):
    """Hears broadcast ``news``; the one with ``stop_here`` answers "received" (the broadcast stops)."""

    class Meta:
        name = "Listener"

    wait = flow.Execute().AsSoonAs(this.heard)
    end = flow.End()

    def heard(self, task: Any) -> bool:
        return bool(self.data.get("heard"))

    def receive_news(self, token: str | None, data: Any) -> Any:
        self.data["heard"] = token
        return "received" if self.data.get("stop_here") else self.data["n"]


@interview.action("double")
def double(answers: dict[str, Any]) -> None:
    background_response(action_argument("value") * 2)


@interview.action("start_delegate")
def start_delegate(answers: dict[str, Any]) -> None:
    answers["automation"] = Delegate().id


@interview.action("start_reply")
def start_reply(answers: dict[str, Any]) -> None:
    """``Class(**data)`` inside an action: created in the action's commit, bound to this session."""
    made = ReplyOrRemind(to=action_argument("to"))
    answers["automation"] = made.id
    answers["started_by"] = user_info().id


@interview.action("start_and_fail")
def start_and_fail(answers: dict[str, Any]) -> None:
    ReplyOrRemind(to="nobody@example.org")
    raise RuntimeError("the action fails: its automation must not exist")


@interview.action("touch")
def touch(answers: dict[str, Any]) -> None:
    answers["touched"] = answers.get("touched", 0) + 1
