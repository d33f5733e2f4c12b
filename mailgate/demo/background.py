"""Ports of docassemble's background-action demo interviews.

Each interview has a ``start`` action that takes the demo's inputs as arguments (the question a
docassemble user would answer) and starts the background task, and a ``screen`` action that returns
the text the docassemble demo shows (``response(...)``) without changing anything. The background
and callback actions keep docassemble's names (``bg_task``, ``bg_resp``, ``bg_success``, ...).
"""

from __future__ import annotations

from typing import Any

from mailgate import (
    Interview,
    action_argument,
    background_action,
    background_error_action,
    background_response,
    background_response_action,
    response,
)

Answers = dict[str, Any]


def _waiting_or(answers: Answers, final: str) -> None:
    task = answers.get("the_task")
    if task is None:
        response("How much shall I add to 553?")
    if not task.ready():
        response("Hang tight. I am still adding.")
    response(final)


# -- background_action: "The answer is 555." ---------------------------------------------------------
background_action_demo = Interview("background_action")


@background_action_demo.action("start", browser=True)
def _ba_start(answers: Answers) -> None:
    answers["value_to_add"] = int(action_argument("value_to_add"))
    answers["the_task"] = background_action("bg_task", additional=answers["value_to_add"])


@background_action_demo.action("bg_task")
def _ba_task(answers: Answers) -> None:
    background_response(553 + action_argument("additional"))


@background_action_demo.action("screen", browser=True)
def _ba_screen(answers: Answers) -> None:
    task = answers.get("the_task")
    _waiting_or(answers, f"The answer is {task.get() if task is not None and task.ready() else ''}.")


# -- background_action_with_response_action ----------------------------------------------------------
with_response = Interview("background_action_with_response_action")


@with_response.action("start", browser=True)
def _wr_start(answers: Answers) -> None:
    answers["value_to_add"] = int(action_argument("value_to_add"))
    answers["the_task"] = background_action("bg_task", additional=answers["value_to_add"])


@with_response.action("bg_task")
def _wr_task(answers: Answers) -> None:
    value = 553 + action_argument("additional")
    background_response_action("bg_resp", ans=value)


@with_response.action("bg_resp")
def _wr_resp(answers: Answers) -> None:
    answers["answer"] = action_argument("ans")
    background_response()


@with_response.action("screen", browser=True)
def _wr_screen(answers: Answers) -> None:
    _waiting_or(answers, f"The answer is {answers.get('answer')}.")


# -- background-error-action-demo: 8 / 2 -> 4.0; 4 / 0 -> the error path ----------------------------
error_demo = Interview("background-error-action-demo")


@error_demo.action("start", browser=True)
def _ed_start(answers: Answers) -> None:
    answers["numerator"] = float(action_argument("numerator"))
    answers["denominator"] = float(action_argument("denominator"))
    answers["the_task"] = background_action("bg_task", numerator=answers["numerator"], denominator=answers["denominator"])


@error_demo.action("bg_task")
def _ed_task(answers: Answers) -> None:
    background_error_action("bg_failure", error_source="division")
    answer = action_argument("numerator") / action_argument("denominator")
    background_response_action("bg_success", answer=answer)


@error_demo.action("bg_success")
def _ed_success(answers: Answers) -> None:
    answers["answer"] = action_argument("answer")
    background_response()


@error_demo.action("bg_failure")
def _ed_failure(answers: Answers) -> None:
    answers["error_message"] = action_argument("error_message")
    answers["error_source"] = action_argument("error_source")
    background_response()


@error_demo.action("screen", browser=True)
def _ed_screen(answers: Answers) -> None:
    task = answers.get("the_task")
    if task is not None and task.ready() and task.failed():
        response(f"There was an error in the {answers.get('error_source')}: {answers.get('error_message')}")
    _waiting_or(answers, f"The answer is {answers.get('answer')}.")


