"""Templates are Mako, then Markdown (docassemble's ``template`` blocks), with values escaped in HTML."""

from __future__ import annotations

import asyncio
import datetime as dt
import html as html_module
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from mailgate.author.templates import Template, TemplateError, interview_functions
from mailgate.core.context import CURRENT, ActionContext, User

ANSWERS: dict[str, Any] = {
    "name": "Ann <script>alert(1)</script> **not bold**",
    "case": {"number": 7, "parties": ["Ann", "Bob"]},
    "user": User(id="u", email="u@example.org", first_name="Una"),
    "nothing": None,
    "n": 3,
    "filing_date": dt.date(2026, 1, 5),
}


def test_mako_lines_and_expressions_are_evaluated() -> None:
    t = Template(
        subject="""
            Reminder for case ${ case["number"] }
        """,
        content="""
            Dear ${ name },

            % if n > 1:
            You have ${ n * 2 } papers, ${ ", ".join(case["parties"]) }; user ${ user.first_name }.
            % else:
            One paper.
            % endif
            % for party in case["parties"]:
            * ${ party.upper() }
            % endfor
            Empty: [${ nothing }], filed ${ format_date(filing_date) }.
        """,
    )
    subject, text, html = t.render(ANSWERS)
    assert subject == "Reminder for case 7"
    assert text == (
        "Dear Ann <script>alert(1)</script> **not bold**,\n\n"
        "You have 6 papers, Ann, Bob; user Una.\n"
        "* ANN\n* BOB\n"
        "Empty: [], filed January 5, 2026.\n"
    )
    assert "% if" not in text and "${" not in text
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "**not bold**" in html and "<strong>not bold</strong>" not in html  # values are text, never markup
    assert "<li>ANN</li>" in html  # the template's own Markdown is rendered
    assert t.render_html(ANSWERS) == html
    assert Template(content="% if n > 5:\nmany\n% else:\nfew\n% endif\n").render_text(ANSWERS) == "few\n"


def test_the_n_filter_turns_escaping_off() -> None:
    t = Template(content="${ snippet } and ${ snippet | n }")
    assert t.render_html({"snippet": "<b>x</b>"}) == "<p>&lt;b&gt;x&lt;/b&gt; and <b>x</b></p>\n"


def test_subject_with_control_lines() -> None:
    t = Template(subject="""
        % if n > 1:
        ${ n } reminders
        % else:
        One reminder
        % endif
    """)
    assert t.render_subject({"n": 2}) == "2 reminders"
    assert t.render_subject({"n": 1}) == "One reminder"


