"""Prometheus scrape endpoint plus liveness and readiness probes, on one small HTTP server.

Runs on its own thread so a scrape never waits on the event loop; the probes ask callables that
the service keeps current (liveness: its loop ticked recently; readiness: brokers connected and
the engine loaded).
"""

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Endpoints:
    def __init__(
        self,
        host: str,
        port: int,
        live: Callable[[], bool],
        ready: Callable[[], bool],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._live, self._ready, self._registry = live, ready, registry
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoints._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            status, body, ctype = 200, generate_latest(self._registry), CONTENT_TYPE_LATEST
        elif path in ("/healthz", "/livez"):
            ok = self._live()
            status, body, ctype = (200 if ok else 503), (b"ok" if ok else b"stalled"), "text/plain"
        elif path == "/readyz":
            ok = self._ready()
            status, body, ctype = (
                (200 if ok else 503),
                (b"ready" if ok else b"not ready"),
                "text/plain",
            )
        else:
            status, body, ctype = 404, b"not found: try /metrics, /healthz, /readyz", "text/plain"
        request.send_response(status)
        request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def start(self) -> "Endpoints":
        self._thread.start()
        log.info(
            "metrics and probes on http://%s:%d (/metrics /healthz /readyz)",
            *self._server.server_address[:2],
        )
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