# -- background-error-action: the error is handled; the task's value is "handled_error" ---------------
handled = Interview("background-error-action")


@handled.action("start", browser=True)
def _he_start(answers: Answers) -> None:
    answers["the_task"] = background_action("bg_task")


@handled.action("bg_task")
def _he_task(answers: Answers) -> None:
    background_error_action("bg_fail", extra="hello")
    answers["the_number"] = 1 / 0  # ZeroDivisionError on purpose
    background_response("not reached")


@handled.action("bg_fail")
def _he_fail(answers: Answers) -> None:
    answers["error_type"] = action_argument("error_type")
    answers["error_message"] = action_argument("error_message")
    answers["extra"] = action_argument("extra")
    background_response("handled_error")


@handled.action("screen", browser=True)
def _he_screen(answers: Answers) -> None:
    task = answers.get("the_task")
    if task is None or not task.ready():
        response("Waiting for the task.")
    response(
        f"The task failed: {task.failed()}. Its value: {task.get()}. "
        f"The error was a {answers.get('error_type')}: {answers.get('error_message')}."
    )


# -- ui_notification variants ------------------------------------------------------------------------
flash = Interview("background_action_flash")


@flash.action("start", browser=True)
def _fl_start(answers: Answers) -> None:
    answers["value_to_add"] = int(action_argument("value_to_add"))
    answers["the_task"] = background_action("bg_task", "flash", additional=answers["value_to_add"])


@flash.action("bg_task")
def _fl_task(answers: Answers) -> None:
    background_response("The answer is " + str(553 + action_argument("additional")) + ".")


response_flash = Interview("background_response_action_flash")


@response_flash.action("start", browser=True)
def _rf_start(answers: Answers) -> None:
    answers["value_to_add"] = int(action_argument("value_to_add"))
    answers["the_task"] = background_action("bg_task", "flash", additional=answers["value_to_add"])


@response_flash.action("bg_task")
def _rf_task(answers: Answers) -> None:
    background_response_action("bg_resp", ans=553 + action_argument("additional"))


@response_flash.action("bg_resp")
def _rf_resp(answers: Answers) -> None:
    answers["answer"] = action_argument("ans")
    background_response("The answer is " + str(answers["answer"]) + ".")


refresh = Interview("background_action_refresh")


@refresh.action("start", browser=True)
def _re_start(answers: Answers) -> None:
    answers["value_to_add"] = int(action_argument("value_to_add"))
    answers["the_task"] = background_action("bg_task", "refresh", additional=answers["value_to_add"])


@refresh.action("bg_task")
def _re_task(answers: Answers) -> None:
    background_response_action("bg_resp", ans=553 + action_argument("additional"))


@refresh.action("bg_resp")
def _re_resp(answers: Answers) -> None:
    answers["answer"] = action_argument("ans")
    background_response()


@refresh.action("screen", browser=True)
def _re_screen(answers: Answers) -> None:
    if "answer" in answers:
        response(f"The answer is {answers['answer']}.")
    response("Waiting for the answer.")


javascript = Interview("background_action_javascript")


@javascript.action("start", browser=True)
def _js_start(answers: Answers) -> None:
    answers["value_to_add"] = int(action_argument("value_to_add"))
    answers["the_task"] = background_action("bg_task", "javascript", additional=answers["value_to_add"])


@javascript.action("bg_task")
def _js_task(answers: Answers) -> None:
    background_response('alert("The answer is ' + str(553 + action_argument("additional")) + '.");')


fields = Interview("background_action_fields")


@fields.action("start", browser=True)
def _fi_start(answers: Answers) -> None:
    answers["value_to_add"] = int(action_argument("value_to_add"))
    answers["the_task"] = background_action("bg_task", "fields", additional=answers["value_to_add"])


@fields.action("bg_task")
def _fi_task(answers: Answers) -> None:
    additional = action_argument("additional")
    background_response({"the_sum": 553 + additional, "the_product": 553 * additional})
