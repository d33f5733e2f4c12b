"""Counters for ``/metrics`` (Prometheus text exposition format)."""

from __future__ import annotations

import gc
from dataclasses import dataclass


@dataclass
class Metrics:
    ws_connections: int = 0
    checkins: int = 0
    checkin_errors: int = 0
    events_pushed: int = 0
    slow_clients_dropped: int = 0
    http_requests: int = 0


def exposition(metrics: Metrics, tasks: dict[str, int], emails_received: int, emails_rejected: dict[str, int],
               inbound_queued: int = 0) -> str:
    lines = [
        "# HELP mailgate_ws_connections Open browser WebSocket connections.",
        "# TYPE mailgate_ws_connections gauge",
        f"mailgate_ws_connections {metrics.ws_connections}",
        "# HELP mailgate_checkins_total Check-ins run.",
        "# TYPE mailgate_checkins_total counter",
        f"mailgate_checkins_total {metrics.checkins}",
        "# HELP mailgate_checkin_errors_total Check-ins that ended in an error.",
        "# TYPE mailgate_checkin_errors_total counter",
        f"mailgate_checkin_errors_total {metrics.checkin_errors}",
        "# HELP mailgate_events_pushed_total Events sent to browsers.",
        "# TYPE mailgate_events_pushed_total counter",
        f"mailgate_events_pushed_total {metrics.events_pushed}",
        "# HELP mailgate_slow_clients_dropped_total WebSockets closed because they did not keep up.",
        "# TYPE mailgate_slow_clients_dropped_total counter",
        f"mailgate_slow_clients_dropped_total {metrics.slow_clients_dropped}",
        "# HELP mailgate_tasks Background tasks by state.",
        "# TYPE mailgate_tasks gauge",
        *(f'mailgate_tasks{{state="{state}"}} {n}' for state, n in sorted(tasks.items())),
        "# HELP mailgate_emails_received_total E-mails stored (one per recipient mailbox) by this process.",
        "# TYPE mailgate_emails_received_total counter",
        f"mailgate_emails_received_total {emails_received}",
        "# HELP mailgate_emails_rejected_total Recipients or messages refused, by reason.",
        "# TYPE mailgate_emails_rejected_total counter",
        *(f'mailgate_emails_rejected_total{{reason="{reason}"}} {n}' for reason, n in sorted(emails_rejected.items())),
        "# HELP mailgate_inbound_queue Messages answered 250 and not yet stored as e-mails (all nodes).",
        "# TYPE mailgate_inbound_queue gauge",
        f"mailgate_inbound_queue {inbound_queued}",
        *_gc_lines(),
    ]
    return "\n".join(lines) + "\n"


def _gc_lines() -> list[str]:
    """The garbage collector's work, under the names of the Prometheus Python client."""
    stats = list(enumerate(gc.get_stats()))
    return [
        "# HELP python_gc_collections_total Times the garbage collector ran, by generation.",
        "# TYPE python_gc_collections_total counter",
        *(f'python_gc_collections_total{{generation="{g}"}} {s["collections"]}' for g, s in stats),
        "# HELP python_gc_objects_collected_total Objects the garbage collector freed, by generation.",
        "# TYPE python_gc_objects_collected_total counter",
        *(f'python_gc_objects_collected_total{{generation="{g}"}} {s["collected"]}' for g, s in stats),
    ]
