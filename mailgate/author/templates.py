"""Templates: a subject and content written in Mako, then Markdown, as docassemble's ``template`` block.

docassemble's ``template`` block as a Python object::

    reminder = Template(
        "reminder",
        subject="Hey, it's been 20 days, ${ first_name }.",
        content='''
            Don't forget about **that thing** you need to do
            from ${ format_date(filing_date) }.

            % if len(cases) > 1:
            You have ${ len(cases) } cases.
            % endif
        ''',
    )

Both parts are Mako (https://docs.makotemplates.org/): ``${ expression }`` (names, calls,
arithmetic, ``| filters``), ``% if`` / ``% for`` / ``% endif`` lines, ``<%doc>``, ``## comments``
(so a Markdown level-2 heading cannot start with ``##``; write ``<h2>``, as in docassemble). The
names a template sees are the session's answers and, under them, the interview functions that
``mailgate`` exports (``format_date``, ``date_difference``, ``user_info``, ``interview_email``, ...),
as in docassemble where a template sees the interview's variables and ``docassemble.base.util``.
docassemble's ``defined('x')`` and ``showifdef('x', alternative='')`` ask for an answer that may be
missing (``"case['number']"`` and ``"client.name"`` too). A name that is neither raises
:class:`TemplateError` where it is used (not in a branch that does not run: docassemble too asks
only for what a template evaluates); ``None`` renders as nothing.

The content is dedented, so it can be written indented in a triple-quoted string. Its text part is
the rendered Markdown with the values as given; its HTML part is that Markdown rendered by
markdown-it-py (CommonMark and tables) with every value escaped first: a value is text, never
markup (inside an HTML attribute too), while the template's own Markdown and HTML are kept. The
escaping runs after the author's filters (``${ q | u }`` URL-encodes the value, then escapes it),
and Mako's ``h`` adds nothing in the HTML part. Mako's ``n`` filter turns the escaping off for one
expression: ``${ snippet | n }`` inserts ``snippet`` as Markdown/HTML (``None`` still as nothing).
Python's builtins (``len``, ``range``, ...) and Mako's ``loop`` are there, as in Mako.

Errors (a Mako syntax error when the template is made; a missing name or a failing expression when
it renders) raise :class:`TemplateError` naming the template, the part and the line.
"""

from __future__ import annotations

import builtins
import io
import re
import string
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mako import exceptions as mako_exceptions
from mako import parsetree
from mako.lexer import Lexer
from mako.runtime import UNDEFINED, Context
from mako.template import Template as MakoTemplate
from markdown_it import MarkdownIt

from mailgate.core.context import CURRENT
from mailgate.errors import MailgateError

# The ASCII punctuation Markdown or HTML could read as markup (``/ , ; @ % $ ^`` never are, and stay
# as they are; ``:`` is escaped too, or a value inside ``<...>`` would be an autolink whose text
# CommonMark takes literally).
_MD_PUNCT = re.compile("[" + re.escape("".join(sorted(set(string.punctuation) - set("/,;@%$^")))) + "]")
_CONTROL_LINE = re.compile(r"^\s*%(?!%)", re.MULTILINE)
_RESERVED = frozenset({"context", "loop", "UNDEFINED", "capture", "caller", "local", "self", "parent", "next"})

_markdown = MarkdownIt("commonmark").enable("table")


class TemplateError(MailgateError):
    """A template does not compile, names something that is not defined, or an expression failed."""


def text_value(value: Any) -> str:
    """Mako's default filter for the text part and the subject: the value as text, ``None`` as nothing."""
    return "" if value is None else str(value)


def markdown_value(value: Any) -> str:
    """The last filter of every expression in the HTML part (but ``| n`` ones): the value as text that
    Markdown and HTML show as it is.

    Punctuation becomes a numeric character reference, not a backslash escape: CommonMark reads a
    reference as text, never as markup, and so does HTML, inside an attribute too, where a backslash
    would stay (``<a href="${ url }">``) and a quote would end the attribute.
    """
    return _MD_PUNCT.sub(lambda m: f"&#{ord(m.group())};", text_value(value))


_IMPORTS = ["from mailgate.author.templates import text_value as _mailgate_text, markdown_value as _mailgate_md"]
_HTML_ESCAPES = frozenset({"h", "x", "entity"})  # in the HTML part every value is escaped anyway


_REFERENCE = re.compile(r"&#(\d+);")
_CODE_TOKENS = ("code_inline", "code_block", "fence")


def _unescape_code(text: str) -> str:
    """Code shows its text as it is, references too: undo :func:`markdown_value` there."""
    return _REFERENCE.sub(lambda m: chr(int(m.group(1))) if _MD_PUNCT.fullmatch(chr(int(m.group(1)))) else m.group(),
                          text)


