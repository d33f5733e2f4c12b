"""The reply-or-remind automation (AUTOMATIONS.md §5.1) on a demo page: ``mailgate demo`` serves it at
``/demo/reply-or-remind``.

``start`` gives the session an address (``interview_email(key="docs")``) and starts the automation
bound to the session: it waits up to five minutes for a reply; mail sent to the address is the
message ``email`` to the automation, which then moves on at once (thank), else it reminds, waits
again, and hands the case to a caseworker (a form for privilege ``caseworker``). Every step notes
itself in the session's answers (``progress``); the page shows them as the ``automation`` events
arrive, without polling.
"""

from __future__ import annotations

import datetime
from typing import Any

from mailgate import Interview, interview_email, json_response
from mailgate.automations import flow, this

Answers = dict[str, Any]
WAIT = datetime.timedelta(minutes=5)

interview = Interview("reply-or-remind")


class CaseForm:
    fields = [{"name": "closed", "type": "boolean", "label": "Close the case"}]

    def clean(self, values: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(values.get("closed"), bool):
            raise flow.ValidationError({"closed": "true or false expected"})
        return {"closed": values["closed"]}


class ReplyOrRemind(flow.Automation):
    """Wait for a reply to the address; thank at once, or remind, and then give the case to a caseworker."""

    class Meta:
        name = "demo.ReplyOrRemind"
        verbose_name = "Reply or remind"

    ask = flow.Execute(this.note, "asked for the documents")
    wait = flow.Execute().AsSoonAs(this.replied).SkipAfter(WAIT)
    branch = flow.If(this.replied).Then(this.thank).Else(this.remind)
    thank = flow.Execute(this.note, "reply received: thanked").Next(this.end)
    remind = flow.Execute(this.note, "no reply: reminded")
    wait_again = flow.Execute().AsSoonAs(this.replied).SkipAfter(WAIT)
    branch_again = flow.If(this.replied).Then(this.thank).Else(this.give_up)
    give_up = flow.Form(CaseForm, description="No reply after a reminder: a caseworker takes over").Permission("caseworker")
    end = flow.End()

    def note(self, task: Any, text: str) -> None:
        if task.answers is not None:
            task.answers.setdefault("progress", []).append(text)

    def replied(self, task: Any) -> bool:
        return bool(self.data.get("replied"))

    def receive_email(self, token: str | None, data: Any) -> None:
        self.data["replied"] = True


@interview.action("start", browser=True)
def start(answers: Answers) -> None:
    """The address to write to; the automation starts with the first visit (once per session)."""
    if "automation" not in answers:
        answers["address"] = interview_email(key="docs")
        answers["progress"] = []
        automation = ReplyOrRemind(address=answers["address"])
        answers["automation"] = automation.id
    json_response({"address": answers["address"], "automation": answers["automation"]})


@interview.action("progress", browser=True)
def progress(answers: Answers) -> None:
    json_response({"progress": answers.get("progress", []), "automation": answers.get("automation")})
