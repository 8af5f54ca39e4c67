"""A real HTTP server on 127.0.0.1 for tests: files to serve plus a few misbehaving routes.

Routes:
    /files/<name>        the bytes registered under ``name`` (status 200)
    /status/<code>       an empty answer with that status
    /flaky/<n>/<name>    status 500 for the first ``n`` requests to this path, then the file
    /slow/<seconds>/<name>  waits before answering
    /truncated/<name>    declares the full length but sends half the body, then closes
    /redirect/<n>/<name> a chain of ``n`` 302 redirects ending at /files/<name>
    /limited/<n>/<name>  status 429 (with Retry-After) for the first ``n`` requests to this path, then the file

Files are sent with the ``Content-Type`` registered in ``ServerState.types`` (default
``application/octet-stream``), so a test can serve a web page at a ``.txt`` URL.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default stderr log
        return

    def _send(self, status: int, body: bytes, length: int | None = None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.state.hits[self.path] += 1
        parts = self.path.strip("/").split("/")
        kind = parts[0]
        if kind == "files" and parts[1] in self.state.files:
            content_type = self.state.types.get(parts[1], "application/octet-stream")
            self._send(200, self.state.files[parts[1]], headers={"Content-Type": content_type})
        elif kind == "redirect":
            left, name = int(parts[1]), parts[2]
            target = f"/redirect/{left - 1}/{name}" if left > 1 else f"/files/{name}"
            self._send(302, b"", headers={"Location": target})
        elif kind == "limited":
            failures, name = int(parts[1]), parts[2]
            if self.state.hits[self.path] <= failures:
                self._send(429, b"slow down", headers={"Retry-After": "0"})
            else:
                self._send(200, self.state.files[name])
        elif kind == "status":
            self._send(int(parts[1]), b"")
        elif kind == "flaky":
            failures, name = int(parts[1]), parts[2]
            if self.state.hits[self.path] <= failures:
                self._send(500, b"try again")
            else:
                self._send(200, self.state.files[name])
        elif kind == "slow":
            time.sleep(float(parts[1]))
            self._send(200, self.state.files[parts[2]])
        elif kind == "truncated":
            body = self.state.files[parts[1]]
            self._send(200, body[: len(body) // 2], length=len(body))
            self.close_connection = True
        else:
            self._send(404, b"not found")


@contextmanager
def serve(files: dict[str, bytes] | None = None) -> Iterator[tuple[str, ServerState]]:
    """Run the server in a thread; yield its base URL (``http://127.0.0.1:PORT``) and its state."""
    state = ServerState(files=dict(files or {}))
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
