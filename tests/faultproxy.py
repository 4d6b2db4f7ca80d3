"""A fault-injecting HTTP proxy for S3 tests: real 503s, reset connections and stalls.

    with FaultProxy(upstream="http://127.0.0.1:55000", rate=0.2, seed=1) as proxy:
        ... point the S3 client at proxy.url ...
        proxy.faults  # {"503": n, "reset": n, "stall": n}
        proxy.log     # [("PUT", "/bucket/crm/data/ab/abc..."), ...]: every request as it arrived

Each request is read whole, then with probability `rate` it gets a fault (chosen
evenly among `kinds`) instead of being forwarded: an S3 `SlowDown` 503, a connection
reset (RST, no answer), or a stall longer than the client's read timeout followed by a
close. Listens on 127.0.0.1 only; bounded by `max_faults` and stopped on exit.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, *, rate: float = 0.2, seed: int = 0, stall_seconds: float = 3.0,
                 kinds: tuple[str, ...] = ("503", "reset", "stall"), max_faults: int = 10_000) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.rate = rate
        self.kinds = kinds
        self.stall_seconds = stall_seconds
        self.max_faults = max_faults
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.faults = {k: 0 for k in kinds}
        self.requests = 0
        #: (method, path with query) of every request, faulted or not: tests count what a command asks
        self.log: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.log.append((self.command, self.path))
                fault = proxy._choose()
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN)
                    return
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _choose(self) -> str | None:
        with self.lock:
            self.requests += 1
            if sum(self.faults.values()) >= self.max_faults or self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(self.kinds)
            self.faults[kind] += 1
            return kind

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
