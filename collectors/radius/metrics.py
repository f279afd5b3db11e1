"""Prometheus text exposition of the collector's counters over HTTP (``GET /metrics``).

The receive loop owns plain dicts of numbers and updates them without locks; the HTTP
thread renders a copy (``dict.copy`` is atomic under the GIL).
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger(__name__)

Render = Callable[[], str]


class MetricsServer:
    """Serves ``render()`` at ``/metrics`` from a daemon thread."""

    def __init__(self, bind: tuple[str, int], render: Render) -> None:
        handler = type("Handler", (_Handler,), {"render": staticmethod(render)})
        self._httpd = ThreadingHTTPServer(bind, handler)
        self._httpd.daemon_threads = True
        self.address = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    render: Render

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = self.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("metrics: " + format, *args)


def render_family(name: str, kind: str, help_text: str,
                  samples: list[tuple[dict[str, str], float]]) -> str:
    """One metric family in the text format."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        if labels:
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value:g}" if isinstance(value, float)
                         else f"{name}{{{label_text}}} {value}")
        else:
            lines.append(f"{name} {value:g}" if isinstance(value, float)
                         else f"{name} {value}")
    return "\n".join(lines) + "\n"
