"""The demo pages in headless Chromium, against ``mailgate demo`` run as a subprocess on port 0.

Debian's ``chromium`` is driven through Playwright's sync API (its browsers are never downloaded).
Without /usr/bin/chromium or the playwright package the module is skipped, except under CI, where
that is an error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import smtplib
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.helpers import (
    kill_process,
    mailgate_cmd,
    start_mailgate,
    stop_process,
    subprocess_env,
    wait_for_log,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DEMO_PAGES = (
    "background_action", "background_action_with_response_action", "background-error-action-demo",
    "background-error-action", "background_action_flash", "background_response_action_flash",
    "background_action_refresh", "background_action_javascript", "background_action_fields", "check-in",
    "target-template", "target-code-template", "target-code", "target-code-multiple", "ajax-calc", "ajax-flash",
    "ajax-calc-javascript", "ajax-refresh", "email-to-case", "reply-or-remind",
)
TIMEOUT_MS = 15_000
RECONNECT_MS = 30_000  # a page retries with backoff (up to 10 s between attempts) while the daemon is down
API_KEY = "browser-test-api-key"
BUSY = re.compile(r"(^|\s)mailgate-busy(\s|$)")
# The page's token has expired by its own payload (base64url JSON with "exp"); atob needs no padding.
TOKEN_EXPIRED_JS = ("Date.now() / 1000 > JSON.parse(atob(client.token.split('.')[0]"
                    ".replace(/-/g, '+').replace(/_/g, '/'))).exp")


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


MISSING = _missing()
if MISSING is not None and not os.environ.get("CI"):
    pytest.skip(f"browser tests need Debian's chromium and playwright: {MISSING}", allow_module_level=True)
if MISSING is not None:
    pytest.fail(f"CI is set, so the browser tests must run, but {MISSING}", pytrace=False)

from playwright.sync_api import Browser, Page, WebSocketRoute, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.e2e


# -- the daemon ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Demo:
    base_url: str
    smtp_port: int
    log: Path


def _unused_udp_port() -> int:
    """A port nobody answers on: the daemon's DKIM/SPF lookups fail at once instead of leaving the host."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("browser")
    config = tmp / "mailgate.toml"
    config.write_text("\n".join([
        "[web]", "port = 0", f'api_key = "{API_KEY}"',
        "[smtp]", "port = 0", f'dns_servers = ["127.0.0.1:{_unused_udp_port()}"]', "dns_timeout = 1.0",
        "[tasks]", "poll_interval = 0.05",
        "[interviews]", 'modules = ["mailgate.demo.checkin"]',
        "[daemon]", "grace_period = 2",
    ]) + "\n")
    log = tmp / "daemon.log"
    proc = start_mailgate("demo", "--store", str(tmp / "demo.sqlite3"), env=subprocess_env(config), log=log)
    try:
        web_port = int(wait_for_log(proc, log, r"web listening on [\d.]+:(\d+)", 30, "the web port").group(1))
        smtp_port = int(wait_for_log(proc, log, r"smtp listening on [\d.]+:(\d+) \(", 30, "the SMTP port").group(1))
        yield Demo(f"http://127.0.0.1:{web_port}", smtp_port, log)
        assert stop_process(proc, 20) == 0, f"mailgate demo exited with {proc.returncode}:\n{log.read_text()}"
    finally:
        kill_process(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@contextmanager
def new_page(browser: Browser, base_url: str) -> Iterator[Page]:
    """A page in a context of its own; fails the test if the page had JavaScript errors."""
    context = browser.new_context(base_url=base_url)
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield p
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Browser, demo: Demo) -> Iterator[Page]:
    with new_page(browser, demo.base_url) as p:
        yield p


