"""Telling people how a job went: webhooks (generic JSON, Slack, DingTalk, WeCom) and e-mail.

One protocol, Notifier; each channel formats the same Event its own way. A channel that
cannot deliver raises DeliveryFailed after its retries; send_all() collects those as
lines, so a broken webhook never hides (or changes) the job's own result.
"""

from __future__ import annotations

from typing import Any

from crmops.config import Config
from crmops.notify.base import DeliveryFailed, Event, Notifier

__all__ = ["DeliveryFailed", "Event", "Notifier", "notifiers", "send_all"]


def notifiers(config: Config) -> list[Notifier]:
    """The channels configured under notify: each webhook, then e-mail."""
    from crmops.notify.email import EmailNotifier
    from crmops.notify.webhook import WebhookNotifier

    n = config.notify
    out: list[Notifier] = [WebhookNotifier(w, n.timeout_seconds, n.attempts, i + 1) for i, w in enumerate(n.webhooks)]
    if n.email is not None:
        out.append(EmailNotifier(n.email, n.timeout_seconds, n.attempts))
    return out


def send_all(event: Event, channels: list[Notifier], redact: Any = None) -> list[str]:
    """Send to every channel; returns one line per channel that failed (the caller logs them)."""
    problems = []
    for channel in channels:
        try:
            channel.send(event)
        except Exception as e:  # a notification failure must never end the job
            line = f"notification via {channel.name} failed: {type(e).__name__ if not str(e) else e}"
            problems.append(redact(line) if redact is not None else line)
    return problems
