"""An interview with automation classes, for the automations CLI, HTTP API and WebSocket tests."""

from __future__ import annotations

from typing import Any

from mailgate import Interview
from mailgate.automations import flow, this

interview = Interview("automated")


@interview.action("noop")
def noop(answers: dict[str, Any]) -> None:
    """Nothing: the tests bind automations to sessions of this interview."""


class Approval:
    fields = [{"name": "approved", "type": "boolean"}, {"name": "note", "type": "text"}]

    def clean(self, values: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(values.get("approved"), bool):
            raise flow.ValidationError({"approved": "true or false expected"})
        return {"approved": values["approved"], "note": str(values.get("note", ""))}


class Review(flow.Automation):
    """A caseworker approves; one running review per e-mail address."""

    unique = ("email",)
    publish_receivers = True

    approve = flow.Form(Approval, description="Approve the case").Permission("caseworker")
    record = flow.Execute(this.note_outcome)
    end = flow.End()

    def note_outcome(self, task: Any) -> None:
        self.data["outcome"] = "approved" if self.data["approve"]["approved"] else "rejected"

    def receive_ping(self, token: str | None, data: Any) -> Any:
        self.data["pings"] = self.data.get("pings", 0) + 1
        return {"pings": self.data["pings"], "token": token}


class Broken(flow.Automation):
    class Meta:
        name = "broken"

    fail = flow.Execute(this.explode)
    done = flow.End()

    def explode(self, task: Any) -> None:
        if not self.data.get("fixed"):
            raise RuntimeError("the parts are missing")

    def receive_fix(self, token: str | None, data: Any) -> None:
        self.data["fixed"] = True