class Restartable:
    """``mailgate demo`` that a test stops and starts again on the same store and the same port."""

    def __init__(self, tmp: Path, web: list[str]) -> None:
        self.tmp = tmp
        self.web = web
        self.port = 0
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = tmp / "mailgate.toml"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.config.write_text("\n".join([
            "[store]", f'path = "{self.tmp / "demo.sqlite3"}"',
            "[web]", f"port = {self.port}", *self.web,
            "[smtp]", "port = 0", f'dns_servers = ["127.0.0.1:{_unused_udp_port()}"]', "dns_timeout = 1.0",
            "[tasks]", "poll_interval = 0.05",
            "[interviews]", 'modules = ["mailgate.demo.checkin"]',
            "[daemon]", "grace_period = 2",
        ]) + "\n")

    def start(self) -> None:
        self._write_config()
        self.starts += 1
        log = self.tmp / f"daemon-{self.starts}.log"
        self.proc = start_mailgate("demo", env=subprocess_env(self.config), log=log)
        port = int(wait_for_log(self.proc, log, r"web listening on [\d.]+:(\d+)", 30, "the web port").group(1))
        assert self.port in (0, port), (self.port, port)
        self.port = port

    def stop(self) -> None:
        assert self.proc is not None
        assert stop_process(self.proc, 20) == 0, (self.tmp / f"daemon-{self.starts}.log").read_text()
        self.proc = None

    def cli(self, *args: str) -> str:
        """``mailgate ARGS`` on the same config and store; its standard output."""
        done = subprocess.run(mailgate_cmd(*args), env=subprocess_env(self.config), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Restartable]:
    """A demo daemon with browser tokens valid for 2 s (``token_ttl``), started."""
    daemon = Restartable(tmp_path, ["token_ttl = 2"])
    daemon.start()
    try:
        yield daemon
        if daemon.proc is not None:
            daemon.stop()
    finally:
        if daemon.proc is not None:
            kill_process(daemon.proc)


def open_demo(page: Page, name: str) -> str:
    """Start a demo (a new session) and wait until its WebSocket is connected; the session's id."""
    page.goto(f"/demo/{name}")
    page.get_by_role("button", name="Start the demo").click()
    expect(page).to_have_url(re.compile(rf"/demo/{re.escape(name)}\?session=\w+$"))
    expect(page.locator("html")).to_have_attribute("data-mailgate", "connected")
    return page.url.rsplit("=", 1)[1]


def add_to_553(page: Page, value: str) -> None:
    page.get_by_label("Number").fill(value)
    page.get_by_role("button", name="Continue").click()


# -- the demos from the issue --------------------------------------------------------------------------
def test_flash_demo_shows_the_answer_as_a_flash(page: Page) -> None:
    open_demo(page, "background_action_flash")
    add_to_553(page, "2")
    expect(page.locator("#mailgate-flash")).to_contain_text("The answer is 555.")
    expect(page.locator("#mailgate-flash .mailgate-flash-message")).to_have_count(1)


def test_ajax_calc_fills_in_c(page: Page) -> None:
    open_demo(page, "ajax-calc")
    page.get_by_label("A", exact=True).fill("4")
    page.get_by_label("B", exact=True).fill("5")
    page.get_by_label("B", exact=True).press("Tab")
    expect(page.get_by_label("C", exact=True)).to_have_value("20")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#screen")).to_have_text("The correct answer is 20.")


def test_target_template_renders_markdown_under_the_button(page: Page) -> None:
    open_demo(page, "target-template")
    food = page.get_by_label("Favorite food")
    food.fill("soup")
    food.press("Tab")
    feedback = page.locator("[data-mailgate-target=feedback]")
    expect(feedback).to_have_text("What? You like SOUP?")
    expect(feedback.locator("em")).to_have_text("What?")  # the Markdown was rendered, as docassemble's "_What?_"
    expect(feedback.locator("strong")).to_have_count(0)
    food.fill("<i>x</i>")  # a value is text, never markup
    food.press("Tab")
    expect(feedback).to_have_text("What? You like <I>X</I>?")
    expect(feedback.locator("i")).to_have_count(0)
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#screen")).to_have_text("Your favorite food is <i>x</i>.")


