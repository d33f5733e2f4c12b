"""The one-line messages of start-up failures that the e2e tests cannot provoke (they run as root)."""

from __future__ import annotations

import errno
import socket

from mailgate.daemon.preflight import listen_error


def test_permission_denied_on_port_25_names_the_capability_and_setcap() -> None:
    message = str(listen_error("smtp", "0.0.0.0", 25, PermissionError(errno.EACCES, "Permission denied")))
    assert message.startswith("[smtp] cannot listen on 0.0.0.0:25: permission denied")
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in message and "setcap cap_net_bind_service=+ep /" in message
    assert "\n" not in message


def test_permission_denied_on_a_high_port_is_not_about_capabilities() -> None:
    message = str(listen_error("web", "127.0.0.1", 8025, PermissionError(errno.EACCES, "Permission denied")))
    assert message == "[web] cannot listen on 127.0.0.1:8025: Permission denied"


def test_a_name_that_does_not_resolve() -> None:
    exc = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    message = str(listen_error("web", "mx.invalid", 8025, exc))
    assert "'mx.invalid' is not an address or a name this host resolves" in message
