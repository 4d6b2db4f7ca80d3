"""One HTTP request with retries, for webhooks and the Pushgateway.

Transient failures (refused or dropped connections, timeouts, 429 and 5xx) are retried
with exponential backoff and jitter; a 4xx other than 429 is the receiver saying no,
and is not. Error messages name the host only: webhook URLs carry their token.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from crmops import __version__
from crmops.notify.base import DeliveryFailed


class _Transient(DeliveryFailed):
    pass


def host_of(url: str) -> str:
    """scheme://host[:port] of url: what may be shown of a secret URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid URL)"
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def request(method: str, url: str, body: bytes, content_type: str, *, timeout: float, attempts: int,
            backoff: float = 0.5) -> bytes:
    """The response body of a successful (2xx) request; DeliveryFailed naming only the host."""
    where = host_of(url)

    def once() -> bytes:
        req = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type, "User-Agent": f"crmops/{__version__}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (configured http(s) URL)
                return resp.read()
        except urllib.error.HTTPError as e:
            kind = _Transient if e.code == 429 or e.code >= 500 else DeliveryFailed
            raise kind(f"{where} answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Transient(f"{where} did not answer ({reason})") from None
        except ValueError:
            raise DeliveryFailed(f"not a usable URL ({where})") from None

    for attempt in Retrying(stop=stop_after_attempt(attempts), reraise=True,
                            wait=wait_random_exponential(multiplier=backoff, max=30),
                            retry=retry_if_exception(lambda e: isinstance(e, _Transient))):
        with attempt:
            return once()
    raise AssertionError("unreachable")  # pragma: no cover
