"""The optional HTTP access log (``[web] access_log``): one line per request, event ``http.access``.

The path is logged without its query (a WebSocket's ``?token=``), a ``/run/<token>`` URL as
``/run/-`` and a ``/file/<token>`` URL (an e-mail part's ``url_for()``) as ``/file/-``: they carry
credentials, which never reach the log (the error lines of the API log paths through it too). The log formats escape what else a
client may have put in the path.
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

SIGNED_PATHS = ("/run/", "/file/")  # the rest of the path is a signed token: whoever has it is let in


def logged_path(path: str) -> str:
    """``path`` fit for the log: no signed token, at most 256 characters."""
    for signed in SIGNED_PATHS:
        if path.startswith(signed):
            return f"{signed}-"
    return path if len(path) <= 256 else path[:256] + "..."


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = logged_path(request.path)
        self.logger.info("%s %s %s %d %d bytes %.3f s", request.remote, request.method, path, response.status,
                         response.body_length, time,
                         extra={"event": "http.access", "peer": request.remote, "method": request.method, "path": path,
                                "status": response.status, "bytes": response.body_length, "seconds": round(time, 6)})