def test_interview_functions_are_visible_and_answers_shadow_them() -> None:
    names = interview_functions()
    for name in ("format_date", "date_difference", "as_datetime", "today", "user_info", "interview_email",
                 "action_argument", "current_datetime"):
        assert callable(names[name]), name
    assert Template(content="${ format_date }").render_text({"format_date": "mine"}) == "mine\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("line one\n\n${ missing }\n", r"template reminder, content line 3: 'missing' is neither in the answers"),
        ("a\n% if n > 1:\n${ n / 0 }\n% endif\n", r"template reminder, content line 3: ZeroDivisionError"),
        ("a\n${ case['nope'] }\n", r"template reminder, content line 2: KeyError"),
        ("a\n% if missing:\nx\n% endif\n", r"template reminder, content line 2: 'missing' is neither"),
        ("${ n }\n\nfrom ${ format_date(missing) }\n", r"template reminder, content line 3: 'missing' is neither"),
        ("${ n }\n${ missing.attribute }\n", r"template reminder, content line 2: 'missing' is neither"),
        ("a\n\n${ format_date(filing_date, format='bogus') }\n",
         r"template reminder, content line 3: format_date\(format='bogus'\): not a format Babel knows"),
    ],
)
def test_render_errors_name_the_template_and_line(content: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        Template("s", content, name="reminder").render(ANSWERS)


def test_a_name_in_a_branch_that_does_not_run_need_not_exist() -> None:
    # as in docassemble, which asks only for the names a template evaluates
    t = Template(content="% if n > 5:\nDog: ${ dog_name }\n% endif\nDone ${ n }.\n")
    assert t.render_text({"n": 1}) == "Done 1.\n"
    with pytest.raises(TemplateError, match="line 2: 'dog_name'"):
        t.render_text({"n": 6})


def test_syntax_errors_name_the_template_and_line_when_made() -> None:
    with pytest.raises(TemplateError, match=r"template bad, content line 2: .*if x"):
        Template(content="fine\n% if x\n% endif\n", name="bad")
    with pytest.raises(TemplateError, match=r"template test_templates.py:\d+, subject line 1"):
        Template(subject="${ 1 + }")


def test_reserved_mako_names_are_refused_clearly() -> None:
    with pytest.raises(TemplateError, match="'loop' cannot be used"):
        Template(content="x").render({"loop": 1})


@pytest.fixture
def action_context() -> Iterator[ActionContext]:
    ctx = ActionContext(kind="foreground", session_id="s1", interview=None, action="a", arguments={}, user=User(),
                        runtime=None, loop=asyncio.new_event_loop())
    token = CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        CURRENT.reset(token)
        ctx.loop.close()


def test_template_uses_the_running_actions_answers(action_context: ActionContext) -> None:
    action_context.answers = {"name": "Zoë"}
    assert Template("Hi ${ name }", "Hello *${ name }*").render_html() == "<p>Hello <em>Zoë</em></p>\n"
    assert Template("Hi ${ name }", "x").render()[0] == "Hi Zoë"


def test_docassemble_target_template() -> None:
    # docassemble's target-template demo: "_What?_ You like ${ food }?"
    t = Template(content="_What?_ You like ${ food }?")
    assert t.render_html({"food": "APPLES"}) == "<p><em>What?</em> You like APPLES?</p>\n"
    assert t.render_html({"food": "<i>X</i>"}) == "<p><em>What?</em> You like &lt;i&gt;X&lt;/i&gt;?</p>\n"


def test_python_builtins_are_visible_as_in_mako() -> None:
    # the module's own example: "% if len(cases) > 1:"; Mako's Context falls back to the builtins
    t = Template(content="""
        % if len(cases) > 1:
        You have ${ len(cases) } cases: ${ ", ".join(sorted(cases)) }.
        % endif
        % for i in range(n):
        ${ str(i + 1).zfill(2) }
        % endfor
    """)
    assert t.render_text({"cases": ["b", "a"], "n": 2}) == "You have 2 cases: a, b.\n01\n02\n"
    assert Template(content="${ len }").render_text({"len": "mine"}) == "mine\n"  # answers shadow builtins


def test_mako_loop_variable_works() -> None:
    t = Template(content="% for p in parties:\n${ loop.index + 1 }. ${ p }${ '' if loop.last else ',' }\n% endfor\n")
    assert t.render_text({"parties": ["Ann", "Bob"]}) == "1. Ann,\n2. Bob\n"


def test_filters_run_before_the_html_escaping() -> None:
    answers = {"q": "a b&c", "x": "<b>&"}
    # u: Mako would run the default filter first and URL-encode the escaped value
    link = Template(content="[search](https://e.org/?q=${ q | u })")
    assert link.render_html(answers) == '<p><a href="https://e.org/?q=a+b%26c">search</a></p>\n'
    assert link.render_text(answers) == "[search](https://e.org/?q=a+b%26c)\n"
    # h: the HTML part escapes anyway; not twice (no "&amp;lt;" shown to the reader)
    assert Template(content="${ x | h }").render_html(answers) == "<p>&lt;b&gt;&amp;</p>\n"
    assert Template(content="${ x | h }").render_text(answers) == "&lt;b&gt;&amp;\n"  # Mako's h, as asked
    assert Template(content="${ q | trim, u }").render_html({"q": " a "}) == "<p>a</p>\n"


def test_values_in_raw_html_attributes_stay_inside_them() -> None:
    # a backslash escape is not HTML: it would break the URL and let a quote end the attribute
    html = Template(content='<a href="${ url }">go</a>').render_html(
        {"url": 'https://e.org/x_y?a=1&b=2" onclick="evil()'})
    assert '" onclick' not in html and "\\" not in html
    attribute = html.split('href="')[1].split('"')[0]
    assert html_module.unescape(attribute) == 'https://e.org/x_y?a=1&b=2" onclick="evil()'


def test_the_n_filter_converts_to_text() -> None:
    t = Template(content="${ count | n } [${ nothing | n }] ${ snippet | n, trim }")
    answers = {"count": 3, "nothing": None, "snippet": "  <b>x</b>  "}
    assert t.render_html(answers) == "<p>3 [] <b>x</b></p>\n"
    assert t.render_text(answers) == "3 [] <b>x</b>\n"


def test_a_missing_name_inside_a_def_is_named() -> None:
    t = Template(content="<%def name='line(a)'>\n[${ a } ${ zz }]</%def>\n${ line(1) }\n", name="defs")
    with pytest.raises(TemplateError, match="template defs, content line 2: 'zz' is neither"):
        t.render_text({})
    assert t.render_text({"zz": "z"}).strip() == "[1 z]"


def test_defined_and_showifdef_as_in_docassemble() -> None:
    t = Template(content="""
        % if defined('spouse'):
        Spouse: ${ spouse }
        % endif
        Case ${ showifdef("case['number']") }${ showifdef("case['judge']", alternative=' (no judge yet)') }
        ${ defined('case.number') } ${ defined('nothing') }
    """)
    assert t.render_text(ANSWERS) == "Case 7 (no judge yet)\nFalse True\n"  # a None answer is defined
    assert t.render_text({**ANSWERS, "spouse": "Bo"}).startswith("Spouse: Bo\n")
    with pytest.raises(TemplateError, match=r"template t, content line 1: defined\(\) takes the variable's name as a string"):
        Template(content="${ defined(spouse) }", name="t").render_text({"spouse": 1})


def test_the_000_pages_email_screens_verbatim() -> None:
    # "email-to-case-simple" and "all_done" of shared/seeds/000, their Mako as the YAML gives it
    listing = Template(content="""\
Send an e-mail to
${ interview_email() }
and click Refresh.

% for item in get_emails():
  % if len(item.emails):
Subject lines of all e-mails sent
to ${ item.address }:

    % for mail_item in item.emails:
* ${ mail_item.subject }
    % endfor
  % endif
% endfor
""")
    mail = SimpleNamespace(subject="Re: *urgent*", to_address="case@example.org", from_address="ann@example.org",
                           reply_to=None, return_path="ann@example.org", body_text="Hi <there>",
                           body_html=SimpleNamespace(slurp=lambda: "<p>Hi</p>"), attachment=["scan.pdf"])
    names = {"interview_email": lambda: "case@example.org",
             "get_emails": lambda: [SimpleNamespace(address="case@example.org", emails=[mail, mail]),
                                    SimpleNamespace(address="other@example.org", emails=[])]}
    html = listing.render_html(names)
    assert html.count("<li>Re: *urgent*</li>") == 2 and "to case@example.org:" in html and "other@" not in html
    done = Template(content="""\
The latest e-mail was:

* Subject: ${ email.subject }
* To: ${ email.to_address }
* From: ${ email.from_address }
* Reply to: ${ email.reply_to }
* Return path: ${ email.return_path }
% if email.body_text:
* Body text: ${ email.body_text }
% endif
% if email.body_html:
* Body HTML: ${ email.body_html.slurp() }
% endif
% if len(email.attachment):
* Attachment: ${ email.attachment[0] }
% endif
""")
    text = done.render_text({"email": mail})
    assert "* Reply to: \n" in text and "* Body text: Hi <there>\n" in text and text.endswith("* Attachment: scan.pdf\n")
    assert "<li>Body HTML: &lt;p&gt;Hi&lt;/p&gt;</li>" in done.render_html({"email": mail})


def test_values_in_code_spans_and_blocks_show_as_they_are() -> None:
    t = Template(content="Your code: `${ code }`.\n\n```\n${ code }\n```\n")
    html = t.render_html({"code": "AB-12_3 <x> &#95; `"})
    assert html == ("<p>Your code: <code>AB-12_3 &lt;x&gt; &amp;#95; `</code>.</p>\n"
                    "<pre><code>AB-12_3 &lt;x&gt; &amp;#95; `\n</code></pre>\n")
