"""A stand-in CRM web application: GET /version and /health, for upgrade tests.

Set APP_FAIL_HEALTH=1 to make /health answer 503, so a failed health check can be
rehearsed for real.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "0")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/version":
            self._send(200, {"version": VERSION})
        elif self.path == "/health":
            bad = os.environ.get("APP_FAIL_HEALTH") == "1"
            self._send(503 if bad else 200, {"status": "fail" if bad else "ok", "version": VERSION})
        else:
            self._send(404, {"error": "not found"})

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
