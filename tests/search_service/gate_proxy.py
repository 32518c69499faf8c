"""A test gate in front of the real TorchServe: holds every embedding request until released,
counting how many wait at once, then forwards each to the real server and returns its answer.

It changes no answer, only when answers come: a test can then see how many searches reach the
model server together, and what the page does while they wait (no clock in the assertion).
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Gate:
    def __init__(self, upstream: str):
        self.upstream = upstream
        self.opened = threading.Event()
        self.condition = threading.Condition()
        self.waiting = 0
        self.most_waiting = 0

    def wait_for(self, count: int, timeout: float) -> bool:
        """Whether `count` requests came to wait at the gate together within `timeout` s."""
        with self.condition:
            return self.condition.wait_for(lambda: self.waiting >= count, timeout)

    def hold(self) -> None:
        with self.condition:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            self.condition.notify_all()
        self.opened.wait(timeout=300)
        with self.condition:
            self.waiting -= 1


@contextmanager
def gate_in_front_of(upstream: str, port: int) -> Iterator[tuple[Gate, str]]:
    """A gate on 127.0.0.1:`port` forwarding to `upstream` (a /predictions/<model> URL); its URL."""
    gate = Gate(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as TorchServe

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            gate.hold()
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
            headers["Content-Type"] = self.headers.get("Content-Type", "application/octet-stream")
            request = urllib.request.Request(gate.upstream, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, answer, reply_headers = response.status, response.read(), response.headers
            except urllib.error.HTTPError as error:
                status, answer, reply_headers = error.code, error.read(), error.headers
            self.send_response(status)
            for name in ("Content-Type", "X-Embedding-Dim", "X-Model-Version"):
                if reply_headers.get(name):
                    self.send_header(name, reply_headers[name])
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gate, f"http://127.0.0.1:{port}/predictions/cars"
    finally:
        gate.opened.set()
        server.shutdown()
        server.server_close()
