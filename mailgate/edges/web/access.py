"""The optional HTTP access log (``[web] access_log``): one line per request, event ``http.access``.

The path is logged without its query (a WebSocket's ``?token=``) and a ``/run/<token>`` URL as
``/run/-``: both carry credentials, which never reach the log. The log formats escape what else a
client may have put in the path.
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse


def logged_path(path: str) -> str:
    """``path`` fit for the log: no signed token, at most 256 characters."""
    if path.startswith("/run/"):
        return "/run/-"
    return path if len(path) <= 256 else path[:256] + "..."


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = logged_path(request.path)
        self.logger.info("%s %s %s %d %d bytes %.3f s", request.remote, request.method, path, response.status,
                         response.body_length, time,
                         extra={"event": "http.access", "peer": request.remote, "method": request.method, "path": path,
                                "status": response.status, "bytes": response.body_length, "seconds": round(time, 6)})
