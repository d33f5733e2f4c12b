"""docassemble's text helpers for templates and actions, on Babel's locale data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from babel.core import Locale, UnknownLocaleError
from babel.lists import format_list

from mailgate.errors import MailgateError


def _items(args: tuple[Any, ...]) -> list[str]:
    """docassemble accepts ``comma_and_list(a, b, c)`` and ``comma_and_list([a, b, c])`` alike."""
    if len(args) == 1 and isinstance(args[0], Iterable) and not isinstance(args[0], (str, bytes)):
        args = tuple(args[0])
    return [str(item) for item in args]


def comma_and_list(*args: Any, comma_string: str = ", ", and_string: str = "and", before_and: str = " ",
                   after_and: str = " ", oxford: bool = True, language: str | None = None) -> str:
    """``"a, b, and c"``: the items joined as a sentence lists them (docassemble's ``comma_and_list``).

    With docassemble's punctuation arguments left alone, the list is formatted by Babel in
    ``language`` (English by default: ``comma_and_list(["a", "b"], language="fr")`` is ``"a et b"``);
    any of them given forces that punctuation, as in docassemble.
    """
    items = _items(args)
    custom = (comma_string, and_string, before_and, after_and, oxford) != (", ", "and", " ", " ", True)
    if not custom:
        try:
            locale = Locale.parse(language or "en")
        except (ValueError, UnknownLocaleError) as exc:
            raise MailgateError(f"comma_and_list(language={language!r}): not a locale Babel knows "
                                "(use a code such as 'en', 'fr' or 'de_CH')") from exc
        return format_list(items, locale=locale) if items else ""
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]}{before_and}{and_string}{after_and}{items[1]}"
    head = comma_string.join(items[:-1])
    joiner = comma_string.rstrip() + before_and if oxford else before_and
    return f"{head}{joiner}{and_string}{after_and}{items[-1]}"
