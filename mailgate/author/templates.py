"""Templates: a subject and Markdown content with placeholders filled from the session's answers.

docassemble's ``template`` block as a Python object::

    reminder = Template(
        subject="Hey, it's been 20 days, ${ first_name }.",
        content='''
            Don't forget about **that thing** you need to do!

            Your reference is {case.number}.
        ''',
    )

Placeholders are ``{path}`` or ``${ path }``. A path is a name from the answers followed by
``.attribute``, ``[0]`` or ``['key']`` steps: a step into a dict takes the key, otherwise the
public attribute (names starting with ``_`` are refused). Nothing is evaluated: no calls, no
operators, no expressions. A missing name raises :class:`TemplateError`; ``None`` renders as
nothing. ``{{`` and ``}}`` stand for literal braces. Other braces are left alone.

The content is dedented, so it can be written indented in a triple-quoted string. Its text part is
the Markdown with the values as given; its HTML part is the Markdown rendered by markdown-it-py
(CommonMark and tables) with every value escaped first: a value is always text, never markup,
while the template's own Markdown and HTML are kept.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt

from mailgate.core.context import CURRENT
from mailgate.errors import MailgateError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_STEP = rf"(?:\.{_NAME}|\[\s*(?:-?\d+|'[^'\]]*'|\"[^\"\]]*\")\s*\])"
_PATH = rf"{_NAME}{_STEP}*"
_PLACEHOLDER = re.compile(rf"\{{\{{|\}}\}}|\$\{{\s*({_PATH})\s*\}}|\{{\s*({_PATH})\s*\}}")
_STEPS = re.compile(rf"\.({_NAME})|\[\s*(-?\d+|'[^'\]]*'|\"[^\"\]]*\")\s*\]")
_MD_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")  # CommonMark: any ASCII punctuation can be backslash-escaped

_markdown = MarkdownIt("commonmark").enable("table")


class TemplateError(MailgateError):
    """A template names something the answers do not have, or a step that is not allowed."""


def _lookup(answers: Mapping[str, Any], path: str) -> Any:
    first = re.match(_NAME, path)
    assert first is not None  # the placeholder pattern guarantees it
    name = first.group(0)
    if name not in answers:
        raise TemplateError(f"the template uses {{{path}}}, but {name!r} is not in the answers")
    value = answers[name]
    for attr, index in _STEPS.findall(path[first.end():]):
        try:
            if attr:
                if attr.startswith("_"):
                    raise TemplateError(f"the template uses {{{path}}}: names starting with '_' are not allowed")
                value = value[attr] if isinstance(value, Mapping) and attr in value else getattr(value, attr)
            else:
                value = value[int(index)] if index.lstrip("-").isdigit() else value[index[1:-1]]
        except (LookupError, AttributeError, TypeError) as exc:
            raise TemplateError(f"the template uses {{{path}}}, which the answers do not have ({type(exc).__name__}: {exc})") from None
    return value


def substitute(text: str, answers: Mapping[str, Any], *, markdown_escape: bool = False) -> str:
    """Fill the placeholders of ``text`` from ``answers``; escape the values for Markdown if asked."""

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        value = _lookup(answers, match.group(1) or match.group(2))
        out = "" if value is None else str(value)
        return _MD_PUNCT.sub(r"\\\1", out) if markdown_escape else out

    return _PLACEHOLDER.sub(fill, text)


@dataclass(frozen=True)
class Template:
    """A subject and Markdown content; renders to (subject, text, HTML) with the session's answers."""

    subject: str = ""
    content: str = ""

    def __post_init__(self) -> None:
        # The author's own line breaks in a subject are layout (docassemble's YAML `subject: |`
        # ends with one); a line break that comes from a value is refused when the mail is built.
        object.__setattr__(self, "subject", " ".join(self.subject.split()))
        object.__setattr__(self, "content", textwrap.dedent(self.content).strip("\n") + "\n")

    def render(self, answers: Mapping[str, Any] | None = None) -> tuple[str, str, str]:
        """``(subject, text, html)``; without ``answers``, those of the running action."""
        values = _answers(answers)
        return self.render_subject(values), self.render_text(values), self.render_html(values)

    def render_subject(self, answers: Mapping[str, Any] | None = None) -> str:
        return substitute(self.subject, _answers(answers))

    def render_text(self, answers: Mapping[str, Any] | None = None) -> str:
        """The text part: the Markdown source with the values as given."""
        return substitute(self.content, _answers(answers))

    def render_html(self, answers: Mapping[str, Any] | None = None) -> str:
        """The HTML part (a fragment); check-in ``target`` content calls this without arguments."""
        return str(_markdown.render(substitute(self.content, _answers(answers), markdown_escape=True)))


def _answers(answers: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if answers is not None:
        return answers
    ctx = CURRENT.get()
    return ctx.answers if ctx is not None else {}
