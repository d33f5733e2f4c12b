"""docassemble's comma_and_list, from templates and from code."""

from __future__ import annotations

import pytest

from mailgate import Template, comma_and_list
from mailgate.errors import MailgateError


@pytest.mark.parametrize(("args", "expected"), [
    ((), ""),
    ((["apple"],), "apple"),
    ((["apple", "pear"],), "apple and pear"),
    ((["apple", "pear", "plum"],), "apple, pear, and plum"),
    (("apple", "pear", "plum"), "apple, pear, and plum"),  # items as arguments, as docassemble allows
    (([1, 2],), "1 and 2"),
])
def test_english_lists_as_docassemble_writes_them(args: tuple[object, ...], expected: str) -> None:
    assert comma_and_list(*args) == expected


def test_punctuation_arguments_as_in_docassemble() -> None:
    items = ["a", "b", "c"]
    assert comma_and_list(items, oxford=False) == "a, b and c"
    assert comma_and_list(items, and_string="or") == "a, b, or c"
    assert comma_and_list(items, comma_string="; ") == "a; b; and c"
    assert comma_and_list(["a", "b"], and_string="&", before_and=" ", after_and=" ") == "a & b"


def test_language_from_babel() -> None:
    assert comma_and_list(["pomme", "poire", "prune"], language="fr") == "pomme, poire et prune"
    with pytest.raises(MailgateError, match="not a locale Babel knows"):
        comma_and_list(["a"], language="xx_not_a_locale")


def test_the_seed_check_in_template_renders() -> None:
    # shared/seeds/000: "Your draft choices were ${ comma_and_list(drafts) }."
    template = Template(subject="Drafts", content="Your draft choices were\n${ comma_and_list(drafts) }.")
    assert template.render_text({"drafts": ["pizza", "soup", "pie"]}).strip() == \
        "Your draft choices were\npizza, soup, and pie."