def test_ajax_refresh_offers_as_many_choices_as_things(page: Page) -> None:
    open_demo(page, "ajax-refresh")
    radios = page.locator("[data-mailgate-radio=thing] label")
    expect(radios).to_have_text(["1", "2", "3"])
    page.evaluate("window.beforeRefresh = true")
    things = page.get_by_label("How many things are there?")
    with page.expect_event("load"):
        things.fill("5")
        things.press("Tab")
    expect(radios).to_have_text(["1", "2", "3", "4", "5"])
    assert page.evaluate("window.beforeRefresh") is None  # it was a real reload
    expect(things).to_have_value("5")
    page.get_by_label("4").check()
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#screen")).to_have_text("You picked thing 4.")


def test_email_to_case_shows_a_new_email_without_a_reload(page: Page, demo: Demo) -> None:
    open_demo(page, "email-to-case")
    address = page.locator("#address")
    expect(address).to_contain_text("@")
    loaded = page.evaluate("window.demoPageLoad")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    subject = f"Case {uuid.uuid4().hex[:8]}"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "client@elsewhere.test", address.inner_text().strip(), subject
    msg.set_content("Please open a case.")
    with smtplib.SMTP("127.0.0.1", demo.smtp_port, timeout=30) as client:
        client.send_message(msg)
    expect(page.locator("#emails .subject")).to_have_text([subject])
    expect(page.locator("#emails")).to_contain_text("from client@elsewhere.test")
    assert page.evaluate("window.demoPageLoad") == loaded and navigations == []


def test_reply_or_remind_moves_on_the_open_page_when_mail_arrives(page: Page, demo: Demo) -> None:
    """AUTOMATIONS.md §5.1 on the demo page: the reply is the automation's ``email`` message, so it
    reaches ``thank`` at once (its AsSoonAs recheck is 60 s away, the wait 5 minutes) and the page
    shows it from the ``automation`` event, without a reload."""
    open_demo(page, "reply-or-remind")
    address = page.locator("#address")
    expect(address).to_contain_text("@")
    expect(page.locator("#state")).to_have_text("running")
    expect(page.locator("#open")).to_have_text("at wait")
    expect(page.locator("#progress li")).to_have_text(["asked for the documents"])
    loaded = page.evaluate("window.demoPageLoad")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "client@elsewhere.test", address.inner_text().strip(), "My documents"
    msg.set_content("Attached.")
    sent = time.monotonic()
    with smtplib.SMTP("127.0.0.1", demo.smtp_port, timeout=30) as client:
        client.send_message(msg)
    expect(page.locator("#state")).to_have_text("finished")
    assert time.monotonic() - sent < 15  # the message moved it, not a recheck (60 s) or the timeout (5 min)
    expect(page.locator("#progress li")).to_have_text(["asked for the documents", "reply received: thanked"])
    assert page.evaluate("window.demoPageLoad") == loaded and navigations == []
    # the client's automation calls reach the server and come back as MailgateErrors saying why
    refused = page.evaluate("client.submitTask('no-such-step', {closed: true}).then(() => null, (e) => [e.code, e.status, e.message])")
    assert refused[:2] == ["server", 404] and "no task 'no-such-step'" in refused[2]
    refused = page.evaluate("client.message('no-such-key', 'email', null).then(() => null, (e) => [e.code, e.message])")
    assert refused[0] == "server" and "no automation of this session takes messages from pages" in refused[1]


# -- the other demo pages ------------------------------------------------------------------------------
def test_demo_index_lists_every_page(page: Page) -> None:
    page.goto("/demo/")
    hrefs = page.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert {f"/demo/{name}" for name in DEMO_PAGES} <= set(hrefs)


def test_background_action(page: Page) -> None:
    open_demo(page, "background_action")
    add_to_553(page, "2")
    expect(page.locator("#screen")).to_have_text("The answer is 555.")


def test_background_action_with_response_action(page: Page) -> None:
    open_demo(page, "background_action_with_response_action")
    add_to_553(page, "7")
    expect(page.locator("#screen")).to_have_text("The answer is 560.")


