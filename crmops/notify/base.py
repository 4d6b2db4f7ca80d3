"""The notification protocol and what every channel shares: the Event and DeliveryFailed.

Kept apart from the package's entry points so each channel imports only this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


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
