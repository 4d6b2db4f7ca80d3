"""E-mail through an SMTP server (STARTTLS or implicit TLS on port 465, optional login)."""

from __future__ import annotations

import json
import smtplib
import ssl
from email.message import EmailMessage

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from crmops.config import EmailConfig
from crmops.notify.base import DeliveryFailed, Event


def message(cfg: EmailConfig, event: Event) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[crmops] {event.title}" + (f": {event.error}" if event.error else "")
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["X-Crmops-Run-Id"] = event.run_id
    msg.set_content("\n".join([event.title, "", *event.lines(), "", "--", "the run as JSON:",
                               json.dumps(event.to_dict(), indent=2, default=str, ensure_ascii=False)]))
    return msg


def _transient(e: BaseException) -> bool:
    if isinstance(e, smtplib.SMTPResponseException):
        return 400 <= e.smtp_code < 500  # "try again later"
    return isinstance(e, OSError | smtplib.SMTPServerDisconnected)


class EmailNotifier:
    def __init__(self, cfg: EmailConfig, timeout: float, attempts: int) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.attempts = attempts
        self.name = f"e-mail via {cfg.host}:{cfg.port}"

    def _send_once(self, msg: EmailMessage) -> None:
        c = self.cfg
        if c.port == 465:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(c.host, c.port, timeout=self.timeout,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(c.host, c.port, timeout=self.timeout)
        with smtp:
            if c.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if c.username:
                smtp.login(c.username, c.password.get_secret_value() if c.password else "")
            smtp.send_message(msg)

    def send(self, event: Event) -> None:
        msg = message(self.cfg, event)
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.attempts), reraise=True,
                                    wait=wait_random_exponential(multiplier=0.5, max=30),
                                    retry=retry_if_exception(_transient)):
                with attempt:
                    self._send_once(msg)
        except smtplib.SMTPResponseException as e:
            raise DeliveryFailed(f"{self.name}: server answered {e.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as e:
            raise DeliveryFailed(f"{self.name}: {type(e).__name__}: {e}") from None