def test_background_error_action_demo_divides_and_reports_the_error(page: Page) -> None:
    open_demo(page, "background-error-action-demo")
    screen = page.locator("#screen")
    for numerator, denominator in (("8", "2"), ("4", "0")):
        page.get_by_label("Numerator").fill(numerator)
        page.get_by_label("Denominator").fill(denominator)
        page.get_by_role("button", name="Continue").click()
        if denominator == "2":
            expect(screen).to_have_text("The answer is 4.0.")
    expect(screen).to_contain_text("There was an error in the division:")
    expect(screen).to_contain_text("division by zero")


def test_background_error_action_is_handled(page: Page) -> None:
    open_demo(page, "background-error-action")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#screen")).to_have_text(
        "The task failed: True. Its value: handled_error. The error was a ZeroDivisionError: division by zero.")


def test_background_response_action_flash(page: Page) -> None:
    open_demo(page, "background_response_action_flash")
    add_to_553(page, "2")
    expect(page.locator("#mailgate-flash")).to_contain_text("The answer is 555.")


def test_background_action_refresh_reloads_the_page_with_the_answer(page: Page) -> None:
    open_demo(page, "background_action_refresh")
    expect(page.locator("#screen")).to_have_text("Waiting for the answer.")
    page.evaluate("window.beforeRefresh = true")
    with page.expect_event("load"):
        add_to_553(page, "2")
    expect(page.locator("#screen")).to_have_text("The answer is 555.")
    assert page.evaluate("window.beforeRefresh") is None


def test_background_action_javascript_alerts_the_answer(page: Page) -> None:
    open_demo(page, "background_action_javascript")
    # Accepted the moment it opens: the push can come before the click has returned, and an open
    # alert blocks the page (and so the click) until someone answers it.
    page.on("dialog", lambda dialog: dialog.accept())
    with page.expect_event("dialog") as dialog_info:
        add_to_553(page, "2")
    dialog = dialog_info.value
    assert dialog.type == "alert" and dialog.message == "The answer is 555."


def test_background_action_fields_fills_in_the_fields(page: Page) -> None:
    open_demo(page, "background_action_fields")
    add_to_553(page, "2")
    expect(page.get_by_label("Sum")).to_have_value("555")
    expect(page.get_by_label("Product")).to_have_value("1106")


def _checkins(text: str) -> int:
    found = re.search(r"You checked in (\d+) times", text)
    assert found, text
    return int(found.group(1))


def test_check_in_counts_and_keeps_drafts(page: Page) -> None:
    open_demo(page, "check-in")
    screen = page.locator("#screen")
    expect(screen).to_contain_text(re.compile(r"You checked in [1-9]\d* times"))  # the check-in on connect
    first = _checkins(screen.inner_text())
    food = page.get_by_label("Favorite food")
    food.fill("apple")
    food.press("Tab")
    expect(screen).to_contain_text("Your draft choices were apple.")
    food.fill("pear")
    food.press("Tab")
    expect(screen).to_contain_text("Your draft choices were apple and pear.")
    assert _checkins(screen.inner_text()) >= first + 2
    page.get_by_role("button", name="Continue").click()
    expect(screen).to_contain_text("Your favorite food is pear.")


def test_target_code_inserts_raw_html(page: Page) -> None:
    open_demo(page, "target-code")
    food = page.get_by_label("Favorite food")
    food.fill("soup")
    food.press("Tab")
    expect(page.locator("[data-mailgate-target=feedback]")).to_have_text("What? You like SOUP?")
    food.fill("")
    food.press("Tab")
    expect(page.locator("[data-mailgate-target=feedback]")).to_have_text("")


def test_target_code_template(page: Page) -> None:
    open_demo(page, "target-code-template")
    food = page.get_by_label("Favorite food")
    food.fill("soup")
    food.press("Tab")
    feedback = page.locator("[data-mailgate-target=feedback]")
    expect(feedback).to_have_text("What? You like SOUP?")
    expect(feedback.locator("em")).to_have_text("What?")


