"""The process's Prometheus metrics: the one module that imports prometheus_client.

The core and the edges record what happens here (one call where it happens); the web edge serves
:func:`exposition` at ``/metrics``. The metrics live in prometheus_client's default registry, which
also holds its process (``process_*``), platform (``python_info``) and garbage-collector
(``python_gc_*``) collectors, so one process has one set, shared by every daemon it runs (tests run
several: they compare values before and after). A scrape reads nothing from the store but the
runnable tasks, through their partial index (:func:`set_task_queue`); every other value is counted
as it happens. The README's "Metrics" table lists every name; a test keeps the two in step.
"""

from __future__ import annotations

import sys
import time
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no *_created series: a scrape carries the values, not when each series began

# Seconds: a check-in or an SMTP commit takes milliseconds, a background action up to [tasks] timeout.
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

BUILD_INFO = Gauge("mailgate_build_info", "Always 1; the labels name the running version.", ["version", "python"])
try:
    _VERSION = version("mailgate")  # not ``mailgate.__version__``: importing the package from here is a cycle
except PackageNotFoundError:  # a source tree on sys.path, not installed
    _VERSION = "unknown"
BUILD_INFO.labels(_VERSION, ".".join(map(str, sys.version_info[:3]))).set(1)

# -- background tasks --------------------------------------------------------------------------------
TASK_START_LATENCY = Histogram("mailgate_task_start_latency_seconds",
                               "From a task's creation to a worker claiming it.", buckets=_SLOW)
TASK_DURATION = Histogram("mailgate_task_duration_seconds",
                          "From a worker claiming a task to its outcome committed.", buckets=_SLOW)
TASKS_FINISHED = Counter("mailgate_tasks_finished_total", "Tasks this process finished, by outcome.", ["state"])
TASKS = Gauge("mailgate_tasks", "Runnable tasks in the store, by state (queued, running).", ["state"])
TASK_OLDEST_AGE = Gauge("mailgate_task_oldest_queued_age_seconds",
                        "Age of the oldest queued task (0 when none is queued).")

# -- SMTP --------------------------------------------------------------------------------------------
SMTP_ACCEPT = Histogram("mailgate_smtp_accept_seconds",
                        "From the end of a message's DATA to mailgate's reply.", buckets=_FAST)
SMTP_COMMIT = Histogram("mailgate_smtp_commit_seconds",
                        "The store's commit of one received message (all its recipients).", buckets=_FAST)
INBOUND_QUEUE = Gauge("mailgate_inbound_queue", "Received messages answered 250 and not processed into e-mails yet.")
SMTP_REPLIES = Counter("mailgate_smtp_replies_total", "SMTP replies sent, by code.", ["code"])
EMAILS_RECEIVED = Counter("mailgate_emails_received_total",
                          "E-mails stored (one per recipient mailbox) by this process.")
EMAILS_REJECTED = Counter("mailgate_emails_rejected_total", "Recipients or messages refused, by reason.",
                          ["reason"])
AUTH_RESULTS = Counter("mailgate_auth_results_total",
                       "DKIM (one per signature), SPF and DMARC results of received messages.", ["method", "result"])

# -- outbound mail -----------------------------------------------------------------------------------
OUTBOUND = Counter("mailgate_outbound_messages_total",
                   "Outbound messages by result: sent, partial (some recipients refused), failed.", ["result"])

# -- browsers ----------------------------------------------------------------------------------------
WS_CONNECTIONS = Gauge("mailgate_ws_connections", "Open browser WebSocket connections.")
CHECKINS = Counter("mailgate_checkins_total", "Check-ins run.")
CHECKIN_ERRORS = Counter("mailgate_checkin_errors_total", "Check-ins that ended in an error.")
EVENTS_PUSHED = Counter("mailgate_events_pushed_total", "Events sent to browsers.")
PUSH_LATENCY = Histogram("mailgate_push_latency_seconds",
                         "From an event's commit to its hand-off to the open pages of its session.", buckets=_FAST)
HTTP_REQUESTS = Counter("mailgate_http_requests_total", "HTTP requests the web listeners answered.")
SLOW_CLIENTS_DROPPED = Counter("mailgate_slow_clients_dropped_total",
                               "WebSockets closed because they did not keep up.")

# -- scheduled tasks ---------------------------------------------------------------------------------
CRON_LAST_SUCCESS = Gauge("mailgate_cron_last_success_timestamp_seconds",
                          "When this process last finished a fire of each scheduled type (Unix time).", ["type"])

# -- automations -------------------------------------------------------------------------------------
AUTOMATIONS = Gauge("mailgate_automations", "Automations in the store by state (read by the runner every 30 s).",
                    ["state"])
AUTOMATIONS_ENDED = Counter("mailgate_automations_ended_total",
                            "Automations this process ended, by state (finished, failed).", ["state"])
AUTOMATION_STEPS = Counter("mailgate_automation_steps_total",
                           "Steps this process ended, by outcome (done, skipped, failed, joined).", ["outcome"])
AUTOMATION_MESSAGES = Counter("mailgate_automation_messages_total",
                              "Messages this process consumed for automations, by outcome (delivered, dropped).",
                              ["outcome"])
AUTOMATION_TIMER_LATENESS = Histogram("mailgate_automation_timer_lateness_seconds",
                                      "From a step's wake_at to a runner taking it up.", buckets=_FAST)
AUTOMATION_RUN_SECONDS = Histogram("mailgate_automation_run_seconds",
                                   "One run of one automation's due steps (the engine, step code included).",
                                   buckets=_FAST)
AUTOMATIONS_DUE = Gauge("mailgate_automations_due",
                        "Running automations due now, claimed ones included (read by the runner every second).")
AUTOMATION_DUE_LAG = Gauge("mailgate_automation_due_lag_seconds",
                           "How long the earliest due automation has been due (0: none due): the backlog.")

for _state in ("running", "finished", "failed", "killed"):
    AUTOMATIONS.labels(_state)
for _state in ("finished", "failed"):
    AUTOMATIONS_ENDED.labels(_state)
for _state in ("done", "skipped", "failed", "joined"):
    AUTOMATION_STEPS.labels(_state)
for _state in ("delivered", "dropped"):
    AUTOMATION_MESSAGES.labels(_state)
for _state in ("queued", "running"):
    TASKS.labels(_state)
for _state in ("succeeded", "failed"):
    TASKS_FINISHED.labels(_state)


def count_auth(dkim: tuple[str, ...], spf: str, dmarc: str) -> None:
    """Count one received message's authentication results."""
    for result in dkim or ("none",):
        AUTH_RESULTS.labels("dkim", result).inc()
    AUTH_RESULTS.labels("spf", spf).inc()
    AUTH_RESULTS.labels("dmarc", dmarc).inc()


def set_inbound_queue(depth: int) -> None:
    """The inbound queue's depth, read just before a scrape (the table holds only waiting messages)."""
    INBOUND_QUEUE.set(depth)


def set_task_queue(queued: int, running: int, oldest_created: float | None) -> None:
    """The runnable-task gauges, from :meth:`Store.task_queue` read just before a scrape."""
    TASKS.labels("queued").set(queued)
    TASKS.labels("running").set(running)
    TASK_OLDEST_AGE.set(max(0.0, time.time() - oldest_created) if oldest_created is not None else 0.0)


def sample(name: str, **labels: str) -> float:
    """The current value of one sample (0 when it has none yet): for tests and the CLI."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def exposition() -> bytes:
    """Every metric of this process in the Prometheus text format."""
    return generate_latest(REGISTRY)
