"""Ports of docassemble's check-in demos ("Processing interim user input").

A demo page marks its form with ``data-mailgate-checkin="ACTION"``; ``web/mailgate.js`` sends that
action the form's current values (``action_argument(name)``, plus ``_changed``, the field whose
change triggered it) on connect, on every change and every ``checkin_interval``. As in docassemble
the check-in's changes to the answers are saved, and its ``background_response(...)`` becomes
commands for the page. ``start`` is the question's Continue button (the final values as arguments)
and ``screen`` returns the text the docassemble page then shows, without saving anything.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailgate import Interview, action_argument, background_response, json_response, response
from mailgate.author.templates import Template

Answers = dict[str, Any]


# docassemble's `template` blocks with a `target` (both demos' template reads "_What?_ You like ..."). Values
# are escaped by the template, so a user's draft is shown as text, never as markup.
FOOD_FEEDBACK = Template(content="_What?_ You like ${ food }?")
FOOD_MESSAGE = Template(content="_What?_ You like ${ the_food }?")


@dataclass(frozen=True)
class Filled:
    """A template filled from given values instead of the answers (a draft that is not saved)."""

    template: Template
    values: Mapping[str, Any]

    def render_html(self) -> str:
        return self.template.render_html(self.values)


def _number(value: Any) -> int | float | None:
    """A form value as a number (int when whole), or None if it is empty or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() else number


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _comma_and_list(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


# -- check-in: a counter and the draft values of favorite_food ---------------------------------------
check_in = Interview("check-in")


@check_in.action("track_drafts", browser=True)
def _ci_track(answers: Answers) -> None:
    answers["counter"] = answers.get("counter", 0) + 1
    drafts = answers.setdefault("drafts", set())
    food = _text(action_argument("favorite_food"))
    if food:
        drafts.add(food)
    background_response()


@check_in.action("start", browser=True)
def _ci_start(answers: Answers) -> None:
    answers["favorite_food"] = _text(action_argument("favorite_food"))


@check_in.action("screen", browser=True)
def _ci_screen(answers: Answers) -> None:
    drafts = sorted(answers.get("drafts", set()))
    lines = []
    if "favorite_food" in answers:
        lines.append(f"Your favorite food is {answers['favorite_food']}.")
    lines.append(f"You checked in {answers.get('counter', 0)} times.")
    lines.append(f"Your draft choices were {_comma_and_list(drafts)}." if drafts else "There are no draft choices yet.")
    response("\n".join(lines), null=True)


def _favorite_food(interview: Interview) -> None:
    """The Continue button and final screen shared by the target-* demos."""

    @interview.action("start", browser=True)
    def _start(answers: Answers) -> None:
        answers["favorite_food"] = _text(action_argument("favorite_food"))

    @interview.action("screen", browser=True)
    def _screen(answers: Answers) -> None:
        if "favorite_food" not in answers:
            response("What is your favorite food?", null=True)
        response(f"Your favorite food is {answers['favorite_food']}.", null=True)


# -- target-template: a template with a target renders Markdown into [TARGET feedback] ---------------
target_template = Interview("target-template")
_favorite_food(target_template)


@target_template.action("question_food", browser=True)
def _tt_check(answers: Answers) -> None:
    food = _text(action_argument("favorite_food"))
    content = Filled(FOOD_FEEDBACK, {"food": food.upper()}) if food else ""
    background_response(target="feedback", content=content)


# -- target-code-template: code first, then the template -------------------------------------------
target_code_template = Interview("target-code-template")
_favorite_food(target_code_template)


@target_code_template.action("question_food", browser=True)
def _tct_check(answers: Answers) -> None:
    food = _text(action_argument("favorite_food"))
    answers["the_food"] = food.upper() if food else "nothing"
    background_response(target="feedback", content=FOOD_MESSAGE)  # rendered from the answers


# -- target-code: raw HTML into the target -----------------------------------------------------------
target_code = Interview("target-code")
_favorite_food(target_code)


@target_code.action("question_food", browser=True)
def _tc_check(answers: Answers) -> None:
    food = _text(action_argument("favorite_food"))
    content = f"What? You like {html.escape(food.upper())}?" if food else ""
    background_response(target="feedback", content=content)


# -- target-code-multiple: a list of targets ---------------------------------------------------------
target_code_multiple = Interview("target-code-multiple")
_favorite_food(target_code_multiple)


@target_code_multiple.action("question_food", browser=True)
def _tcm_check(answers: Answers) -> None:
    food = _text(action_argument("favorite_food"))
    one = " (Please don't be gross.)" if food else ""
    two = f"What? You like {html.escape(food.upper())}?" if food else ""
    background_response([{"target": "feedback_one", "content": one}, {"target": "feedback_two", "content": two}])


# -- ajax-calc: C = A * B filled in as the user types ------------------------------------------------
def _calculator(interview: Interview) -> None:
    """The Continue button and final screen shared by ajax-calc and ajax-calc-javascript."""

    @interview.action("start", browser=True)
    def _start(answers: Answers) -> None:
        for name in ("A", "B", "C"):
            answers[name] = _number(action_argument(name))

    @interview.action("screen", browser=True)
    def _screen(answers: Answers) -> None:
        if "C" not in answers:
            response("Let's calculate some stuff.", null=True)
        a, b, c = answers["A"], answers["B"], answers["C"]
        if None not in (a, b, c) and c == a * b:
            response(f"The correct answer is {c}.", null=True)
        response("That answer is not right!", null=True)


def _product() -> int | float | None:
    a, b = _number(action_argument("A")), _number(action_argument("B"))
    if a is None or b is None:
        return None
    return _number(a * b)


ajax_calc = Interview("ajax-calc")
_calculator(ajax_calc)


@ajax_calc.action("add_numbers", browser=True)
def _ac_check(answers: Answers) -> None:
    product = _product()
    if product is not None:
        background_response({"C": product}, "fields")
    background_response()


# -- ajax-flash: criticise the favorite food once per new value --------------------------------------
ajax_flash = Interview("ajax-flash")


@ajax_flash.action("criticize_food", browser=True)
def _af_check(answers: Answers) -> None:
    food = _text(action_argument("favorite_food"))
    if food and food != answers.get("favorite_food_interim", ""):
        answers["favorite_food_interim"] = food
        background_response("What? You like " + food.upper() + "?", "flash")
    background_response()


@ajax_flash.action("start", browser=True)
def _af_start(answers: Answers) -> None:
    answers["favorite_food"] = _text(action_argument("favorite_food"))
    answers["favorite_drink"] = _text(action_argument("favorite_drink"))


@ajax_flash.action("screen", browser=True)
def _af_screen(answers: Answers) -> None:
    if "favorite_food" not in answers:
        response("What is your favorite food?", null=True)
    response(f"Your favorite food is {answers['favorite_food']} and your favorite drink is {answers['favorite_drink']}.",
             null=True)


# -- ajax-calc-javascript: the hint comes back as JavaScript -----------------------------------------
ajax_calc_javascript = Interview("ajax-calc-javascript")
_calculator(ajax_calc_javascript)


@ajax_calc_javascript.action("add_numbers", browser=True)
def _acj_check(answers: Answers) -> None:
    product = _product()
    if product is not None:
        background_response(f"Mailgate.flash({json.dumps(f'Hint: C should be {product}')});", "javascript")
    background_response()


# -- ajax-refresh: a changed number_of_things reloads the page with that many radio choices ----------
ajax_refresh = Interview("ajax-refresh")
THINGS_DEFAULT, THINGS_MAX = 3, 10


@ajax_refresh.action("set_number_of_things", browser=True)
def _ar_check(answers: Answers) -> None:
    current = answers.setdefault("number_of_things", THINGS_DEFAULT)
    wanted = _number(action_argument("number_of_things"))
    if isinstance(wanted, int):
        # clamp before comparing: a page that keeps sending 20 must not refresh forever
        wanted = min(THINGS_MAX, max(1, wanted))
        if wanted != current:
            answers["number_of_things"] = wanted
            background_response("refresh")  # only when it changed, or the page reloads in a loop
    background_response()


@ajax_refresh.action("state", browser=True)
def _ar_state(answers: Answers) -> None:
    count = answers.get("number_of_things", THINGS_DEFAULT)
    json_response({"number_of_things": count, "choices": list(range(1, count + 1)), "thing": answers.get("thing")})


@ajax_refresh.action("start", browser=True)
def _ar_start(answers: Answers) -> None:
    answers["thing"] = _number(action_argument("thing"))


@ajax_refresh.action("screen", browser=True)
def _ar_screen(answers: Answers) -> None:
    if answers.get("thing") is None:
        response("Tell me which thing you want.", null=True)
    response(f"You picked thing {answers['thing']}.", null=True)