def test_target_code_multiple_fills_two_targets(page: Page) -> None:
    open_demo(page, "target-code-multiple")
    food = page.get_by_label("Favorite food")
    food.fill("soup")
    food.press("Tab")
    expect(page.locator("[data-mailgate-target=feedback_one]")).to_have_text("(Please don't be gross.)")
    expect(page.locator("h1")).to_contain_text("What is your favorite food? (Please don't be gross.)")
    expect(page.locator("[data-mailgate-target=feedback_two]")).to_have_text("What? You like SOUP?")


def test_ajax_flash_criticises_the_food(page: Page) -> None:
    open_demo(page, "ajax-flash")
    food = page.get_by_label("Favorite food")
    food.fill("kale")
    food.press("Tab")
    expect(page.locator("#mailgate-flash")).to_have_text("What? You like KALE?")
    page.get_by_label("Favorite drink").fill("tea")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#screen")).to_have_text("Your favorite food is kale and your favorite drink is tea.")
    expect(page.locator("#mailgate-flash .mailgate-flash-message")).to_have_count(1)  # once per new value


def test_ajax_calc_javascript_flashes_a_hint(page: Page) -> None:
    open_demo(page, "ajax-calc-javascript")
    page.get_by_label("A", exact=True).fill("4")
    page.get_by_label("B", exact=True).fill("5")
    page.get_by_label("B", exact=True).press("Tab")
    expect(page.locator("#mailgate-flash")).to_contain_text("Hint: C should be 20")
    expect(page.get_by_label("C", exact=True)).to_have_value("")  # a hint, not an answer
    page.get_by_label("C", exact=True).fill("21")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#screen")).to_have_text("That answer is not right!")


# -- the client itself -----------------------------------------------------------------------------------
def test_client_reconnects_and_keeps_working(page: Page) -> None:
    open_demo(page, "background_action_flash")
    page.evaluate("window.reconnects = 0; document.addEventListener('mailgate:connected', () => window.reconnects++)")
    page.evaluate("client.ws.close()")  # as if the network dropped
    page.wait_for_function("window.reconnects === 1")
    expect(page.locator("html")).to_have_attribute("data-mailgate", "connected")
    add_to_553(page, "3")
    expect(page.locator("#mailgate-flash")).to_contain_text("The answer is 556.")


def test_a_page_whose_token_expired_recovers_after_a_restart_with_what_it_missed(
        browser: Browser, restartable: Restartable) -> None:
    """Finding 11: the page outlives its token (2 s here, 1 h by default), the daemon restarts, and the
    page renews its token, reconnects and shows the flashes committed while it was away."""
    with new_page(browser, restartable.base_url) as page:
        sid = open_demo(page, "ajax-flash")
        page.evaluate("window.demoPageLoad = 1; window.renewed = 0;"
                      "document.addEventListener('mailgate:renewed', () => window.renewed++)")
        first_token = page.evaluate("client.token")
        # One event seen live first: in a store without any event a page has no id to resume from
        # (the server takes last=0 for a new page), which is not what this test is about.
        restartable.cli("sessions", "run", sid, "criticize_food", "--arg", "favorite_food=apple")
        expect(page.locator("#mailgate-flash")).to_have_text("What? You like APPLE?")
        page.wait_for_function(TOKEN_EXPIRED_JS)
        restartable.stop()
        expect(page.locator("html")).to_have_attribute("data-mailgate", "reconnecting")
        for food in ("kale", "pear"):  # committed while the daemon is down: the page can only catch up on them
            restartable.cli("sessions", "run", sid, "criticize_food", "--arg", f"favorite_food={food}")
        restartable.start()
        flashes = page.locator("#mailgate-flash .mailgate-flash-message")
        expect(flashes).to_have_text(["What? You like APPLE?", "What? You like KALE?", "What? You like PEAR?"],
                                     timeout=RECONNECT_MS)
        expect(page.locator("html")).to_have_attribute("data-mailgate", "connected")
        assert page.evaluate("window.renewed") >= 1 and page.evaluate("client.token") != first_token
        assert page.evaluate("window.demoPageLoad") == 1  # caught up without a reload


