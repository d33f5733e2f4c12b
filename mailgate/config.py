"""Configuration: one TOML file loaded once into frozen, typed objects.

Each table of the file is a frozen dataclass below; each field carries its one-line explanation in
``metadata["doc"]``. ``config.example.toml`` documents every key with its default, and a test keeps
that file and these classes in step. Unknown tables or keys and values of the wrong type are
rejected with the file, table and key named, every error at once. Any key may come from an
environment variable named ``MAILGATE_<TABLE>_<KEY>``, which overrides the file (secrets,
``secret=True``, usually do); ``Config.origins`` says where each value came from.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from mailgate.errors import ConfigError
from mailgate.outbound.transport import OutboundConfig, check_outbound

ROLES = ("smtp", "web", "worker", "scheduler")


def _f(default: Any, doc: str, *, secret: bool = False, minimum: float | None = None,
       maximum: float | None = None) -> Any:
    meta = {"doc": doc, "secret": secret, "minimum": minimum, "maximum": maximum}
    if isinstance(default, (list, tuple)):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DaemonConfig:
    roles: tuple[str, ...] = _f(ROLES, "roles this process runs: any of smtp, web, worker, scheduler")
    grace_period: float = _f(10.0, "seconds to let running work finish on SIGTERM before stopping", minimum=0)
    log_level: Literal["debug", "info", "warning", "error"] = _f("info", "log level")
    log_format: Literal["text", "json"] = _f("text", "text: one readable line per event; json: one JSON object per line")
    gc_threshold: int = _f(50_000, "allocations between two runs of Python's garbage collector on new objects "
                           "(Python's default, 700, costs a busy daemon up to a third of its CPU); 0 keeps Python's default",
                           minimum=0)


@dataclass(frozen=True)
class StoreConfig:
    backend: Literal["sqlite", "postgres"] = _f("sqlite", "storage backend: sqlite (embedded) or postgres (several hosts)")
    path: str = _f("mailgate.sqlite3", "SQLite database file; a relative path set in this file is relative to this file's "
                   "folder (the default and one from the environment: to the working directory)")
    dsn: str = _f("", "PostgreSQL connection string (env MAILGATE_STORE_DSN)", secret=True)
    pool_size: int = _f(10, "PostgreSQL only: connections each process keeps open (plus one that listens for events)", minimum=1)
    connect_timeout: float = _f(10.0, "PostgreSQL only: seconds to wait for a connection or an answer to it", minimum=0.1)
    busy_timeout: float = _f(10.0, "seconds a SQLite writer waits for another process's write lock", minimum=0.1)
    max_pages: int = _f(0, "SQLite only: cap the database at this many pages (PRAGMA max_page_count; 0 = no cap). "
                        "For tests of a full store; a real disk needs no cap", minimum=0)
    encryption_key: str = _f("", "encryption at rest (off when empty): base64 of 32 random bytes (head -c 32 /dev/urandom "
                             "| base64) sealing answers and mail with AES-256-GCM (env MAILGATE_STORE_ENCRYPTION_KEY)",
                             secret=True)
    encryption_key_file: str = _f("", "file holding encryption_key instead (e.g. a systemd credential: "
                                  "$CREDENTIALS_DIRECTORY/mailgate-store-key)")
    old_encryption_keys: tuple[str, ...] = _f((), "earlier keys, read (never written) during a rotation: keep the old "
                                              "key here until mailgate db rekey has re-sealed every row", secret=True)


@dataclass(frozen=True)
class InterviewsConfig:
    modules: tuple[str, ...] = _f((), "importable Python modules that define interviews")
    paths: tuple[str, ...] = _f((), "Python files that define interviews")


@dataclass(frozen=True)
class SessionsConfig:
    lock_timeout: float = _f(4.0, "time budget in seconds of a locked action, and the longest wait for a session's lease", minimum=0.05)
    lease_ttl: float = _f(15.0, "seconds a session lease lives without renewal; its holder renews it while alive", minimum=0.5)
    interview_delete_days: float = _f(90.0, "cron_daily deletes sessions whose answers were not saved (by anyone, cron included) for this many days (0 = never); interviews may override", minimum=0)


@dataclass(frozen=True)
class TasksConfig:
    workers: int = _f(8, "background actions run at the same time by this process", minimum=1)
    lease: float = _f(30.0, "seconds a claimed task stays claimed without a heartbeat; a dead worker's task is rerun after this", minimum=0.5)
    max_attempts: int = _f(3, "times a task is started before it is failed because its workers kept dying", minimum=1)
    timeout: float = _f(300.0, "seconds a background action may run before it is failed", minimum=0.01)
    poll_interval: float = _f(0.5, "seconds between checks for tasks queued by other processes", minimum=0.01)
    wait_timeout: float = _f(60.0, "longest Task.wait()/get() when no timeout is given", minimum=0)


@dataclass(frozen=True)
class MailConfig:
    domains: tuple[str, ...] = _f(("localhost",), "domains whose mail this host accepts; interview_email() uses the first")
    local_part_length: int = _f(16, "characters in a generated local part (5 random bits each; 16 gives 80 bits)", minimum=10)
    mailbox_expiry_days: float = _f(0.0, "days an address lives after interview_email() last handed it out; 0 = as long as its session", minimum=0)
    postmaster: str = _f("mailbox", "where mail to postmaster@ each domain and to <postmaster> goes (RFC 5321 4.5.1): \"mailbox\" = kept in "
                         "the operator mailbox (mailgate emails list --postmaster), or an address the [outbound] relay forwards each message to")


@dataclass(frozen=True)
class SmtpConfig:
    host: str = _f("127.0.0.1", "address the SMTP server listens on (0.0.0.0 or :: on an MX host)")
    port: int = _f(2525, "SMTP port (25 on an MX host; 0 picks a free port)", minimum=0, maximum=65535)
    hostname: str = _f("", "name in the banner, EHLO reply and Authentication-Results; empty = this host's FQDN")
    max_message_size: int = _f(33554432, "largest message accepted, in bytes (advertised with SIZE)", minimum=1024)
    max_recipients: int = _f(50, "recipients accepted per message; more get 452 4.5.3", minimum=1)
    max_connections: int = _f(1000, "concurrent connections in all; more get 421 4.7.0 and are closed. Lowered at start to "
                              "leave a quarter of the open-files limit (at least 164 files) to the rest of the daemon", minimum=1)
    max_connections_per_client: int = _f(20, "concurrent connections from one client address; more get 421", minimum=1)
    max_unknown_recipients: int = _f(10, "unknown recipients one connection may try before it gets 421 and is closed", minimum=1)
    timeout: float = _f(300.0, "seconds the server waits for each command and for each read within DATA before it answers "
                        "421 4.4.2 and closes (RFC 5321 4.5.3.2 asks for at least 300); storing a message is not counted", minimum=1)
    min_data_rate: float = _f(1024.0, "bytes per second a sender must keep up within DATA: the whole DATA section may take "
                              "timeout + its size / min_data_rate seconds (1 MB at 1 KB/s passes with the defaults)", minimum=1)
    max_session_age: float = _f(1800.0, "seconds a connection may last; checked while it waits for a command (a DATA "
                                "in progress is bounded by timeout and min_data_rate instead)", minimum=1)
    max_junk_commands: int = _f(100, "NOOP, RSET, VRFY, EXPN and HELP commands a connection may send between two accepted "
                                "messages; one more gets 421 4.7.0 and the connection is closed", minimum=1)
    tls_cert: str = _f("", "PEM certificate chain for STARTTLS; STARTTLS is offered when this and tls_key are set")
    tls_key: str = _f("", "PEM private key for STARTTLS")
    auth_policy: Literal["record", "reject"] = _f("record", "record: keep DKIM/SPF/DMARC results; reject: also refuse DMARC failures with p=reject")
    dns_timeout: float = _f(5.0, "seconds for all DNS lookups of one message's authentication", minimum=0.1)
    dns_servers: tuple[str, ...] = _f((), "DNS servers for authentication lookups as host or host:port; empty = the system's")
    max_parts: int = _f(1000, "MIME parts parsed per message; the raw message is kept whole anyway", minimum=1)
    max_depth: int = _f(20, "MIME nesting parsed per message", minimum=1)
    max_header_bytes: int = _f(262144, "bytes of header block parsed per message; From, Subject, Message-ID, Date, the "
                               "address and MIME fields past it are still read (their first occurrence)", minimum=1024)
    max_dkim_signatures: int = _f(5, "DKIM-Signatures verified per message, in header order; the rest are recorded as "
                                  "not checked (dkim=policy) and cost no DNS query", minimum=0)
    max_dns_queries: int = _f(30, "DNS queries for one message's DKIM keys and SPF (within RFC 7208's own limits); past it "
                              "the check is a temperror. DMARC's at most two lookups always run", minimum=1)
    parse_processes: int = _f(1, "worker processes that parse and DKIM-verify messages (uses another core); 0 = in this process", minimum=0)
    parse_memory_limit: int = _f(1073741824, "bytes of memory (RLIMIT_DATA) a parse worker process may use; a message that "
                                 "needs more is stored unparsed (raw bytes kept, a defect says why) and the worker replaced; "
                                 "0 = no limit. Not applied with parse_processes = 0", minimum=0)
    parse_worker_max_rss: int = _f(268435456, "a parse worker process left with more resident memory than this many bytes "
                                   "after a message ends itself and another starts (Python keeps freed memory); 0 = never",
                                   minimum=0)
    parse_nice: int = _f(10, "nice value added to parse worker processes (0-19): under load the CPU goes first to "
                         "answering SMTP clients, the web side and actions, and parsing catches up from the queue after "
                         "(nothing changes on an idle host); 0 = the daemon's priority. Not applied with parse_processes = 0",
                         minimum=0, maximum=19)
    parse_timeout: float = _f(30.0, "seconds a worker process may spend on one message; past it the worker is replaced and the message stored unparsed (raw bytes kept, a defect says why); with parse_processes = 0 the message is stored unparsed all the same, but the parsing thread cannot be stopped and runs on unused", minimum=0.1)
    max_line_length: int = _f(65536, "longest line accepted in DATA (RFC 5321 says 1000; real mail is longer)", minimum=1001)
    process_queue: bool = _f(True, "process queued mail on this node (with the smtp or worker role): parse, authenticate, store as e-mails; false = this node only queues what it accepts, others process it")
    queue_lease: float = _f(30.0, "seconds a claim on a queued message lasts without its processor's heartbeat (renewed every third of it); "
                            "a dead node's messages are processed by another after this, a dead process's by the next daemon started on its host at once", minimum=1)
    queue_attempts: int = _f(3, "times a queued message is claimed before it is stored unparsed, with a defect saying why (its processors kept dying on it)", minimum=1)


@dataclass(frozen=True)
class WebConfig:
    host: str = _f("127.0.0.1", "address the HTTP/WebSocket server listens on")
    port: int = _f(8025, "HTTP port (0 picks a free port)", minimum=0, maximum=65535)
    public_url: str = _f("", "URL browsers reach this server at (e.g. https://help.example.org): the URLs of interview_url_action() "
                         "and the server's own origin and host name for /ws; empty = relative URLs, and pages must reach "
                         "/ws by IP address or localhost")
    api_key: str = _f("", "bearer key for /api (env MAILGATE_WEB_API_KEY); empty = the API answers 503 until one is set", secret=True)
    secret_key: str = _f("", "key that signs browser tokens and action URLs (env MAILGATE_WEB_SECRET_KEY); empty = one kept in the store", secret=True)
    allowed_origins: tuple[str, ...] = _f((), "extra origins (scheme://host[:port]) allowed to open /ws; the server's own origin always is")
    trusted_proxies: tuple[str, ...] = _f(("127.0.0.1", "::1"), "addresses or networks (e.g. 10.0.0.0/8) of reverse proxies whose "
                                          "Forwarded / X-Forwarded-Proto, -Host and -For headers are believed; from any other "
                                          "peer they are ignored")
    max_sockets_per_token: int = _f(16, "WebSockets open at once with one browser token (a page's tabs and reconnects); "
                                    "0 = no cap", minimum=0)
    max_sockets_per_address: int = _f(256, "WebSockets open at once from one client address (as forwarded by a trusted "
                                      "proxy); 0 = no cap", minimum=0)
    token_ttl: float = _f(3600.0, "seconds a browser token is valid for opening /ws", minimum=1)
    url_action_ttl: float = _f(86400.0, "seconds a URL from interview_url_action(), or an e-mail part's url_for(), stays valid",
                                minimum=1)
    checkin_interval: float = _f(6.0, "seconds between a page's periodic check-ins", minimum=0.5)
    event_history: int = _f(500, "events a reconnecting browser can catch up on, per session", minimum=1)
    event_poll_interval: float = _f(1.0, "seconds between checks for events committed by other processes", minimum=0.05)
    send_queue: int = _f(256, "messages queued for one WebSocket before the slow client is dropped", minimum=1)
    max_frame_bytes: int = _f(65536, "largest WebSocket message accepted from a browser", minimum=1024)
    max_messages_per_second: float = _f(20.0, "sustained frames per second one WebSocket may send, of every kind "
                                        "(text, binary, ping, pong), bursts up to twice that; past it the socket is closed (1008)",
                                        minimum=0.1)
    heartbeat: float = _f(20.0, "seconds of quiet before a page is pinged; one that does not answer within half that is dropped", minimum=1)
    demo_pages: bool = _f(False, "serve the demo pages under /demo (mailgate demo turns this on)")
    metrics_listen: str = _f("", "host:port of a listener that serves only /metrics and /api/openapi.json, without a key "
                             "(e.g. 127.0.0.1:9125); they are then not on the public listener. Empty = both on the "
                             "public listener, behind the API key")
    access_log: bool = _f(False, "log one line per HTTP request (event http.access: method, path without its query, "
                          "status, bytes, seconds, client)")

    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` as (host, port), or None when it is empty."""
        if not self.metrics_listen:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class SchedulerConfig:
    timezone: str = _f("UTC", "time zone of the cron expressions (an IANA name such as Europe/Paris)")
    hourly: str = _f("5 * * * *", "cron expression (minute hour day month weekday) of cron_hourly")
    daily: str = _f("15 3 * * *", "cron expression of cron_daily (which also deletes inactive sessions)")
    weekly: str = _f("30 3 * * mon", "cron expression of cron_weekly")
    monthly: str = _f("45 3 1 * *", "cron expression of cron_monthly")
    custom: tuple[str, ...] = _f((), "further scheduled types as \"name = cron expression\", e.g. \"cron_nightly = 0 1 * * *\"")
    concurrency: int = _f(16, "sessions a scheduled event runs on at the same time", minimum=1)
    page_size: int = _f(500, "sessions read from the store at a time (memory does not grow with their number)", minimum=1)


