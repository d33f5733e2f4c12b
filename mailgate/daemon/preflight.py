"""What can go wrong on this host before the daemon serves: files, addresses, ports, the store.

``check_host`` is what ``mailgate check-config`` adds to loading the file: every problem it finds,
one line each, all at once. The daemon's start uses the same translations, so a start-up failure
is one line that names what failed and what to do, never a traceback.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
import sys
from pathlib import Path

from mailgate.config import Config
from mailgate.errors import ConfigError, MailgateError
from mailgate.outbound.transport import check_outbound
from mailgate.store.sealing import keyring_from

PRIVILEGED_PORTS = 1024  # below this, binding needs CAP_NET_BIND_SERVICE (or root)


class StartupError(MailgateError):
    """The daemon cannot start on this host as configured (a port, an address, a file)."""


def listen_error(table: str, host: str, port: int | None, exc: OSError) -> StartupError:
    """One line for a failure to listen on ``host:port`` (``port`` None: on ``host`` at all), with
    what to do about it."""
    where = f"[{table}] cannot listen on {host}" + ("" if port is None else f":{port}")
    if isinstance(exc, socket.gaierror):
        return StartupError(f"{where}: {host!r} is not an address or a name this host resolves ({exc.strerror}); "
                            f"set [{table}] host to one of this host's addresses, or 0.0.0.0 / :: for all")
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{where}: the port is in use by another process (see: ss -ltnp 'sport = :{port}'); "
                            f"stop it or set [{table}] port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"{where}: {host} is not an address of this host (see: ip -brief address); "
                            f"set [{table}] host to one of them, or 0.0.0.0 / :: for all")
    if exc.errno in (errno.EACCES, errno.EPERM) and port is not None and 0 < port < PRIVILEGED_PORTS:
        return StartupError(f"{where}: permission denied: ports below {PRIVILEGED_PORTS} need CAP_NET_BIND_SERVICE; "
                            "run mailgate under its systemd unit (AmbientCapabilities=CAP_NET_BIND_SERVICE), or grant "
                            f"it to the interpreter: setcap cap_net_bind_service=+ep {os.path.realpath(sys.executable)}")
    return StartupError(f"{where}: {exc.strerror or exc}")


def load_tls(cert: str, key: str) -> None:
    """Load the STARTTLS certificate and key once to check them; ConfigError naming the file (ssl's
    own error names neither)."""
    for what, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            Path(path).open("rb").close()
        except OSError as exc:
            raise ConfigError(f"[smtp] {what} = {path!r}: cannot read it: {exc.strerror or exc}; check the path "
                              "and that the daemon's user may read it") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"[smtp] tls_cert = {cert!r}, tls_key = {key!r}: not a PEM certificate chain and its "
                          f"private key ({reason}); check that the two files belong together") from None


def require_store(config: Config) -> None:
    """A command that reads or changes the store must find one: it never creates an empty one."""
    if config.store.backend != "sqlite" or os.path.exists(config.store.path):
        return
    where = f"[store] path in {config.source}" if config.source != "<defaults>" else "the default [store] path"
    raise MailgateError(f"no SQLite store at {os.path.abspath(config.store.path)} ({where}); check the path "
                        "(a relative one in a config file is relative to that file), or create the store with: "
                        "mailgate db migrate")


def check_host(config: Config) -> list[str]:
    """Every problem of ``config`` on this host: unreadable or loose files, addresses this host does
    not have, clashing ports. Checked as the user who runs it (run it as the daemon's user)."""
    errors: list[str] = []
    roles = config.daemon.roles
    if "smtp" in roles and config.smtp.tls_cert:
        errors += _check_private_file("[smtp] tls_key", config.smtp.tls_key)
        try:
            load_tls(config.smtp.tls_cert, config.smtp.tls_key)
        except ConfigError as exc:
            errors.append(str(exc))
    if config.outbound.dkim_key_file:
        errors += _check_private_file("[outbound] dkim_key_file", config.outbound.dkim_key_file)
    try:
        check_outbound(config.outbound, files=True)
    except ConfigError as exc:
        errors.append(str(exc))
    if config.store.encryption_key_file:
        errors += _check_private_file("[store] encryption_key_file", config.store.encryption_key_file)
        try:
            keyring_from(config.store)
        except ConfigError as exc:
            errors.append(str(exc))
    for path in config.interviews.paths:
        if not os.path.isfile(path):
            errors.append(f"[interviews] paths: no file {path}")
    errors += _check_store_folder(config)
    listeners = [(t, c.host, c.port) for t, c in (("smtp", config.smtp), ("web", config.web)) if t in roles]
    for table, host, _ in listeners:
        error = _check_address(table, host)
        if error:
            errors.append(error)
    if len(listeners) == 2 and listeners[0][1:] == listeners[1][1:] and listeners[0][2] != 0:
        errors.append(f"[smtp] and [web] both listen on {listeners[0][1]}:{listeners[0][2]}; give them different ports")
    return errors


def _check_private_file(what: str, path: str) -> list[str]:
    """A private key that every user may read; a missing or unreadable one its loader reports."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if mode & stat.S_IROTH:
        return [f"{what} = {path!r} is readable by every user (mode {stat.S_IMODE(mode):04o}); chmod o-rwx {path}"]
    return []


def _check_store_folder(config: Config) -> list[str]:
    if config.store.backend != "sqlite":
        return []
    path = Path(config.store.path)
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return [f"[store] path = {str(path)!r}: not readable and writable by this user (uid {os.getuid()})"]
        return []
    folder = path.parent
    if not folder.is_dir():
        return [f"[store] path = {str(path)!r}: the folder {folder} does not exist"]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"[store] path = {str(path)!r}: this user (uid {os.getuid()}) cannot create files in {folder}"]
    return []


def _check_address(table: str, host: str) -> str | None:
    """Bind to ``host`` on a free port: an address this host does not have fails the same way the
    daemon's start would, without taking the configured port (a running daemon may hold it)."""
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return str(listen_error(table, host, None, exc))
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind(address)
            except OSError as exc:
                return str(listen_error(table, host, None, exc))
    return None