def test_while_the_daemon_is_down_the_page_says_so_and_runs_no_click(browser: Browser, restartable: Restartable) -> None:
    """Finding 12: the page shows it is offline, its buttons are off, a run made meanwhile fails at
    once and is never sent later (three clicks used to give three tasks after the reconnect)."""
    with new_page(browser, restartable.base_url) as page:
        sid = open_demo(page, "background_action_flash")
        html, banner = page.locator("html"), page.locator("#mailgate-status")
        expect(banner).to_be_hidden()
        restartable.stop()
        expect(html).to_have_class(re.compile(r"(^|\s)mailgate-reconnecting(\s|$)"))
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("Reconnecting…")
        button = page.get_by_role("button", name="Continue")
        expect(button).to_be_disabled()
        page.get_by_label("Number").fill("2")
        for _ in range(3):
            button.click(force=True)  # a disabled button: nothing happens
            page.locator("#question").evaluate("form => form.requestSubmit()")  # past the button: the client refuses
        expect(page.locator("#screen")).to_have_text("not connected: start was not run")
        assert page.evaluate("client.run('start', {value_to_add: 1}).then(() => 'sent', (e) => e.code)") == "offline"
        restartable.start()
        expect(html).to_have_attribute("data-mailgate", "connected", timeout=RECONNECT_MS)
        expect(banner).to_be_hidden()
        expect(button).to_be_enabled()
        add_to_553(page, "3")
        expect(page.locator("#mailgate-flash")).to_contain_text("The answer is 556.")
        tasks = json.loads(restartable.cli("tasks", "list", "--session", sid, "--json"))
        assert len(tasks) == 1, tasks  # only the click made while connected


def test_a_run_without_an_answer_times_out_and_a_running_task_shows(page: Page) -> None:
    """Finding 12: ``run`` rejects after its timeout; the page shows a task at work until it ends."""
    routes: list[WebSocketRoute] = []
    held: list[str] = []
    holding = [False]

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        routes.append(ws)

        def to_server(message: str | bytes) -> None:
            if json.loads(message).get("action") != "screen":  # "screen" runs get no answer
                server.send(message)

        def to_page(message: str | bytes) -> None:
            data = json.loads(message)
            if data.get("kind") == "task" or (held and holding[0]):
                holding[0] = True
                held.append(str(message))  # the task's end, and what follows it, wait
            else:
                ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)

    page.route_web_socket(re.compile(r"/ws\?token="), route)
    open_demo(page, "background_action_flash")
    html = page.locator("html")
    outcome = page.evaluate("""Promise.race([
        client.run("screen", {}, {timeout: 300}).then(() => "answered", (e) => e.code + ": " + e.message),
        new Promise((resolve) => setTimeout(() => resolve("still waiting after 5 s"), 5000))])""")
    assert outcome == "timeout: no answer to screen within 0.3 s"
    expect(html).not_to_have_class(BUSY)  # a run that timed out no longer counts
    add_to_553(page, "2")
    expect(page.locator("#screen")).to_have_text("Your answer will appear shortly.")  # the run answered...
    expect(html).to_have_class(BUSY)  # ...and its task runs
    expect(page.locator("#mailgate-working")).to_be_visible()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not held:  # the route's callbacks run while Playwright is called: wait in the page
        assert time.monotonic() < deadline, "the task's end never came"
        page.evaluate("new Promise((resolve) => setTimeout(resolve, 20))")
    expect(html).to_have_class(BUSY)
    holding[0] = False
    for message in held:
        routes[-1].send(message)
    expect(page.locator("#mailgate-flash")).to_contain_text("The answer is 555.")
    expect(html).not_to_have_class(BUSY)
    expect(page.locator("#mailgate-working")).to_be_hidden()


