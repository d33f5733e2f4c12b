"""Encryption at rest, end to end on both backends: the daemon in process with a real SMTP client, the
CLI's ``db rekey``, and the database's own bytes searched for what must not be there.

One story per backend: a store written in clear (the control: the search finds the texts), switched
on (old rows still read, new rows sealed), re-sealed by ``db rekey --vacuum`` (no text left in the
file, WAL and SHM, or in any PostgreSQL row), rotated to a second key (the first one removed
afterwards, everything still read back through the runtime, the HTTP API and the CLI), and refused with a clear
error under a wrong key or none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import smtplib
import sqlite3
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from mailgate.config import Config
from mailgate.core.tasks import Task
from mailgate.daemon.lifecycle import Daemon, copy_store, rekey_store
from mailgate.edges.cli.main import main
from mailgate.errors import ConfigError
from mailgate.mail.auth import StaticResolver
from mailgate.store import open_store, rekey
from mailgate.store.base import (
    AutomationUpdate,
    Changes,
    Delivery,
    InboundDelivery,
    JournalEntry,
    MessageDone,
    NewAutomation,
    NewEmail,
    NewEvent,
    NewInbound,
    NewMessage,
    NewStep,
)
from mailgate.store.sealing import Keyring, SealError
from tests.helpers import config_toml, make_config, queue_processed, runtime_of, wait_until
from tests.pg import create_database, drop_database, run_async

K1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
K2 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
K3 = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="

ANSWER_1, BODY_1, SUBJECT_1 = "Zanzibar-answer-7f3q", "Quixotic-body-9k2w", "Obsidian-subject-4m8z"
ANSWER_2, BODY_2, SUBJECT_2 = "Marmalade-answer-2p6v", "Tangerine-body-5h1x", "Periwinkle-subject-3d7r"


@pytest.fixture(params=["sqlite", "postgres"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Config]:
    dsn = create_database() if request.param == "postgres" else None
    try:
        yield make_config(tmp_path, store_dsn=dsn, smtp={"port": 0, "hostname": "mx.test"},
                          mail={"domains": ("example.test",)})
    finally:
        if dsn is not None:
            drop_database(dsn)


def keyed(config: Config, key: str = "", old: tuple[str, ...] = ()) -> Config:
    return config.replace(store={**vars(config.store), "encryption_key": key, "old_encryption_keys": old})


def message(to: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@elsewhere.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@elsewhere.test>"
    msg.set_content(body)
    content, filename = attached(subject, body)
    msg.add_attachment(content, subtype="plain", filename=filename, cte="7bit")  # in clear in the raw bytes too
    return msg


def attached(subject: str, body: str) -> tuple[str, str]:
    """The text and file name of the message's attachment."""
    return f"Attached-{body[::-1]}", f"File-{subject[::-1]}.txt"


def others(answer: str) -> tuple[str, str, str]:
    """The texts besides the answers that :func:`_write` puts where answer text goes: a background
    action's argument and flash message (task row, event), a task's error message, a stash."""
    mark = answer[::-1]
    return f"Flash-{mark}", f"Error-{mark}", f"Stash-{mark}"


