"""The maintenance window: is now inside it, and does the estimated downtime fit before it closes?"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from crmops.playbooks.model import DAYS, Window


def window_end(window: Window, now: datetime) -> datetime | None:
    """When the window that contains now closes, or None when now is outside every window."""
    local = now.astimezone(ZoneInfo(window.timezone))
    start, end = window.clock("start"), window.clock("end")
    for back in (0, 1):  # a window opened yesterday may span midnight into today
        day = (local - timedelta(days=back)).date()
        if DAYS[day.weekday()] not in window.days:
            continue
        opens = datetime.combine(day, start or datetime.min.time(), tzinfo=local.tzinfo)
        closes = datetime.combine(day, end, tzinfo=local.tzinfo) if end else datetime.combine(
            day + timedelta(days=1), datetime.min.time(), tzinfo=local.tzinfo)
        if closes <= opens:
            closes += timedelta(days=1)
        if opens <= local < closes:
            return closes
    return None


def describe(window: Window) -> str:
    days = "every day" if len(window.days) == 7 else ",".join(window.days)
    return f"{days} {window.start}-{window.end} {window.timezone}"


def fits(window: Window | None, now: datetime, downtime_s: float) -> tuple[bool, str]:
    """(ok, reason): inside the window and the estimate ends before it closes."""
    if window is None:
        return True, "the playbook sets no window"
    closes = window_end(window, now)
    if closes is None:
        return False, f"now ({now.astimezone(ZoneInfo(window.timezone)):%a %H:%M %Z}) is outside the window " \
                      f"({describe(window)})"
    left = (closes - now).total_seconds()
    if downtime_s > left:
        return False, f"the estimated downtime {downtime_s:.0f}s does not fit: the window closes in {left:.0f}s"
    return True, f"inside the window ({describe(window)}), {left:.0f}s left for an estimated {downtime_s:.0f}s"
