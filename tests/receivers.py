"""Real receivers on 127.0.0.1 for notification tests: an HTTP server and an SMTP server.

The HTTP receiver records every request and answers from a script of (status, body)
replies per path prefix (default 200 and the answer each robot kind gives), so tests can
make a webhook fail a few times, or refuse a message, and see what crmops does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.ports import free_port


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    #: path prefix -> replies to give in order (the last one repeats)
    script: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)

    def reply_for(self, path: str) -> tuple[int, bytes]:
        for prefix, replies in self.script.items():
            if path.startswith(prefix):
                return replies.pop(0) if len(replies) > 1 else replies[0]
        return 200, b'{"errcode": 0, "errmsg": "ok"}'

    def to(self, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.path.startswith(prefix)]


@contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    rec = HttpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            rec.requests.append(Request(self.command, self.path, dict(self.headers), body))
            status, reply = rec.reply_for(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_POST = do_PUT = _handle

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpReceiver:
    host: str
    port: int
    messages: list[Message] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)


@contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
            rec.raw.append(envelope.original_content or envelope.content)
            rec.messages.append(message_from_bytes(envelope.original_content or envelope.content))
            return "250 OK"

    port = free_port()  # aiosmtpd checks readiness by connecting to it
    rec = SmtpReceiver("127.0.0.1", port)
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield rec
    finally:
        controller.stop()
