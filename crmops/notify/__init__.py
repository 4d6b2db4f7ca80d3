"""Telling people how a job went: webhooks (generic JSON, Slack, DingTalk, WeCom) and e-mail.

One protocol, Notifier; each channel formats the same Event its own way. A channel that
cannot deliver raises DeliveryFailed after its retries; send_all() collects those as
lines, so a broken webhook never hides (or changes) the job's own result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from crmops.config import Config


class DeliveryFailed(Exception):
    """A notification could not be delivered (the message never names a secret URL)."""


@dataclass
class Event:
    """One finished job run, as every channel reports it."""

    run_id: str
    command: str
    ok: bool
    host: str
    started_at: str
    finished_at: str
    duration_s: float
    exit_code: int
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    @property
    def title(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return f"crmops {self.command} {verdict} on {self.host}"

    def lines(self) -> list[str]:
        """The human body, shared by every channel: the reason first, then the figures."""
        out = [f"error: {self.error}"] if self.error else []
        out.append(f"run id: {self.run_id}, exit code {self.exit_code}, {self.duration_s:.1f} s, "
                   f"finished {self.finished_at}")
        out += [f"{k}: {v}" for k, v in self.figures.items() if v is not None]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, **asdict(self)}


class Notifier(Protocol):
    #: what it is, safe to print (no token, no full URL)
    name: str

    def send(self, event: Event) -> None:
        """Deliver the event, retrying transient failures; DeliveryFailed when it cannot."""
        ...


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