async def _write(config: Config, answer: str, subject: str, body: str) -> str:
    """A session with ``answer`` saved, and an e-mail to it sent over SMTP and processed; its id.
    Besides, :func:`others`: a flash, a failed task's message and a stash."""
    async with Daemon(config, roles=("worker", "smtp"), resolver=StaticResolver({})) as d:
        rt = runtime_of(d)
        session = await rt.create_session("email-to-case")
        address = (await rt.run_action(session.id, "start")).text
        assert address is not None and d.smtp is not None
        await rt.set_session_variables(session.id, {"note": answer})
        flash, error, stash = others(answer)
        side = await rt.create_session("testing")
        announced = await rt.start_background_action(side.id, "announce", "flash", {"message": flash})
        failing = await rt.start_background_action(side.id, "fails_saying", None, {"message": error})
        assert (await rt.wait_task(announced.id, 10)).state == "succeeded"
        failed = await rt.wait_task(failing.id, 10)
        assert failed.state == "failed" and error in (failed.error_message or ""), failed
        assert [json.loads(e.payload) for e in await rt.session_events(side.id) if e.kind == "command"] == [
            {"command": "flash", "message": flash}]
        tokens = await rt.stashes.stash({"note": stash})
        assert await rt.stashes.retrieve(tokens["stash_key"], tokens["secret"]) == {"note": stash}
        port = d.smtp.port

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                return client.send_message(message(address, subject, body))

        assert await asyncio.to_thread(send) == {}
        await queue_processed(rt)
        tasks = await rt.store.list_tasks(session_id=session.id)
        assert [t.action for t in tasks] == ["incoming_email"]
        assert await Task(tasks[0].id, rt.tasks).wait_async(10)
        content, filename = attached(subject, body)
        if config.store.encryption_key:  # while the daemon runs too (SQLite: its WAL holds the latest pages)
            assert await asyncio.to_thread(found, config, answer, subject, body, content, filename, flash, error,
                                           stash) == []
        else:  # the control: what is clear is found, but a stash is sealed under its own key in any case
            assert await asyncio.to_thread(found, config, content, filename, flash, error, stash) == [
                content, filename, flash, error]
        return session.id


async def _read(config: Config, sid: str) -> tuple[str, str, bytes]:
    """(the saved note, the e-mail's text body, its raw bytes) as the runtime gives them back."""
    async with Daemon(config, roles=(), one_shot=True, existing_store=True) as d:
        rt = runtime_of(d)
        answers = await rt.get_answers(sid)
        emails = await rt.store.list_emails(session_id=sid)
        assert len(emails) == 1
        raw = await rt.store.get_raw(emails[0].sha256)
        assert raw is not None
        return answers["note"], answers["email"].body_text, raw


async def _read_api(config: Config, sid: str) -> tuple[str, bytes]:
    """(the saved note, the e-mail's raw bytes) as the HTTP API gives them back."""
    api_key = "encryption-test-api-key-0123456789"
    web = config.replace(web={**vars(config.web), "port": 0, "api_key": api_key})
    async with Daemon(web, roles=("web",)) as d, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {api_key}"}) as http:
        assert d.web is not None
        base = f"http://127.0.0.1:{d.web.port}/api"
        async with http.get(f"{base}/sessions/{sid}/variables") as r:
            assert r.status == 200
            note = (await r.json())["variables"]["note"]
        async with http.get(f"{base}/sessions/{sid}/emails") as r:
            emails = await r.json()
        assert len(emails) == 1
        async with http.get(f"{base}/emails/{emails[0]['id']}/raw") as r:
            assert r.status == 200
            return note, await r.read()


def write(config: Config, answer: str, subject: str, body: str) -> str:
    return run_async(_write(config, answer, subject, body))


def read(config: Config, sid: str) -> tuple[str, str, bytes]:
    return run_async(_read(config, sid))


