"""When the archive was pushed to over the last day: the record the status page charts the lag from.

Kept inside the archive's state object (walstate/<id>, binlogstate/<id>), which each push
rewrites anyway, as Unix seconds. A push less than RESOLUTION seconds after the one before
the newest replaces the newest, so a busy server keeps at most two entries a RESOLUTION
while every pause of RESOLUTION seconds or more keeps both its ends: the lag's peaks stay
exact, and the record stays small (a few thousand integers).
"""

from __future__ import annotations

from datetime import UTC, datetime

#: seconds: pushes closer than this may be merged
RESOLUTION = 60
#: seconds of history kept
KEEP = 26 * 3600


def record(times: list[int] | None, now: datetime | None = None) -> list[int]:
    """times with a push at now added, merged and trimmed as described above."""
    t = int((now or datetime.now(UTC)).timestamp())
    out = [x for x in (times or []) if x > t - KEEP and x <= t]
    if len(out) >= 2 and t - out[-2] < RESOLUTION:
        out[-1] = t
    else:
        out.append(t)
    return out


def sawtooth(times: list[int], now: datetime, since: datetime) -> list[tuple[datetime, float]]:
    """The age of the newest push from since to now: rising between pushes, back to 0 at each."""
    start, end = int(since.timestamp()), int(now.timestamp())
    before = [x for x in times if x <= start]
    inside = [x for x in times if start < x <= end]
    if not inside and not before:
        return []
    last = before[-1] if before else None
    first = start if last is not None else inside[0]
    points: list[tuple[datetime, float]] = [(_dt(first), float(first - last) if last is not None else 0.0)]
    for x in inside:
        if last is not None and x != first:
            points.append((_dt(x), float(x - last)))
        points.append((_dt(x), 0.0))
        last = x
    points.append((_dt(end), float(end - (last if last is not None else end))))
    return _dedupe(points)


def _dt(x: int) -> datetime:
    return datetime.fromtimestamp(x, UTC)


def _dedupe(points: list[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    out: list[tuple[datetime, float]] = []
    for p in points:
        if not out or out[-1] != p:
            out.append(p)
    return out
