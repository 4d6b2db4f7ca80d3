"""Webhooks: a generic JSON document, or the message formats of Slack, DingTalk and WeCom robots.

DingTalk (钉钉) and WeCom (企业微信) robots answer HTTP 200 even when they refuse a
message; their JSON errcode says whether it was taken, so it is checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import quote_plus

from crmops.config import WebhookConfig
from crmops.notify.base import DeliveryFailed, Event
from crmops.notify.http import host_of, request


def _markdown(event: Event) -> str:
    mark = "✅" if event.ok else "❌"
    return f"### {mark} {event.title}\n\n" + "\n".join(f"- {line}" for line in event.lines())


def payload(kind: str, event: Event) -> dict[str, Any]:
    """The JSON body each kind of receiver expects."""
    if kind == "slack":
        text = f"{'✅' if event.ok else '❌'} *{event.title}*\n" + "\n".join(event.lines())
        return {"text": text}
    if kind == "dingtalk":
        return {"msgtype": "markdown", "markdown": {"title": event.title, "text": _markdown(event)}}
    if kind == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": _markdown(event)}}
    return {"source": "crmops", **event.to_dict()}


def dingtalk_signed(url: str, secret: str, now_ms: int | None = None) -> str:
    """url with DingTalk's timestamp and HMAC-SHA256 sign parameters (robots with 加签)."""
    ts = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={ts}&sign={quote_plus(base64.b64encode(digest).decode())}"


class WebhookNotifier:
    def __init__(self, cfg: WebhookConfig, timeout: float, attempts: int, number: int = 1) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.attempts = attempts
        self.name = f"webhook #{number} ({cfg.kind}, {host_of(cfg.url.get_secret_value())})"

    def send(self, event: Event) -> None:
        url = self.cfg.url.get_secret_value()
        if self.cfg.kind == "dingtalk" and self.cfg.secret is not None:
            url = dingtalk_signed(url, self.cfg.secret.get_secret_value())
        body = json.dumps(payload(self.cfg.kind, event), ensure_ascii=False, default=str).encode()
        answer = request("POST", url, body, "application/json; charset=utf-8", timeout=self.timeout,
                         attempts=self.attempts)
        if self.cfg.kind in ("dingtalk", "wecom"):
            try:
                doc = json.loads(answer or b"{}")
            except ValueError:
                raise DeliveryFailed(f"{host_of(url)} answered something other than JSON") from None
            if doc.get("errcode", 0) != 0:
                raise DeliveryFailed(f"{host_of(url)} refused the message: errcode {doc.get('errcode')} "
                                     f"{doc.get('errmsg', '')}".rstrip())