@dataclass(frozen=True)
class AutomationsConfig:
    recheck_interval: float = _f(60.0, "seconds between two evaluations of a waiting AsSoonAs condition that nothing else "
                                 "(a message, a timer) re-evaluates", minimum=0.01)
    step_budget: float = _f(0.0, "seconds one run of an automation's steps may take before it fails with StepTimeout; "
                            "0 = [sessions] lock_timeout", minimum=0)
    claim_lease: float = _f(30.0, "seconds a claimed automation stays claimed without a heartbeat; a dead runner's "
                            "automation is taken over after this", minimum=0.5)
    max_attempts: int = _f(3, "runs of an automation that end in store trouble (or whose runner died) before it is "
                           "failed with WorkerLost", minimum=1)
    concurrency: int = _f(16, "automations this process runs at the same time", minimum=1)
    timer_poll: float = _f(1.0, "seconds between two reads of the earliest due automation, for work other processes "
                           "queued", minimum=0.01)
    history_days: float = _f(30.0, "cron_daily deletes automations that ended more than this many days ago, with their "
                             "history (0 = never)", minimum=0)
    assignee_resolver: str = _f("", "\"module:function\" called with (user, step) that decides who may see and submit a "
                                "form step, instead of the assignee rule; empty = the rule")


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    interviews: InterviewsConfig = field(default_factory=InterviewsConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    web: WebConfig = field(default_factory=WebConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    automations: AutomationsConfig = field(default_factory=AutomationsConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})
    # "table.key" -> where its value came from: "default", "file PATH" or "env MAILGATE_TABLE_KEY"
    origins: typing.Mapping[str, str] = field(default_factory=dict, compare=False, metadata={"internal": True})

    def replace(self, **tables: Any) -> Config:
        """A copy with whole tables or single keys replaced: ``replace(tasks={"workers": 2})``."""
        changes: dict[str, Any] = {}
        for name, value in tables.items():
            current = getattr(self, name)
            changes[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
        origins = dict(self.origins)
        for name, value in tables.items():
            keys = value if isinstance(value, dict) else vars(value)
            origins.update({f"{name}.{key}": "set by the program" for key in keys})
        return dataclasses.replace(self, **changes, origins=origins)


def tables() -> dict[str, type]:
    """Table name -> dataclass, in file order."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if not f.metadata.get("internal")}


# MAILGATE_* variables that are not config keys, though their names look like ones
OTHER_VARIABLES = frozenset({"MAILGATE_CONFIG", "MAILGATE_WEB_DIR"})


def load_config(path: str | os.PathLike[str] | None = None, *, env: typing.Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or only defaults when None), apply ``MAILGATE_<TABLE>_<KEY>`` variables and
    validate the result; ConfigError lists every problem at once (``errors``)."""
    config, errors = load_config_with_errors(path, env=env)
    if errors:
        raise ConfigError("\n".join(errors), errors)
    return config


def load_config_with_errors(path: str | os.PathLike[str] | None = None, *,
                            env: typing.Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """The config and every problem found in it (``mailgate check-config`` goes on to check the
    host with it); a key in error keeps its default. ConfigError only for a file that cannot be
    read or parsed at all."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the config file: {exc.strerror or exc}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: the config file is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    errors: list[str] = []
    known = tables()
    for name in data:
        if name not in known:
            errors.append(f"{source}: unknown table [{name}]; known tables: {', '.join(known)}")
    errors += _unknown_variables(env, known)
    built: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, cls in known.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            errors.append(f"{source}: [{name}] must be a table, not a {type(section).__name__}")
            section = {}
        built[name] = _build_table(cls, name, section, source, env, errors, origins)
    if path is not None and origins["store.path"].startswith("file ") and not os.path.isabs(built["store"].path):
        # a path written in a file means a place next to that file, wherever the command runs
        folder = os.path.dirname(os.path.abspath(path))
        built["store"] = dataclasses.replace(built["store"], path=os.path.join(folder, built["store"].path))
    config = Config(**built, source=source, origins=origins)
    if not errors:  # cross-checks of values that failed would only repeat the first error
        errors += _check_cross(config)
    return config, errors


def _unknown_variables(env: typing.Mapping[str, str], known: dict[str, type]) -> list[str]:
    """A ``MAILGATE_<TABLE>_...`` variable that names no key would be ignored in silence: an error."""
    errors = []
    for var in env:
        table, _, key = var.removeprefix("MAILGATE_").partition("_")
        if not var.startswith("MAILGATE_") or var in OTHER_VARIABLES or table.lower() not in known:
            continue
        keys = [f.name for f in dataclasses.fields(known[table.lower()])]
        if key.lower() not in keys:
            errors.append(f"environment: {var} names no key of [{table.lower()}]; known keys: {', '.join(keys)}")
    return errors


def _build_table(cls: type, name: str, section: dict[str, Any], source: str, env: typing.Mapping[str, str],
                 errors: list[str] | None = None, origins: dict[str, str] | None = None) -> Any:
    """One table from its file section and the environment; its errors go to ``errors`` (raised
    here when None), each value's origin to ``origins``."""
    if errors is None:
        found: list[str] = []
        table = _build_table(cls, name, section, source, env, found, origins)
        if found:
            raise ConfigError("\n".join(found), found)
        return table
    origins = {} if origins is None else origins
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in section:
        if key not in fields:
            errors.append(f"{source}: [{name}] unknown key {key!r}; known keys: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        env_name = f"MAILGATE_{name.upper()}_{key.upper()}"
        origins[f"{name}.{key}"] = "default"
        try:
            if env.get(env_name):  # an empty variable (a placeholder in an EnvironmentFile) is no value
                where = f"environment: {env_name}"
                value = _coerce(_from_env(env[env_name], hints[key], where), hints[key], where)
                origin = f"env {env_name}"
            elif key in section:
                where = f"{source}: [{name}] {key}"
                value = _coerce(section[key], hints[key], where)
                origin = f"file {source}"
            else:
                continue
            _check_range(value, f, where)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        values[key] = value
        origins[f"{name}.{key}"] = origin
    return cls(**values)


def _check_range(value: Any, f: dataclasses.Field[Any], where: str) -> None:
    minimum, maximum = f.metadata.get("minimum"), f.metadata.get("maximum")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} = {value!r} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{where} = {value!r} is above the maximum {maximum}")


def _from_env(raw: str, hint: Any, where: str) -> Any:
    """An environment variable's text as the value a TOML file would give: numbers and booleans
    parsed, lists as TOML (``["a", "b"]``) or comma-separated (``a,b``), text as it is."""
    if hint is str or get_origin(hint) is Literal:
        return raw
    if get_origin(hint) is tuple and not raw.lstrip().startswith("["):
        return [item.strip() for item in raw.split(",") if item.strip()]
    lowered = raw.strip().lower()
    if hint is bool and lowered in ("1", "yes", "on", "0", "no", "off"):
        return lowered in ("1", "yes", "on")
    try:
        return tomllib.loads(f"v = {raw.strip() if hint is not bool else lowered}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"{where} = {raw!r} is not a valid {getattr(hint, '__name__', 'list')}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r} is not one of: {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        (item,) = get_args(hint)[:1]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, not {type(value).__name__} {value!r}")
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{where}: unsupported type")  # no union-typed keys exist
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint!r}")  # pragma: no cover - a bug in this module


def _check_cross(config: Config) -> list[str]:
    src = config.source
    errors = []
    for role in config.daemon.roles:
        if role not in ROLES:
            errors.append(f"{src}: [daemon] roles: unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not config.mail.domains:
        errors.append(f"{src}: [mail] domains is empty; name at least one domain this host receives mail for")
    for domain in config.mail.domains:
        try:
            domain.encode("idna")
        except UnicodeError:
            errors.append(f"{src}: [mail] domains: {domain!r} is not a valid domain name")
    postmaster = config.mail.postmaster.strip()
    if postmaster != "mailbox":
        local, at, domain = postmaster.rpartition("@")
        if not at or not local or not domain or any(c in postmaster for c in " <>,\r\n\t"):
            errors.append(f"{src}: [mail] postmaster = {postmaster!r} must be \"mailbox\" or one e-mail address (user@domain)")
        elif not config.outbound.relay_host and not config.outbound.suppress:
            errors.append(f"{src}: [mail] postmaster forwards to {postmaster} but no [outbound] relay_host is set")
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        errors.append(f"{src}: [smtp] tls_cert and tls_key must be set together (STARTTLS needs both)")
    try:
        check_outbound(config.outbound, src, files=False)  # the DKIM key and CA file are read when the daemon starts
    except ConfigError as exc:
        errors.append(str(exc))
    try:
        _check_web(config.web, src)
    except ConfigError as exc:
        errors.append(str(exc))
    for setting, key in [("encryption_key", config.store.encryption_key)] + [
            (f"old_encryption_keys (entry {n})", k) for n, k in enumerate(config.store.old_encryption_keys, 1)]:
        try:
            if key:
                decode_key(key, f"{src}: [store] {setting}")
        except ConfigError as exc:
            errors.append(str(exc))
    if config.store.encryption_key and config.store.encryption_key_file:
        errors.append(f"{src}: [store] encryption_key and encryption_key_file are both set; set one of them")
    if config.store.old_encryption_keys and not (config.store.encryption_key or config.store.encryption_key_file):
        errors.append(f"{src}: [store] old_encryption_keys is set without encryption_key: set the current key "
                      "(old keys only read rows during a rotation)")
    resolver = config.automations.assignee_resolver
    if resolver and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", resolver):
        errors.append(f"{src}: [automations] assignee_resolver {resolver!r} must be \"module:function\", "
                      "e.g. \"myapp.forms:may_submit\"")
    if config.store.backend == "postgres" and not config.store.dsn:
        errors.append(f"{src}: [store] backend is postgres but dsn is empty; set it or MAILGATE_STORE_DSN")
    return errors


def decode_key(text: str, setting: str) -> bytes:
    """An encryption key as configured: base64 (standard or URL-safe) of exactly 32 bytes; ConfigError
    naming ``setting`` otherwise."""
    value = text.strip()
    try:
        raw = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{setting} is not a key: it must be the base64 of 32 random bytes "
                          "(make one with: head -c 32 /dev/urandom | base64)")
    return raw


def _check_web(web: WebConfig, src: str) -> None:
    if web.public_url:
        parts = urlsplit(web.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{src}: [web] public_url {web.public_url!r} must be an http:// or https:// URL with a host name")
    for origin in web.allowed_origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"{src}: [web] allowed_origins: {origin!r} is not an origin (scheme://host[:port])")
    for entry in web.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"{src}: [web] trusted_proxies: {entry!r} is not an IP address or network") from None
    if web.metrics_listen:
        host, _, port = web.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{src}: [web] metrics_listen = {web.metrics_listen!r} is not host:port "
                              "(e.g. 127.0.0.1:9125, [::1]:9125)")


def find_config_path(explicit: str | None) -> str | None:
    """The config file to use: the given one, ``$MAILGATE_CONFIG``, or ``./mailgate.toml`` if present."""
    if explicit:
        return explicit
    if os.environ.get("MAILGATE_CONFIG"):
        return os.environ["MAILGATE_CONFIG"]
    return "mailgate.toml" if Path("mailgate.toml").exists() else None


def effective(config: Config) -> dict[str, dict[str, tuple[Any, str]]]:
    """Every key of every table: (its value, where it came from); a secret that is set shows as
    ``********``."""
    shown: dict[str, dict[str, tuple[Any, str]]] = {}
    for name in tables():
        table = getattr(config, name)
        shown[name] = {}
        for f in dataclasses.fields(table):
            value = getattr(table, f.name)
            if f.metadata.get("secret") and value:
                value = "********"
            shown[name][f.name] = (value, config.origins.get(f"{name}.{f.name}", "default"))
    return shown


def toml_value(value: Any) -> str:
    """``value`` as TOML source text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)  # pragma: no cover


def render_example() -> str:
    """The text of ``config.example.toml``: every key with its default and its explanation."""
    lines = [
        "# mailgate configuration: every key, with its default and what it does.",
        "# Copy to /etc/mailgate/mailgate.toml (or ./mailgate.toml) and change what you need;",
        "# keys you leave out keep these defaults. Check a file with: mailgate check-config PATH",
    ]
    for name, cls in tables().items():
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            lines.append(f"# {f.metadata['doc']}")
            # written out, the default would mean a file next to this one (/etc/mailgate, read-only
            # under the unit); left out, it is the working directory (the unit's /var/lib/mailgate)
            commented = "# " if (name, f.name) == ("store", "path") else ""
            lines.append(f"{commented}{f.name} = {toml_value(default)}")
    return "\n".join(lines) + "\n"
