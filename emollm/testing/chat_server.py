"""A local OpenAI-compatible chat endpoint with scripted replies, for tests of the LLM clients
(reasoning writers, visual describer, EMER judge) without any model or network.

>>> class Echo(ScriptedChatServer):
...     def respond(self, body, headers):
...         return body["messages"][-1]["content"]
>>> with Echo().running() as server:            # server.url = "http://127.0.0.1:PORT/v1"
...     ...
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedChatServer:
    """Serves ``POST …/chat/completions`` on 127.0.0.1 (a free port) from :meth:`respond`, which returns
    the reply text (wrapped as a chat completion), raw ``bytes`` (sent as the body), an ``int`` (an
    HTTP error status), ``(status, bytes)`` (an error status with that body) or ``(status, bytes, headers)``
    (with extra response headers, e.g. ``{"Retry-After": "2"}``). Counts requests in flight (``max_in_flight`` shows the client's concurrency);
    ``calls`` and ``lock`` are for the subclass's own bookkeeping."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    result = server.respond(body, self.headers)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if isinstance(result, tuple):  # (status, body[, headers]): an error with a body, as real servers send
                    status, payload, *extra = result
                    self.send_response(status)
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, str(value))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if isinstance(result, int):
                    self.send_response(result)
                    self.end_headers()
                    return
                if isinstance(result, str):
                    result = json.dumps({"choices": [{"message": {"role": "assistant", "content": result}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(result)))
                self.end_headers()
                try:
                    self.wfile.write(result)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def respond(self, body: dict[str, Any], headers: Mapping[str, str]) -> str | bytes | int | tuple:
        raise NotImplementedError

    def total(self) -> int:
        return sum(self.calls.values())

    @contextmanager
    def running(self, watchdog_s: float = 60.0) -> Iterator[ScriptedChatServer]:
        """Serve in a thread; the server stops itself after ``watchdog_s`` even if a test hangs."""
        thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        stopper = threading.Timer(watchdog_s, self.httpd.shutdown)
        stopper.daemon = True
        stopper.start()
        try:
            yield self
        finally:
            stopper.cancel()
            self.httpd.shutdown()
            self.httpd.server_close()
            thread.join(timeout=5)
