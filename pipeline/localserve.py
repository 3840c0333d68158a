"""Serve a folder over HTTP on 127.0.0.1, for tests and the demo (the download stage needs URLs)."""

from __future__ import annotations

import collections
import functools
import http.server
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# A route answers one GET itself: route(handler) with the standard BaseHTTPRequestHandler API
# (send_response, send_header, end_headers, wfile) and the server's request counts.
Route = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class LocalServer:
    host: str
    port: int
    # GET requests per path (query strings included), counted before answering.
    requests: collections.Counter = field(default_factory=collections.Counter)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server_state: LocalServer
    routes: dict[str, Route]
    lock: threading.Lock

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        with self.lock:
            self.server_state.requests[self.path] += 1
        route = self.routes.get(self.path.split("?", 1)[0])
        try:
            if route is not None:
                route(self)
            else:
                super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test, say): nothing to answer to.
            log.debug("client of %s went away", self.path)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server API
        log.debug("%s %s", self.address_string(), format % args)


@contextmanager
def serve_folder(
    root: str, port: int = 0, host: str = "127.0.0.1", routes: dict[str, Route] | None = None
) -> Iterator[LocalServer]:
    """Serve `root` at http://host:port/ (port 0: an ephemeral one) in a background thread.

    `routes` maps paths ("/slow.jpg") to handlers that answer instead of the file system.
    Each request runs in its own daemon thread, so a slow route never blocks shutdown.
    """
    state = LocalServer(host, port)
    handler = type(
        "Handler", (_Handler,), {"server_state": state, "routes": dict(routes or {}), "lock": threading.Lock()}
    )
    server = http.server.ThreadingHTTPServer((host, port), functools.partial(handler, directory=root))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name=f"serve-{state.port}", daemon=True)
    thread.start()
    log.info("serving %s at %s", root, state.base_url)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
