"""The sandbox's HTTP/1.1 server (keep-alive, one thread per connection) and its Sandbox handle."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.sandbox.book import Ledger
from agent.sandbox.company import Company
from agent.sandbox.options import Fault, SandboxOptions
from agent.sandbox.wire import Outcome, Request, text_outcome

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20


class _Server(ThreadingHTTPServer):
    """Tracks its connections so that stop() can abort idle keep-alive ones instead of hanging."""

    daemon_threads = True
    block_on_close = True
    # The default backlog of 5 drops connections when a few dozen clients connect at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], company: Company) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.company = company
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            if self.stopping.is_set():
                abort(connection)
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def abort_all(self) -> None:
        with self._connections_lock:
            self.stopping.set()
            for connection in self._connections:
                abort(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that go away mid-request are normal here; no traceback on stderr.
        logger.debug("Sandbox connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; with Nagle on, the second waits for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Sandbox %s: " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        url = urlsplit(self.path)
        request = Request(self.command, url.path, parse_qs(url.query, keep_blank_values=True),
                          {name.lower(): value for name, value in self.headers.items()}, body)
        outcome = self.server.company.handle(request)
        if outcome.hold and self.server.stopping.wait(outcome.hold):
            outcome = Outcome(drop=True)
        if outcome.drop:
            self.close_connection = True
            abort(self.connection)
        else:
            self._answer(outcome)

    def _read_body(self) -> bytes | None:
        """The whole body, so the next request on this connection starts where it should."""
        length = self.headers.get("Content-Length", "0")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            problem = text_outcome(411, "chunked bodies are not supported; send Content-Length")
        elif not length.isdigit():
            problem = text_outcome(400, f"bad Content-Length {length!r}")
        elif int(length) > MAX_BODY:
            problem = text_outcome(413, f"the body is larger than {MAX_BODY} bytes")
        else:
            return self.rfile.read(int(length))
        self.close_connection = True
        self._answer(problem)
        return None

    def _answer(self, outcome: Outcome) -> None:
        try:
            self.send_response(outcome.status)
            if outcome.content_type:
                self.send_header("Content-Type", outcome.content_type)
            for name, value in outcome.headers:
                self.send_header(name, value)
            if outcome.status != 204:  # a 204 must not carry Content-Length
                self.send_header("Content-Length", str(len(outcome.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(outcome.body)
        except OSError:
            # The client gave up (e.g. its timeout fired during an injected delay).
            self.close_connection = True


def abort(connection: socket.socket) -> None:
    """End a TCP connection now, both ways, so the peer sees a network error, not an answer."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Sandbox:
    """A local stand-in for Prodsmart, served from a background thread.

    `with Sandbox(options) as sandbox:` starts it on a free port (port=0) and stops it;
    `sandbox.url` is its base URL, `sandbox.ledger()` what it received and applied.
    """

    def __init__(self, options: SandboxOptions | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._company = Company(options or SandboxOptions())
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def options(self) -> SandboxOptions:
        return self._company.options

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._server.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Sandbox:
        if self._server is None:
            self._server = _Server(self._address, self._company)
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                            name="prodsmart-sandbox", daemon=True)
            self._thread.start()
            logger.debug("Sandbox listening at %s", self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.abort_all()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def ledger(self) -> Ledger:
        return self._company.ledger()

    def inject(self, fault: Fault) -> None:
        self._company.inject(fault)

    def clear_faults(self) -> None:
        self._company.clear_faults()

    def faults(self) -> list[Fault]:
        return self._company.faults()

    def set_options(self, **changes: Any) -> SandboxOptions:
        return self._company.set_options(changes)

    def reset(self) -> None:
        self._company.reset()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