def _markdown_html(source: str) -> str:
    """The Markdown as HTML, with the values inside code spans and code blocks shown as they are."""
    env: dict[str, Any] = {}
    tokens = _markdown.parse(source, env)
    for token in tokens:
        for one in [token, *(token.children or ())]:
            if one.type in _CODE_TOKENS:
                one.content = _unescape_code(one.content)
    return str(_markdown.renderer.render(tokens, _markdown.options, env))


def _split_filters(escapes: str) -> list[str]:
    """``"u, f(a, b)"`` as ``["u", "f(a, b)"]``: commas inside brackets belong to a filter's arguments."""
    found, depth, start = [], 0, 0
    for i, char in enumerate(escapes):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            found.append(escapes[start:i].strip())
            start = i + 1
    found.append(escapes[start:].strip())
    return [f for f in found if f]


def _filters(escapes: str, html: bool) -> str:
    """An expression's filters as mailgate runs them: the author's after the value is made text, then,
    in the HTML part, the escaping last (Mako would run a default filter first: ``${ q | u }`` would
    URL-encode the escaped value). ``n`` turns the escaping off, not the conversion to text."""
    named = _split_filters(escapes)
    if "n" in named:
        return ", ".join(["n", "_mailgate_text", *(f for f in named if f != "n")])
    if not html:
        return ", ".join(named)
    return ", ".join([*(f for f in named if f not in _HTML_ESCAPES), "_mailgate_md"])


class _TextLexer(Lexer):
    html = False

    def append_node(self, nodecls: type, *args: Any, **kwargs: Any) -> None:
        if nodecls is parsetree.Expression:
            text, escapes = args
            args = (text, _filters(escapes, self.html))
        super().append_node(nodecls, *args, **kwargs)


class _HtmlLexer(_TextLexer):
    html = True


def _compile(source: str, label: str, part: str, html: bool) -> MakoTemplate:
    try:
        return MakoTemplate(source, imports=_IMPORTS, default_filters=["_mailgate_text"],
                            lexer_cls=_HtmlLexer if html else _TextLexer, uri=f"{label}:{part}")
    except (mako_exceptions.SyntaxException, mako_exceptions.CompileException) as exc:
        lineno = getattr(exc, "lineno", None)
        message = str(exc).split(" at line:")[0]
        raise TemplateError(f"template {label}, {part} line {lineno}: {message}") from None


def _source_line(source: str, name: str) -> int | None:
    """The first line that mentions ``name`` (Mako reads every name before the first line runs)."""
    word = re.compile(rf"(?<![\w.]){re.escape(name)}\b")
    for number, line in enumerate(source.splitlines(), 1):
        if word.search(line) and ("${" in line or _CONTROL_LINE.match(line) or "<%" in line):
            return number
    return None


