"""The drill report: JSON for machines, one self-contained HTML page for people.

The HTML carries its CSS inline and loads nothing, so it can be mailed, archived with
audit evidence, or opened on an air-gapped machine and still look the same.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from crmops.verify.workflow import VerifyResult

CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:60rem;color:#1b1f24;
padding:0 1rem}h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}
.verdict{font-size:2.2rem;font-weight:700;padding:.6rem 1rem;border-radius:.4rem;color:#fff;display:inline-block}
.pass{background:#1a7f37}.fail{background:#cf222e}.muted{color:#57606a}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #d0d7de}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.bad td{background:#ffebe9}
.ok{color:#1a7f37;font-weight:600}.no{color:#cf222e;font-weight:600}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.6rem;margin:1rem 0}
.fact{border:1px solid #d0d7de;border-radius:.4rem;padding:.5rem .7rem}.fact b{display:block;font-size:1.3rem}
.bar{position:relative;height:1.1rem;background:#eaeef2;border-radius:.2rem}
.bar span{position:absolute;top:0;bottom:0;background:#0969da;border-radius:.2rem;min-width:2px}
code{font-size:.9em}
"""


def _fmt_s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:,.1f} s"


def _mark(ok: bool | None) -> str:
    if ok is None:
        return '<span class="muted">–</span>'
    return '<span class="ok">ok</span>' if ok else '<span class="no">FAIL</span>'


def render_html(r: VerifyResult) -> str:
    verdict = "PASS" if r.ok else "FAIL"
    e = escape
    facts = [("Restore time (RTO)", _fmt_s(r.restore_seconds)),
             ("Snapshot age (RPO)", f"{r.snapshot_age_hours:,.1f} h"),
             ("Whole drill", _fmt_s(r.total_seconds)),
             ("Tables", f"{sum(t.ok for t in r.tables)}/{len(r.tables)} ok"),
             ("Checks", f"{sum(c.ok for c in r.checks)}/{len(r.checks)} ok"),
             ("Attachments", f"{r.files_checked}")]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>crmops drill {e(r.snapshot_id[:10])}: {verdict}</title><style>{CSS}</style></head><body>",
        f'<h1>Disaster drill: snapshot <code>{e(r.snapshot_id)}</code></h1>',
        f'<div id="verdict" class="verdict {"pass" if r.ok else "fail"}">{verdict}</div>',
    ]
    if r.first_failure:
        parts.append(f'<p id="first-failure"><b>First failure:</b> {e(r.first_failure)}</p>')
    parts.append(f'<p class="muted">{e(r.engine)} {e(r.server_version)}, database {e(r.database or "")}; snapshot '
                 f'taken {e(r.snapshot_time[:19].replace("T", " "))} UTC, verified {e(r.verified_at.replace("T", " "))}'
                 f'; sandbox {e(r.sandbox)} {e(r.image)} <code>{e(r.image_id[:19])}</code></p>')
    parts.append('<div class="facts">' + "".join(f'<div class="fact">{e(k)}<b>{e(v)}</b></div>' for k, v in facts)
                 + "</div>")
    parts.append('<h2>Tables</h2><table id="tables"><tr><th>table</th><th>rows expected</th><th>rows found</th>'
                 "<th>checksum</th><th>verdict</th></tr>")
    for t in r.tables:
        parts.append(f'<tr class="{"" if t.ok else "bad"}"><td>{e(t.name)}</td>'
                     f'<td class="n">{"–" if t.rows_expected is None else f"{t.rows_expected:,}"}</td>'
                     f'<td class="n">{"–" if t.rows_found is None else f"{t.rows_found:,}"}</td>'
                     f"<td>{_mark(t.checksum_ok)}</td><td>{_mark(t.ok)} {e(t.reason)}</td></tr>")
    parts.append("</table>")
    if r.differences:
        parts.append("<h2>Schema differences</h2><table><tr><th>kind</th><th>name</th><th>expected</th>"
                     "<th>found</th><th>reason</th></tr>")
        for d in r.differences:
            parts.append("<tr class=bad>" + "".join(f"<td>{e(str(d[k]))}</td>" for k in
                                                      ("kind", "name", "expected", "found", "reason")) + "</tr>")
        parts.append("</table>")
    parts.append('<h2>Checks</h2><table id="checks"><tr><th>check</th><th>verdict</th><th>detail</th></tr>')
    for c in r.checks:
        parts.append(f'<tr class="{"" if c.ok else "bad"}"><td>{e(c.name)}</td><td>{_mark(c.ok)}</td>'
                     f"<td>{e(c.detail)}</td></tr>")
    parts.append("</table>")
    parts.append('<h2>Restore timeline</h2><table id="timeline"><tr><th>step</th><th>at</th><th></th></tr>')
    end = max((s["at_s"] for s in r.timeline), default=0) or 1
    prev = 0.0
    for s in r.timeline:
        left, width = 100 * prev / end, 100 * (s["at_s"] - prev) / end
        parts.append(f'<tr><td>{e(s["step"])}</td><td class="n">{s["at_s"]:,.2f} s</td><td style="width:45%">'
                     f'<div class="bar"><span style="left:{left:.2f}%;width:{width:.2f}%"></span></div></td></tr>')
        prev = s["at_s"]
    parts.append("</table>")
    if r.kept:
        parts.append(f'<h2>Sandbox kept</h2><p>URL <code>{e(r.kept["url"])}</code><br>shell <code>'
                     f'{e(r.kept["shell"])}</code><br>remove with <code>{e(r.kept["remove"])}</code></p>')
    parts.append(f'<p class="muted">fingerprint expected <code>{e(r.fingerprint_expected)}</code>, found <code>'
                 f'{e(r.fingerprint_found)}</code>; record <code>{e(r.record_id or "")}</code></p></body></html>')
    return "\n".join(parts)


def write_reports(r: VerifyResult, folder: Path) -> dict[str, str]:
    """drill-<snapshot>-<time>.json and .html in folder; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"drill-{r.snapshot_id[:10]}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    data: dict[str, Any] = r.to_dict()
    json_path, html_path = folder / f"{stem}.json", folder / f"{stem}.html"
    json_path.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    html_path.write_text(render_html(r), encoding="utf-8")
    return {"json": str(json_path), "html": str(html_path)}