async def _pg_rows(dsn: str) -> bytes:
    """Every row of every table as PostgreSQL prints it (bytea as hex), as one byte string; then, when
    this process may read the server's data directory (a local test server), the files of the
    database's tables, TOAST tables and indexes as they are on disk after a checkpoint: row versions
    that no query sees any more (an UPDATE's old one) are there too."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        out = []
        for table in tables:
            out.extend(r[0] for r in await conn.fetch(f'SELECT t::text FROM "{table}" t'))
        rows = "\n".join(out).encode()
        try:
            await conn.execute("CHECKPOINT")
            folder = Path(await conn.fetchval("SHOW data_directory"))
        except asyncpg.InsufficientPrivilegeError:
            return rows
        files = [folder / r[0] for r in await conn.fetch(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 't', 'i') AND c.relfilenode <> 0")]
        segments = [p for f in files for p in (f, *sorted(f.parent.glob(f"{f.name}.[0-9]*")))]
        if not segments or not all(os.access(p, os.R_OK) for p in segments if p.exists()):
            return rows
        return rows + b"".join(p.read_bytes() for p in segments if p.exists())
    finally:
        await conn.close()


def at_rest(config: Config) -> bytes:
    """What the database holds: the SQLite file with its WAL and SHM, or every PostgreSQL row (and
    its tables' files, where they can be read)."""
    if config.store.backend == "postgres":
        return run_async(_pg_rows(config.store.dsn))
    path = Path(config.store.path)
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def found(config: Config, *texts: str) -> list[str]:
    """The texts found in the store in clear, as UTF-8 or as PostgreSQL's hex of bytea."""
    data = at_rest(config)
    return [t for t in texts if t.encode() in data or t.encode().hex().encode() in data]


def cli(config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    path = tmp_path / "mailgate.toml"
    path.write_text(config_toml(config))
    status = main([*argv, "--config", str(path)])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip().startswith("{") else out), err


def test_an_encrypted_store_holds_no_answer_and_no_mail_body_in_clear(
        base: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rekey, "RAW_BYTES", 1)  # a batch per raw message, as for big ones
    # the control: in clear, the search finds all three texts
    sid1 = write(base, ANSWER_1, SUBJECT_1, BODY_1)
    assert found(base, ANSWER_1, BODY_1, SUBJECT_1) == [ANSWER_1, BODY_1, SUBJECT_1]

    # switched on: clear rows still read; what is written now is sealed from the start
    on = keyed(base, K1)
    sid2 = write(on, ANSWER_2, SUBJECT_2, BODY_2)
    assert found(on, ANSWER_2, BODY_2, SUBJECT_2) == []
    note, body, raw = read(on, sid1)
    assert note == ANSWER_1 and body.strip() == BODY_1 and BODY_1.encode() in raw

    # db rekey seals the clear rows; --vacuum drops the space that still held them; a second run has nothing to do
    status, report, _ = cli(on, tmp_path, capsys, "db", "rekey", "--vacuum", "--json")
    assert status == 0 and report["resealed"] > 0 and report["busy"] == 0, report
    assert {t["table"]: t["resealed"] for t in report["tables"]}["raw_messages"] == 1
    assert found(on, ANSWER_1, BODY_1, SUBJECT_1, ANSWER_2, BODY_2, *others(ANSWER_1), *others(ANSWER_2),
                 *attached(SUBJECT_1, BODY_1), *attached(SUBJECT_2, BODY_2)) == []
    status, report, _ = cli(on, tmp_path, capsys, "db", "rekey", "--json")
    assert status == 0 and report["resealed"] == 0 and report["complete"] is True, report
    for sid, answer, text in ((sid1, ANSWER_1, BODY_1), (sid2, ANSWER_2, BODY_2)):
        note, body, raw = read(on, sid)
        assert note == answer and body.strip() == text and text.encode() in raw

    # rotation: K2 current, K1 kept for reading; rekey; then K1 removed and everything still reads
    rotating = keyed(base, K2, (K1,))
    status, report, _ = cli(rotating, tmp_path, capsys, "db", "rekey", "--json")
    assert status == 0 and report["resealed"] > 0, report
    assert cli(rotating, tmp_path, capsys, "db", "rekey", "--json")[1]["resealed"] == 0
    rotated = keyed(base, K2)
    for sid, answer, text in ((sid1, ANSWER_1, BODY_1), (sid2, ANSWER_2, BODY_2)):
        note, body, raw = read(rotated, sid)
        assert note == answer and body.strip() == text and text.encode() in raw
    note, raw = run_async(_read_api(rotated, sid2))
    assert note == ANSWER_2 and BODY_2.encode() in raw
    status, got, _ = cli(rotated, tmp_path, capsys, "sessions", "get", sid1, "--json")
    assert status == 0 and got["variables"]["note"] == ANSWER_1, got
    path = tmp_path / "mailgate.toml"
    assert main(["emails", "list", "--session", sid1, "--json", "--config", str(path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["subject"] for e in listed] == [SUBJECT_1], listed
    status, shown, _ = cli(rotated, tmp_path, capsys, "emails", "show", listed[0]["id"], "--raw", "--json")
    assert status == 0 and BODY_1.encode() in base64.b64decode(shown["raw_base64"]), shown
    assert found(rotated, ANSWER_1, BODY_1, ANSWER_2, BODY_2) == []

    # the old key alone, another key, or none: one clear error before anything is read
    for config, says in ((keyed(base, K1), "encryption_key does not open this store"),
                         (keyed(base, K3), "encryption_key does not open this store"),
                         (base, "encrypted at rest, and no key is configured")):
        with pytest.raises(ConfigError, match=says):
            read(config, sid1)
        status, out, err = cli(config, tmp_path, capsys, "sessions", "get", sid1)
        assert status != 0 and says in err and "Traceback" not in err and err.count("\n") == 1, err
    status, _, err = cli(keyed(base, K3), tmp_path, capsys, "db", "rekey")  # re-sealing under a key that opens nothing
    assert status != 0 and "encryption_key does not open this store" in err and err.count("\n") == 1, err
    assert found(rotated, ANSWER_1, BODY_1) == [] and read(rotated, sid1)[0] == ANSWER_1  # and it touched nothing


def test_a_bad_key_is_refused_naming_the_setting(base: Config, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(keyed(base, "c2hvcnQ="), tmp_path, capsys, "db", "migrate")
    assert status != 0 and "[store] encryption_key is not a key" in err and "32 random bytes" in err, err
    status, _, err = cli(keyed(base, "", (K1,)), tmp_path, capsys, "db", "migrate")
    assert status != 0 and "old_encryption_keys is set without encryption_key" in err, err
    status, _, err = cli(base, tmp_path, capsys, "db", "rekey")
    assert status != 0 and "encryption_key, which is not set" in err, err


async def _rotate_while_saving(first: Config, rotating: Config, rotated: Config) -> None:
    async with Daemon(first, roles=("worker",)) as d:
        rt = runtime_of(d)
        sids = [(await rt.create_session("testing", {"note": "v0"})).id for _ in range(30)]
    async with Daemon(rotating, roles=("worker",)) as d:
        rt = runtime_of(d)
        last: dict[str, str] = {}
        stop = asyncio.Event()
        saves = 0

        async def keep_saving() -> None:
            nonlocal saves
            rounds = 0
            while not stop.is_set() or rounds < 3:
                rounds += 1
                for sid in sids:
                    await rt.set_session_variables(sid, {"note": f"v{rounds}"})
                    last[sid] = f"v{rounds}"
                    saves += 1

        saving = asyncio.ensure_future(keep_saving())
        await wait_until(lambda: saves > 0, 10, "the first save")
        before = saves
        report = await asyncio.to_thread(asyncio.run, rekey_store(rotating))  # one batch per row: many transactions
        during = saves - before
        stop.set()
        await saving
        assert during > 0, "no save ran while the rekey did: the test proves nothing"
        assert report.busy == 0 and report.resealed >= len(sids)
        # no save was lost to the batch that re-sealed its row, and every row reads back
        assert {sid: (await rt.get_answers(sid))["note"] for sid in sids} == last
    again = await rekey_store(rotating)
    assert again.resealed == 0, again.to_dict()  # what the daemon wrote meanwhile was under the new key already
    async with Daemon(rotated, roles=(), one_shot=True, existing_store=True) as d:
        assert {sid: (await runtime_of(d).get_answers(sid))["note"] for sid in sids} == last


def test_rekey_beside_a_daemon_that_keeps_saving_loses_nothing(base: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rekey, "BATCH", 1)
    run_async(_rotate_while_saving(keyed(base, K1), keyed(base, K2, (K1,)), keyed(base, K2)))


async def _copy_sealed(sqlite: Config, dsn: str) -> None:
    sid = (await _write(sqlite, ANSWER_1, SUBJECT_1, BODY_1))
    unique = hashlib.sha256(UNIQUE_VALUE.encode()).hexdigest()
    await _automation_in(sqlite, unique)
    report = await copy_store(sqlite, dsn)
    assert all(c.ok for c in report.checks)
    pg = sqlite.replace(store={**vars(sqlite.store), "backend": "postgres", "dsn": dsn})
    # the sealed values travel as they are
    assert found(pg, ANSWER_1, BODY_1, SUBJECT_1, AUTO_DATA, MSG_DATA, MSG_TOKEN, JOURNAL, unique) == []
    note, body, raw = await _read(pg, sid)
    assert note == ANSWER_1 and body.strip() == BODY_1 and BODY_1.encode() in raw
    await _automation_back(pg, unique)


def test_db_copy_moves_an_encrypted_store_to_postgresql_sealed(tmp_path: Path) -> None:
    dsn = create_database()
    try:
        sqlite = keyed(make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test"}, mail={"domains": ("example.test",)}), K1)
        run_async(_copy_sealed(sqlite, dsn))
    finally:
        drop_database(dsn)


def test_check_config_reads_the_key_file(base: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "store-key"
    key_file.write_text(K1 + "\n")
    key_file.chmod(0o644)
    with_file = base.replace(store={**vars(base.store), "encryption_key_file": str(key_file)})
    status, _, err = cli(with_file, tmp_path, capsys, "check-config")
    assert status == 2 and f"[store] encryption_key_file = '{key_file}' is readable by every user" in err, err
    key_file.chmod(0o600)
    assert cli(with_file, tmp_path, capsys, "check-config")[0] == 0
    key_file.write_text("not a key")
    status, _, err = cli(with_file, tmp_path, capsys, "check-config")
    assert status == 2 and f"[store] encryption_key_file ({key_file}) is not a key" in err, err
    key_file.unlink()
    status, _, err = cli(with_file, tmp_path, capsys, "check-config")
    assert status == 2 and f"[store] encryption_key_file {key_file}: cannot read it" in err, err


async def _queued_message_through_a_rekey(clear: Config, on: Config) -> None:
    raw = f"Subject: queued\r\n\r\n{BODY_1}\r\n".encode()
    sha = hashlib.sha256(raw).hexdigest()
    plain = open_store(clear.store)
    await plain.open()
    try:
        await plain.migrate()
        await plain.create_session("s1", "iv", "{}", "{}")
        await plain.enqueue_inbound(NewInbound("q1", sha, raw, json.dumps({"rcpt": ["box"]})))
        await plain.enqueue_inbound(NewInbound("q2", sha, raw, json.dumps({"rcpt": ["box2"]})))
        assert [r.id for r in await plain.claim_inbound("w-old", 1, 60)] == ["q1"]  # a processor holds q1
    finally:
        await plain.close()
    first = await rekey_store(on)
    assert {t.table: (t.resealed, t.busy) for t in first.tables}["inbound_queue"] == (1, 1)  # q2 sealed, q1 left
    assert found(on, BODY_1) == [BODY_1]  # q1, still clear while its processor holds it
    sealed = open_store(on.store)
    await sealed.open()
    try:
        await sealed.release_inbound("w-old", ["q1"])
        again = await rekey_store(on, vacuum=True)  # the old clear bytes leave the free space too
        assert {t.table: (t.resealed, t.busy) for t in again.tables}["inbound_queue"] == (1, 0)
        assert found(on, BODY_1) == []
        claimed = await sealed.claim_inbound("w-new", 10, 60)  # as the processor gets them: clear bytes, the real hash
        assert [(r.id, r.sha256, r.raw, r.size) for r in claimed] == [("q1", sha, raw, len(raw)), ("q2", sha, raw, len(raw))]
        for r, box in zip(claimed, ("box", "box2"), strict=True):
            email = NewEmail(f"e-{r.id}", box, "s1", "<q@x>", f"<q@x>\0{sha}", r.envelope, "{}", "{}", None,
                             NewEvent("s1", "email", "{}"))
            ids, _ = await sealed.deliver_inbound(InboundDelivery(r.id, "w-new", [email]))
            assert ids == [f"e-{r.id}"]
        emails = await sealed.list_emails(session_id="s1")
        assert [(e.sha256, e.size, json.loads(e.envelope)["rcpt"]) for e in emails] == [(sha, len(raw), ["box"]),
                                                                                        (sha, len(raw), ["box2"])]
        assert await sealed.get_raw(sha) == raw and found(on, BODY_1) == []
    finally:
        await sealed.close()


def test_a_queued_message_held_by_a_processor_is_left_for_the_next_rekey(base: Config) -> None:
    run_async(_queued_message_through_a_rekey(base, keyed(base, K1)))


AUTO_DATA, STEP_RESULT, MSG_DATA, MSG_TOKEN = "Gooseberry-data-6n4c", "Fjord-result-8s2k", "Lantern-message-1v9b", "Walnut-token-3j5e"
MAIL_TOKEN, MAIL_DATA = "Cormorant-mailbox-key-8f1h", "Tundra-email-message-2c7n"
SENDER, JOURNAL, SUBMITTER, OWNER = "Saffron-sender-2w7y", "Basalt-journal-5q1m", "Heron-submitter-9t3d", "Juniper-owner-4x6p"
UNIQUE_VALUE = "someone@example.test"  # a guessable unique field: its SHA-256 must not be at rest either
CLEAR_CLASS, CLEAR_NODE = "app.Clearclass8u3n", "clearnode_7r2g"  # kept clear on purpose: the search's control


async def _automations_sealed(config: Config) -> None:
    store = open_store(config.store)
    await store.open()
    await store.migrate()
    try:
        unique = hashlib.sha256(json.dumps([["email", UNIQUE_VALUE]]).encode()).hexdigest()
        owner = json.dumps({"id": OWNER})
        await store.create_session("s1", "iv", "{}", "{}")
        rec, created = await store.create_automation(
            NewAutomation("a1", CLEAR_CLASS, "s1", json.dumps({"note": AUTO_DATA}), "key-a1", owner, unique_key=unique),
            [NewStep("st1", CLEAR_NODE, state="interaction")],
            [NewMessage("m1", "hello", token=MSG_TOKEN, data=json.dumps({"text": MSG_DATA}), sender=json.dumps(SENDER))])
        assert created and rec.data == json.dumps({"note": AUTO_DATA}) and rec.owner == owner
        again, created = await store.create_automation(NewAutomation("a2", CLEAR_CLASS, None, "{}", "key-a2", "{}",
                                                                     unique_key=unique))
        assert (again.id, created) == ("a1", False)  # the unique rule holds on the keyed hash
        assert rec.unique_key != unique
        await store.submit_interaction("a1", "st1", rec.version, submitted_by=json.dumps({"id": SUBMITTER}),
                                       data=json.dumps({"note": AUTO_DATA, "more": 1}), result=json.dumps(STEP_RESULT))
        [claimed] = await store.claim_automations("runner", 1, 30)
        assert [m.data for m in claimed.messages] == [json.dumps({"text": MSG_DATA})]
        assert claimed.messages[0].token == MSG_TOKEN and claimed.messages[0].sender == json.dumps(SENDER)
        await store.commit(Changes(
            automations=[AutomationUpdate("a1", claimed.automation.version, "runner", data=json.dumps({"note": AUTO_DATA}),
                                          steps_opened=[NewStep("st2", CLEAR_NODE, state="running")],
                                          messages_done=[MessageDone("m1", result=json.dumps(STEP_RESULT))],
                                          journal=[JournalEntry("st2", 0, "send_email", json.dumps(JOURNAL))],
                                          keep_claim=True)],
            messages=[NewMessage("m2", "again", automation_id="a1", data=json.dumps({"text": MSG_DATA}))]))
        raw = b"Subject: reply\r\n\r\nyes\r\n"
        sha = hashlib.sha256(raw).hexdigest()
        await store.deliver(Delivery(sha, raw, [NewEmail(
            "e1", "box", "s1", "<r@x>", f"<r@x>\0{sha}", "{}", "{}", "{}", None, NewEvent("s1", "email", "{}"),
            [NewMessage("m3", "email", automation_id="a1", token=MAIL_TOKEN, data=json.dumps({"text": MAIL_DATA}))])]))
        assert CLEAR_CLASS in found(config, CLEAR_CLASS, CLEAR_NODE) and CLEAR_NODE in found(config, CLEAR_NODE)
        assert found(config, AUTO_DATA, STEP_RESULT, MSG_DATA, MSG_TOKEN, SENDER, JOURNAL, SUBMITTER, OWNER,
                     UNIQUE_VALUE, unique, MAIL_TOKEN, MAIL_DATA) == []
        # read back, in clear, through every read
        got = await store.get_automation("a1")
        assert got is not None and json.loads(got.data) == {"note": AUTO_DATA} and got.owner == owner
        assert (await store.get_automation_by_key("key-a1")) == got == (await store.list_automations())[0]
        steps = await store.automation_history("a1")
        assert [(s.node, s.result, s.submitted_by) for s in steps] == [
            (CLEAR_NODE, json.dumps(STEP_RESULT), json.dumps({"id": SUBMITTER})), (CLEAR_NODE, None, None)]
        msgs = await store.automation_messages("a1")
        assert [(m.id, m.token, m.data, m.result) for m in msgs] == [
            ("m1", MSG_TOKEN, json.dumps({"text": MSG_DATA}), json.dumps(STEP_RESULT)),
            ("m2", None, json.dumps({"text": MSG_DATA}), None),
            ("m3", MAIL_TOKEN, json.dumps({"text": MAIL_DATA}), None)]
        journal = await store.journal_entry("st2", 0)
        assert journal is not None and journal.result == json.dumps(JOURNAL)
    finally:
        await store.close()


def test_an_encrypted_store_holds_no_automation_data_and_no_message_in_clear(base: Config) -> None:
    run_async(_automations_sealed(keyed(base, K1)))


async def _automation_in(config: Config, unique: str) -> None:
    """An automation with a step, a message and a journal entry holding the marker texts."""
    store = open_store(config.store)
    await store.open()
    await store.migrate()
    try:
        await store.create_automation(
            NewAutomation("a1", CLEAR_CLASS, None, json.dumps({"note": AUTO_DATA}), "key-a1", json.dumps(OWNER),
                          unique_key=unique),
            [NewStep("st1", CLEAR_NODE, state="running", result=json.dumps(STEP_RESULT))],
            [NewMessage("m1", "hello", token=MSG_TOKEN, data=json.dumps({"text": MSG_DATA}))])
        await store.commit(Changes(automations=[AutomationUpdate(
            "a1", 1, None, journal=[JournalEntry("st1", 0, "send_email", json.dumps(JOURNAL))])]))
    finally:
        await store.close()


async def _automation_back(config: Config, unique: str) -> None:
    store = open_store(config.store)
    await store.open()
    try:
        got = await store.get_automation("a1")
        assert got is not None and json.loads(got.data) == {"note": AUTO_DATA} and got.owner == json.dumps(OWNER)
        assert got.unique_key is not None and got.unique_key != unique
        assert [s.result for s in await store.automation_history("a1")] == [json.dumps(STEP_RESULT)]
        assert [(m.token, m.data) for m in await store.automation_messages("a1")] == [(MSG_TOKEN, json.dumps({"text": MSG_DATA}))]
        journal = await store.journal_entry("st1", 0)
        assert journal is not None and journal.result == json.dumps(JOURNAL)
        # the converted unique key is the one the sealed store computes: the running one is still found
        again, created = await store.create_automation(NewAutomation("a2", CLEAR_CLASS, None, "{}", "key-a2", "{}",
                                                                     unique_key=unique))
        assert (again.id, created) == ("a1", False)
    finally:
        await store.close()


def test_rekey_seals_automations_written_in_clear(base: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unique = hashlib.sha256(json.dumps([["email", UNIQUE_VALUE]]).encode()).hexdigest()
    run_async(_automation_in(base, unique))
    texts = (AUTO_DATA, STEP_RESULT, MSG_DATA, MSG_TOKEN, JOURNAL, OWNER, unique)
    assert found(base, *texts) == list(texts)  # the control: in clear, the search finds them all
    on = keyed(base, K1)
    status, report, _ = cli(on, tmp_path, capsys, "db", "rekey", "--vacuum", "--json")
    resealed = {t["table"]: t["resealed"] for t in report["tables"]}
    assert status == 0 and report["busy"] == 0, report
    assert [resealed[t] for t in ("automations", "automation_steps", "automation_messages", "automation_journal")] == [1, 1, 1, 1]
    assert found(on, *texts) == [] and found(on, CLEAR_CLASS, CLEAR_NODE) == [CLEAR_CLASS, CLEAR_NODE]
    assert cli(on, tmp_path, capsys, "db", "rekey", "--json")[1]["resealed"] == 0
    run_async(_automation_back(on, unique))


async def _moved(config: Config) -> None:
    store = open_store(config.store)
    await store.open()
    await store.migrate()
    try:
        for aid in ("a1", "a2"):
            await store.create_automation(NewAutomation(aid, CLEAR_CLASS, None, json.dumps({"note": aid}), f"key-{aid}", "{}"),
                                          messages=[NewMessage(f"m-{aid}", "hello", data=json.dumps({"text": aid}))])
        # someone with write access to the database swaps the sealed values between rows
        swap_data = ("UPDATE automations SET data = (SELECT data FROM automations WHERE id = 'a1') WHERE id = 'a2'",
                     "UPDATE automation_messages SET data = (SELECT data FROM automation_messages WHERE id = 'm-a1') "
                     "WHERE id = 'm-a2'")
        if config.store.backend == "postgres":
            conn = await asyncpg.connect(config.store.dsn)
            try:
                for sql in swap_data:
                    await conn.execute(sql)
            finally:
                await conn.close()
        else:
            with sqlite3.connect(config.store.path) as db:
                for sql in swap_data:
                    db.execute(sql)
        assert json.loads((await store.get_automation("a1")).data) == {"note": "a1"}  # type: ignore[union-attr]
        with pytest.raises(SealError, match="automations.data of a2: the sealed value does not open.*moved to another row"):
            await store.get_automation("a2")
        with pytest.raises(SealError, match="automation_messages.data of m-a2: .*moved to another row"):
            await store.automation_messages("a2")
    finally:
        await store.close()


def test_a_sealed_automation_value_moved_to_another_row_does_not_open(base: Config) -> None:
    run_async(_moved(keyed(base, K1)))


async def _emails_moved(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(config.store)
    await store.open()
    await store.migrate()
    try:
        await store.create_session("s1", "iv", "{}", "{}")
        for n in (1, 2):
            raw = f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode()
            sha = hashlib.sha256(raw).hexdigest()
            await store.deliver(Delivery(sha, raw, [NewEmail(
                f"e{n}", "box", "s1", f"<m{n}@x>", f"<m{n}@x>\0{sha}", "{}", json.dumps({"subject": f"m{n}"}), "{}", None,
                NewEvent("s1", "email", "{}"))]))
        first = await store.get_emails(["e1", "e2"])
        assert {k: json.loads(v.parsed)["subject"] for k, v in first.items()} == {"e1": "m1", "e2": "m2"}
        # read again (answers that keep DAEmails load them at every save): nothing is opened a second time
        opened: list[str] = []
        real_open = Keyring.open_text
        monkeypatch.setattr(Keyring, "open_text", lambda ring, value, aad, where: opened.append(where) or real_open(ring, value, aad, where))
        assert await store.get_emails(["e1", "e2"]) == first and await store.list_emails(session_id="s1") == [first["e1"], first["e2"]]
        assert opened == []
        # someone with write access to the database swaps the sealed values between the rows: still refused
        swap = "UPDATE emails SET parsed = (SELECT parsed FROM emails WHERE id = 'e1') WHERE id = 'e2'"
        if config.store.backend == "postgres":
            conn = await asyncpg.connect(config.store.dsn)
            try:
                await conn.execute(swap)
            finally:
                await conn.close()
        else:
            with sqlite3.connect(config.store.path) as db:
                db.execute(swap)
        assert (await store.get_emails(["e1"]))["e1"] == first["e1"]
        with pytest.raises(SealError, match="emails.parsed of e2: the sealed value does not open.*moved to another row"):
            await store.get_emails(["e2"])
    finally:
        await store.close()


def test_a_sealed_email_value_moved_to_another_row_does_not_open_after_it_was_read(
        base: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    run_async(_emails_moved(keyed(base, K1), monkeypatch))
