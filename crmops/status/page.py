"""The status page: one self-contained HTML file for managers and auditors.

Charts are inline SVG and the CSS is inline (the drill report's), so the page loads
nothing: it can be mailed, archived with audit evidence, or opened offline. Every value
on it comes from gather(), whose text has already been scrubbed of configured secrets.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape
from typing import Any

from crmops.status.verdicts import GREEN, Overview, parse_time
from crmops.verify.report import CSS as DRILL_CSS

CSS = DRILL_CSS + """
.chip{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;color:#fff;font-weight:600;font-size:.85rem}
.green{background:#1a7f37}.amber{background:#bf8700}.red{background:#cf222e}
#warnings{list-style:none;padding:0}#warnings li{margin:.4rem 0;padding:.2rem .6rem;border-left:4px solid}
#warnings li.lvl-red{border-color:#cf222e;background:#ffebe9}
#warnings li.lvl-amber{border-color:#bf8700;background:#fff8c5}
#warnings .none{color:#1a7f37;border-color:#1a7f37}
svg.chart{width:100%;height:auto;border:1px solid #d0d7de;border-radius:.4rem;background:#fff}
svg.chart text{font:11px system-ui,sans-serif;fill:#57606a}svg.chart .axis{stroke:#8c959f;stroke-width:1}
svg.chart .grid{stroke:#eaeef2;stroke-width:1}svg.chart rect.col{fill:#0969da}
svg.chart polyline{fill:none;stroke:#0969da;stroke-width:2}svg.chart circle{fill:#0969da}
svg.chart circle.bad{fill:#cf222e}svg.chart rect.bad{fill:#cf222e}
svg.chart line.limit{stroke:#cf222e;stroke-width:1;stroke-dasharray:6 4}svg.chart text.limit{fill:#cf222e}
svg.chart polyline.lag{stroke-width:1.5}
"""

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 220, 64, 12, 14, 28


def _sig(x: float) -> str:
    """Three significant digits at most, so 0.012 s and 1,234 s both read well."""
    if x == 0 or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _mb(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{_sig(n / size)} {unit}"
    return f"{_sig(n)} B"


def _secs(n: float | None) -> str:
    return "–" if n is None else f"{_sig(n)} s"


def _when(text: str | None) -> str:
    return "–" if not text else escape(text[:16].replace("T", " "))


def _frame(top: float, fmt: Callable[[float], str], first: datetime, last: datetime) -> list[str]:
    """A chart's grid lines with their values, its time axis and the first and last times."""
    inner_h = H - TOP - BOTTOM
    out = []
    for frac in (0, 0.5, 1):
        y = TOP + inner_h * (1 - frac)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(top * frac))}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + inner_h}" y2="{TOP + inner_h}"/>')
    for t, anchor, x in ((first, "start", LEFT), (last, "end", W - RIGHT)):
        out.append(f'<text x="{x}" y="{H - 8}" text-anchor="{anchor}">{t:%Y-%m-%d %H:%M}</text>')
    return out


def chart(chart_id: str, title: str, points: list[tuple[datetime, float, bool]], kind: str,
          fmt: Callable[[float], str]) -> str:
    """An inline SVG chart of (time, value, ok) points: bars or a line; a not-ok point is drawn red."""
    e = escape
    head = (f'<svg class="chart" id="{chart_id}" viewBox="0 0 {W} {H}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg" aria-label="{e(title)}"><title>{e(title)}</title>')
    if not points:
        return head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data yet</text></svg>'
    top = max(v for _, v, _ in points) or 1.0
    t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
    span = (t1 - t0) or 1.0
    inner_w, inner_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = [head]
    parts += _frame(top, fmt, points[0][0], points[-1][0])

    def xy(t: datetime, v: float) -> tuple[float, float]:
        x = LEFT + (inner_w * (t.timestamp() - t0) / span if len(points) > 1 else inner_w / 2)
        return x, TOP + inner_h * (1 - v / top)

    if kind == "bars":
        width = max(2.0, min(24.0, inner_w / len(points) * 0.7))
        for t, v, ok in points:
            x, y = xy(t, v)
            x = min(max(x - width / 2, LEFT), W - RIGHT - width)
            parts.append(f'<rect class="col{"" if ok else " bad"}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
                         f'height="{TOP + inner_h - y:.1f}"><title>{t:%Y-%m-%d %H:%M}: {e(fmt(v))}</title></rect>')
    else:
        coords = [xy(t, v) for t, v, _ in points]
        parts.append('<polyline points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
        for (x, y), (t, v, ok) in zip(coords, points, strict=True):
            parts.append(f'<circle class="{"" if ok else "bad"}" cx="{x:.1f}" cy="{y:.1f}" r="3.5">'
                         f"<title>{t:%Y-%m-%d %H:%M}: {e(fmt(v))}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def lag_chart(chart_id: str, title: str, points: list[tuple[datetime, float]], limit: float) -> str:
    """The archive lag over time as a sawtooth, with the limit as a dashed line.

    The scale stops at four times the limit so a night of idleness does not flatten the
    day; a peak above the scale is drawn at its top as a red dot titled with its value.
    data-top, data-t0 and data-t1 give the scale (seconds, Unix times) to read points back.
    """
    e = escape
    head = (f'<svg class="chart" id="{chart_id}" viewBox="0 0 {W} {H}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg" aria-label="{e(title)}"')
    if len(points) < 2:
        return head + f'><title>{e(title)}</title><text x="{W / 2}" y="{H / 2}" ' \
                      'text-anchor="middle">no pushes recorded yet</text></svg>'
    top = min(max(max(v for _, v in points), limit * 1.2), limit * 4)
    t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
    span = (t1 - t0) or 1.0
    inner_w, inner_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = [head + f' data-top="{top:g}" data-t0="{t0:.0f}" data-t1="{t1:.0f}" data-limit="{limit:g}">'
             f"<title>{e(title)}</title>"]
    parts += _frame(top, _secs, points[0][0], points[-1][0])
    ly = TOP + inner_h * (1 - limit / top)
    parts.append(f'<line class="limit" x1="{LEFT}" x2="{W - RIGHT}" y1="{ly:.1f}" y2="{ly:.1f}"/>'
                 f'<text class="limit" x="{W - RIGHT - 4}" y="{ly - 4:.1f}" text-anchor="end">limit '
                 f"{e(_secs(limit))}</text>")

    def xy(t: datetime, v: float) -> tuple[float, float]:
        return LEFT + inner_w * (t.timestamp() - t0) / span, TOP + inner_h * (1 - min(v, top) / top)

    coords = [xy(t, v) for t, v in points]
    parts.append('<polyline class="lag" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
    for (x, y), (t, v) in zip(coords, points, strict=True):
        if v > limit:
            parts.append(f'<circle class="bad" cx="{x:.1f}" cy="{y:.1f}" r="3.5"><title>{t:%Y-%m-%d %H:%M:%S}: '
                         f"{e(_secs(v))}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def _lag_section(ov: Overview, now: datetime) -> list[str]:
    """One lag chart per archive, over the last 24 hours, from the archive's own push records."""
    from datetime import timedelta

    from crmops.pitr.pushlog import sawtooth

    parts = ["<h2>Archive lag</h2><p>Age of the newest archived WAL or binary log over the last 24 hours, from "
             "the archive's push records (pushes under a minute apart merged); dashed: the limit "
             "(status.max_archive_lag_seconds); red dots: above it. An idle server's line rises too: "
             "the verdict above asks the server whether anything written is missing.</p>"]
    for w in ov.pitr:
        kind = w.get("kind", "wal")
        points = sawtooth(ov.lag_history.get(f"{kind}:{w['system_id']}", []), now, now - timedelta(hours=24))
        what = "binlog archive of server" if kind == "binlog" else "WAL archive of cluster"
        peak = max((v for _, v in points), default=None)
        over = sum(1 for _, v in points if v > ov.max_archive_lag_seconds)
        parts.append(f"<p><b>{escape(what)} {escape(w['system_id'])}</b>: lag now "
                     f"{_secs(w.get('archive_lag_seconds'))}"
                     + (f", largest in 24 h {_secs(peak)}, {over} peak(s) over the limit" if peak is not None else "")
                     + "</p>")
        parts.append(lag_chart(f"chart-lag-{kind}-{w['system_id']}", f"archive lag, {what} {w['system_id']}",
                               points, ov.max_archive_lag_seconds))
    return parts


def _table(table_id: str, head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted" id="{table_id}">{escape(empty)}</p>'
    out = [f'<table id="{table_id}"><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _mark(ok: Any) -> str:
    return '<span class="ok">ok</span>' if ok else '<span class="no">FAIL</span>'


def render_html(ov: Overview) -> str:
    e = escape
    level = ov.level
    warnings = sorted((v for v in ov.verdicts if v.level != GREEN), key=lambda v: v.level != "red")  # red first
    last_v = ov.verifications[-1] if ov.verifications else None
    unknown = "unknown" if ov.repository_error else None
    facts = [("Snapshots", unknown or f"{len(ov.snapshots)}"),
             ("Repository size", unknown or _mb(ov.repository_size_bytes)),
             ("Newest snapshot", unknown or (_when(ov.snapshots[-1]["time"]) if ov.snapshots else "none")),
             ("Last restore time (RTO)", _secs(last_v.get("restore_seconds")) if last_v else "–"),
             ("Last verified", _when(last_v.get("verified_at")) if last_v else (unknown or "never"))]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>crmops status {e(ov.host)}: {level.upper()}</title><style>{CSS}</style></head><body>",
        f"<h1>CRM backup status: {e(ov.host)}</h1>",
        f'<div id="verdict" class="verdict {level}">{level.upper()}</div>',
        f'<p class="muted">database {e(ov.source or "?")}; repository {e(ov.repository)}; '
        f'generated {e(ov.generated_at.replace("T", " "))} '
        f"by crmops {e(ov.version)}</p>",
        '<div class="facts">' + "".join(f'<div class="fact">{e(k)}<b>{v}</b></div>' for k, v in facts) + "</div>",
        '<h2>Warnings</h2><ul id="warnings">',
    ]
    parts += [f'<li class="warning lvl-{v.level}"><span class="chip {v.level}">{v.level.upper()}</span> '
              f"<b>{e(v.name)}</b>: {e(v.summary)}</li>" for v in warnings]
    if not warnings:
        parts.append('<li class="none">No warnings: backups are fresh and the last verification passed.</li>')
    parts.append("</ul>")
    parts.append(_table("verdicts", ["check", "verdict", "detail"],
                        [[e(v.name), f'<span class="chip {v.level}">{v.level.upper()}</span>', e(v.summary)]
                         for v in ov.verdicts], ""))

    snaps = [(parse_time(s["time"]), s) for s in ov.snapshots]
    parts.append("<h2>Snapshots over time</h2><p>Size of each snapshot (database and attachments, before "
                 "deduplication and compression)</p>")
    parts.append(chart("chart-size", "snapshot size", [(t, s["size"], True) for t, s in snaps], "line", _mb))
    parts.append("<p>New bytes each snapshot had to store (after deduplication, compression, encryption)</p>")
    parts.append(chart("chart-new", "new bytes stored", [(t, s["bytes_new"], True) for t, s in snaps], "bars", _mb))
    parts.append(_table("snapshots", ["time (UTC)", "snapshot", "tags", "schema", "size", "new"],
                        [[_when(s["time"]), f"<code>{e(s['id'][:12])}</code>", e(", ".join(s["tags"])),
                          e(s.get("schema_revision") or ""), _mb(s["size"]), _mb(s["bytes_new"])]
                         for _, s in reversed(snaps[-20:])], "No snapshots yet."))
    if ov.damaged:
        parts.append("<p>Snapshots whose manifest cannot be read (the others above are intact)</p>")
        parts.append(_table("damaged", ["snapshot", "problem"],
                            [[f"<code>{e(d['id'][:12])}</code>", f'<span class="no">{e(d["problem"])}</span>']
                             for d in ov.damaged], ""))

    ver = [(parse_time(v["verified_at"]), v) for v in ov.verifications if v.get("verified_at")]
    parts.append("<h2>Verification history</h2><p>Restore time (RTO) of each verification; red: it failed</p>")
    parts.append(chart("chart-rto", "restore time (RTO)", [(t, v.get("restore_seconds") or 0.0, bool(v.get("ok")))
                                                            for t, v in ver], "line", _secs))
    parts.append("<p>Snapshot age when verified (RPO: the data a disaster at that moment would have lost)</p>")
    parts.append(chart("chart-rpo", "snapshot age (RPO)", [(t, v.get("snapshot_age_hours") or 0.0,
                                                            bool(v.get("ok"))) for t, v in ver], "bars",
                       lambda x: f"{_sig(x)} h"))
    parts.append(_table("verifications", ["verified (UTC)", "snapshot", "result", "RTO", "RPO", "first failure"],
                        [[_when(v["verified_at"]), f"<code>{e((v.get('snapshot_id') or '')[:12])}</code>",
                          _mark(v.get("ok")), _secs(v.get("restore_seconds")),
                          "–" if v.get("snapshot_age_hours") is None else f"{_sig(v['snapshot_age_hours'])} h",
                          e(v.get("first_failure") or "")] for _, v in reversed(ver[-20:])],
                        "No verification yet: run `crmops drill`."))

    if ov.pitr:
        parts += _lag_section(ov, parse_time(ov.generated_at))

    if ov.copies:
        parts.append("<h2>Copies in other places</h2><p>Each copy's newest snapshot, how far it lags the "
                     "repository, its archive lag and the last restore proven from it</p>")
        parts.append(_table("copies", ["copy", "state", "newest snapshot (UTC)", "lag", "archive lag",
                                       "last drill from it"],
                            [[e(c["name"]), f'<span class="chip {c["level"]}">{c["level"].upper()}</span>',
                              _when(c["newest_snapshot_time"]) if c.get("newest_snapshot_time") else "none",
                              "–" if c.get("lag_seconds") is None else f"{_sig(c['lag_seconds'] / 3600)} h",
                              "–" if c.get("archive_lag_seconds") is None else _secs(c["archive_lag_seconds"]),
                              e(f"{c['last_proof']['finished'][:19]} {c['last_proof']['result']}"
                                if c.get("last_proof") else "never")] for c in ov.copies], ""))

    parts.append("<h2>Latest upgrade runs</h2>")
    parts.append(_table("upgrades", ["started (UTC)", "playbook", "from → to", "kind", "result", "run"],
                        [[_when(u.get("started_at")), e(str(u.get("playbook") or "")),
                          e(f"{u.get('from_version')} → {u.get('to_version')}"),
                          "rehearsal" if u.get("dry_run") else "upgrade",
                          e(u.get("problem") or ": ".join(filter(None, [u.get("result"), u.get("error")]))
                            or "no end record"),
                          f"<code>{e(str(u.get('run_id') or u['file']))}</code>"] for u in ov.upgrades[:10]],
                        "No upgrade runs recorded."))

    parts.append("<h2>Recent job runs</h2>")
    parts.append(_table("runs", ["ended (UTC)", "command", "result", "duration", "run id", "error"],
                        [[_when(r.get("finished_at")), e(r.get("command", "")),
                          _mark(r.get("result") == "success"), _secs(r.get("duration_s")),
                          f"<code>{e(r.get('run_id', ''))}</code>", e(r.get("error") or "")]
                         for r in reversed(ov.runs)], "No job runs recorded yet."))
    parts.append("</body></html>")
    return "\n".join(parts)