class _Missing:
    """A name the answers do not have: any use of it raises NameError where it is used, so a name in
    a branch that does not run is no error (docassemble asks only for what a template evaluates)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise NameError(f"'{self._name}' is not defined")

    def __getattr__(self, _: str) -> Any:
        self._fail()

    __str__ = __repr__ = __bool__ = __len__ = __iter__ = __call__ = __getitem__ = __contains__ = _fail
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _fail
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __neg__ = __int__ = __float__ = __format__ = _fail


class _Context(Context):
    missing: list[str]

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._data:
            return self._data[key]
        if key in builtins.__dict__:  # as Mako's own Context: len, range, str, sorted, ...
            return builtins.__dict__[key]
        if default is not UNDEFINED:
            return default
        found = getattr(self, "missing", None)
        if found is not None:
            found.append(key)
        return _Missing(key)

    def _copy(self) -> Context:
        copy = super()._copy()
        copy.__class__ = _Context  # Mako's copy (a <%def>'s context) is a plain Context
        copy.missing = self.missing
        return copy


def _render(template: MakoTemplate, source: str, label: str, part: str, names: Mapping[str, Any]) -> str:
    reserved = sorted(_RESERVED.intersection(names))
    if reserved:
        raise TemplateError(f"template {label}: {', '.join(map(repr, reserved))} cannot be used as a name "
                            "in a template (Mako reserves it); rename the answer")
    out = io.StringIO()
    context = _Context(out, **names)
    context.missing = []
    try:
        template.render_context(context)
    except Exception as exc:
        lineno = None
        for record in mako_exceptions.RichTraceback().records:
            if record[4] == template.uri:
                lineno = record[5]
        name = None
        if isinstance(exc, NameError) and str(exc).count("'") >= 2:
            name = str(exc).split("'")[1]
        elif lineno:  # a missing name handed to a function, which failed on it
            line = source.splitlines()[lineno - 1] if lineno <= len(source.splitlines()) else ""
            name = next((m for m in context.missing if re.search(rf"(?<![\w.]){re.escape(m)}\b", line)), None)
        if name is not None:
            lineno = lineno or _source_line(source, name)
            raise TemplateError(f"template {label}, {part} line {lineno}: {name!r} is neither in the answers "
                                "nor an interview function") from None
        if isinstance(exc, MailgateError):  # a function's own clear message (format_date, defined, ...)
            raise TemplateError(f"template {label}, {part} line {lineno}: {exc}") from None
        raise TemplateError(f"template {label}, {part} line {lineno}: {type(exc).__name__}: {exc}") from exc
    return out.getvalue()


def _caller() -> str:
    """``file:line`` of the code that made the template, its name in errors when it has none."""
    frame = sys._getframe(3)  # _caller <- __post_init__ <- the dataclass __init__ <- the author's code
    return f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"


@dataclass(frozen=True)
class Template:
    """A subject and Markdown content, both Mako; renders to (subject, text, HTML) with the answers.

    ``name`` is how errors name the template (default: the file and line that made it).
    """

    subject: str = ""
    content: str = ""
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        subject = textwrap.dedent(self.subject).strip()
        if not _CONTROL_LINE.search(subject):
            # The author's own line breaks in a plain subject are layout (docassemble's YAML
            # `subject: |` ends with one); a line break that comes from a value is refused when
            # the mail is built.
            subject = " ".join(subject.split())
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "content", textwrap.dedent(self.content).strip("\n") + "\n")
        if not self.name:
            object.__setattr__(self, "name", _caller())
        # compile now, so a syntax error shows when the interview is loaded
        _ = self._subject_t, self._text_t, self._html_t

    @cached_property
    def _subject_t(self) -> MakoTemplate:
        return _compile(self.subject, self.name, "subject", html=False)

    @cached_property
    def _text_t(self) -> MakoTemplate:
        return _compile(self.content, self.name, "content", html=False)

    @cached_property
    def _html_t(self) -> MakoTemplate:
        return _compile(self.content, self.name, "content", html=True)

    def render(self, answers: Mapping[str, Any] | None = None) -> tuple[str, str, str]:
        """``(subject, text, html)``; without ``answers``, those of the running action."""
        names = _names(answers)
        return self._subject(names), self._text(names), self._html(names)

    def render_subject(self, answers: Mapping[str, Any] | None = None) -> str:
        return self._subject(_names(answers))

    def render_text(self, answers: Mapping[str, Any] | None = None) -> str:
        """The text part: the rendered Markdown with the values as given."""
        return self._text(_names(answers))

    def render_html(self, answers: Mapping[str, Any] | None = None) -> str:
        """The HTML part (a fragment); check-in ``target`` content calls this without arguments."""
        return self._html(_names(answers))

    def _subject(self, names: Mapping[str, Any]) -> str:
        return _render(self._subject_t, self.subject, self.name, "subject", names).strip()

    def _text(self, names: Mapping[str, Any]) -> str:
        return _render(self._text_t, self.content, self.name, "content", names)

    def _html(self, names: Mapping[str, Any]) -> str:
        return _markdown_html(_render(self._html_t, self.content, self.name, "content", names))


_functions: dict[str, Any] | None = None


def interview_functions() -> dict[str, Any]:
    """The names every template sees under the answers: what ``mailgate`` exports for interviews."""
    global _functions
    if _functions is None:
        # Read, not imported: the package has run before any of its modules (so it is in
        # sys.modules), and an import would be a cycle, since the package exports Template.
        mailgate = sys.modules["mailgate"]
        found: dict[str, Any] = {}
        for name in mailgate.__all__:
            value: Callable[..., Any] | Any = getattr(mailgate, name)
            if name not in _RESERVED:
                found[name] = value
        _functions = found
    return _functions


_LOOKUP_ERRORS = (NameError, AttributeError, KeyError, IndexError, TypeError)


def _lookup(answers: Mapping[str, Any], var: Any, function: str) -> Any:
    """The value ``var`` names in the answers ("x", "case['number']", "client.name"); NameError if none."""
    if not isinstance(var, str):
        raise TemplateError(f"{function}() takes the variable's name as a string, e.g. {function}('x'), "
                            f"not {type(var).__name__}")
    try:
        code = compile(var.strip(), f"<{function}>", "eval")
    except SyntaxError:
        raise TemplateError(f"{function}({var!r}): not a variable name such as 'x' or \"case['number']\"") from None
    return eval(code, {"__builtins__": {}}, dict(answers))  # noqa: S307 - the author's own expression


def _presence(answers: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    """docassemble's ``defined(var)`` and ``showifdef(var, alternative='')`` on these answers."""

    def defined(var: str) -> bool:
        try:
            _lookup(answers, var, "defined")
        except _LOOKUP_ERRORS:
            return False
        return True

    def showifdef(var: str, alternative: Any = "", prior_line_break: bool = False) -> Any:
        try:
            value = _lookup(answers, var, "showifdef")
        except _LOOKUP_ERRORS:
            return alternative
        return f"\n{value}" if prior_line_break else value

    return {"defined": defined, "showifdef": showifdef}


def _names(answers: Mapping[str, Any] | None) -> dict[str, Any]:
    if answers is None:
        ctx = CURRENT.get()
        answers = ctx.answers if ctx is not None else {}
    return {**interview_functions(), **_presence(answers), **answers}