def test_a_page_catches_up_on_400_missed_events_with_one_reconnect(page: Page, demo: Demo) -> None:
    """Must show (finding 8's server side with the client): 400 events committed while the page was
    away arrive over one new connection, none of them dropped as "too slow"."""
    blocked = [False]
    opened: list[str] = []

    def route(ws: WebSocketRoute) -> None:
        if blocked[0]:
            ws.close(code=1013, reason="blocked by the test")
            return
        opened.append(ws.url)
        ws.connect_to_server()

    page.route_web_socket(re.compile(r"/ws\?token="), route)
    sid = open_demo(page, "ajax-flash")
    page.evaluate("window.flashes = 0; window.welcomes = 0;"
                  "document.addEventListener('mailgate:flash', () => window.flashes++);"
                  "document.addEventListener('mailgate:connected', () => window.welcomes++)")
    blocked[0] = True
    page.evaluate("client.ws.close()")
    expect(page.locator("html")).to_have_attribute("data-mailgate", "reconnecting")
    for i in range(400):
        request = urllib.request.Request(
            f"{demo.base_url}/api/sessions/{sid}/actions/criticize_food", method="POST",
            data=json.dumps({"arguments": {"favorite_food": f"food {i}"}}).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    before = len(opened)
    blocked[0] = False
    page.wait_for_function("window.flashes === 400", timeout=RECONNECT_MS)
    expect(page.locator("#mailgate-flash .mailgate-flash-message").last).to_have_text("What? You like FOOD 399?")
    assert page.evaluate("window.welcomes") == 1 and len(opened) == before + 1, opened[before:]


# -- several hosts ---------------------------------------------------------------------------------------
def test_a_page_on_node_a_shows_what_a_worker_on_node_b_did(browser: Browser, tmp_path: Path) -> None:
    """Two daemons on one PostgreSQL database: the page is served by node A (web only, polling the
    store every 30 s), the background action runs on node B (worker only); the flash appears at
    once, rung through NOTIFY."""
    from tests.pg import create_database, drop_database
    from tests.pg import run_async as _run

    dsn = create_database()
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        def node(name: str, roles: str, web: str) -> tuple[subprocess.Popen[bytes], Path]:
            config = tmp_path / f"{name}.toml"
            config.write_text("\n".join([
                "[store]", 'backend = "postgres"', f'dsn = "{dsn}"',
                "[web]", "port = 0", "demo_pages = true", web,
                "[smtp]", "port = 0",
                "[tasks]", "poll_interval = 30",  # only the doorbell can make it quick
                "[interviews]", 'modules = ["mailgate.demo.background"]',
                "[daemon]", "grace_period = 2",
            ]) + "\n")
            log = tmp_path / f"{name}.log"
            proc = start_mailgate("serve", "--roles", roles, env=subprocess_env(config), log=log)
            procs.append((proc, log))
            return proc, log

        a, a_log = node("a", "web", "event_poll_interval = 30")
        b, b_log = node("b", "worker", "")
        web_port = int(wait_for_log(a, a_log, r"web listening on [\d.]+:(\d+)", 30, "node A's web port").group(1))
        wait_for_log(b, b_log, r"mailgate started", 30, "node B")
        context = browser.new_context(base_url=f"http://127.0.0.1:{web_port}")
        context.set_default_timeout(5_000)  # far below both poll intervals
        try:
            page = context.new_page()
            open_demo(page, "background_action_flash")
            add_to_553(page, "4")
            expect(page.locator("#mailgate-flash")).to_contain_text("The answer is 557.")
        finally:
            context.close()
        workers = _run(_task_workers(dsn))
        assert workers and all(f":{b.pid}:" in w for w in workers), (workers, b.pid)  # "host:pid:random"
        for proc, log in procs:
            assert stop_process(proc, 20) == 0, log.read_text()
    finally:
        for proc, _ in procs:
            kill_process(proc)
        drop_database(dsn)


async def _task_workers(dsn: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT worker FROM tasks WHERE state = 'succeeded'")]
    finally:
        await conn.close()
