"""The dry run's report as files: JSON for machines, one self-contained HTML page for the change board.

Like the drill report (same inline style, loads nothing), so it can be mailed or attached to
a change request: verdict, forecast against the window, forward and rollback timings, and
every step as rehearsed or not, with the reason.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from crmops.verify.report import CSS, _fmt_s, _mark


def render_html(r: dict[str, Any]) -> str:
    e = escape
    ok = r.get("result") == "success"
    verdict = "PASS" if ok else "FAIL"
    counts = r.get("counts") or {}
    rb = r.get("rollback") or {}
    facts = [("Downtime forecast", _fmt_s(r.get("estimated_downtime_s"))),
             ("Migrations alone", _fmt_s(r.get("migrate_seconds"))),
             ("Forward run", _fmt_s(r.get("forward_seconds"))),
             ("Rollback", _fmt_s(rb.get("seconds"))),
             ("Restore of the snapshot", _fmt_s((r.get("restore") or {}).get("seconds"))),
             ("Steps rehearsed", f"{counts.get('rehearsed', 0)} + {counts.get('production_read_only', 0)} read-only"
                                 f" / {counts.get('steps', 0)}")]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>crmops dry run {e(r['run_id'])}: {verdict}</title><style>{CSS}</style></head><body>",
        f"<h1>Upgrade rehearsal: {e(r['playbook'])} ({e(r['from_version'])} → {e(r['to_version'])})</h1>",
        f'<div id="verdict" class="verdict {"pass" if ok else "fail"}">{verdict}</div>',
    ]
    if r.get("error"):
        parts.append(f'<p id="first-failure"><b>Why:</b> {e(r["error"])}</p>')
    snap = r.get("snapshot") or {}
    parts.append(f'<p class="muted">run {e(r["run_id"])}; snapshot <code>{e(str(snap.get("id", ""))[:10])}</code> '
                 f'taken {e(str(snap.get("time", ""))[:19].replace("T", " "))} UTC'
                 f'{", verified" if snap.get("verified") else ", proven by this restore"}; '
                 f'{e((r.get("window") or {}).get("detail", ""))}</p>')
    parts.append('<div class="facts">' + "".join(f'<div class="fact">{e(k)}<b>{e(v)}</b></div>' for k, v in facts)
                 + "</div>")
    stack = r.get("stack") or {}
    if stack.get("started"):
        parts.append(f'<p id="stack">Copy of the app from {e(stack["source"])} on private network '
                     f'<code>{e(stack["network"])}</code>, answering for {e(", ".join(stack["answers_for"]))}; '
                     f'database settings pointed at the sandbox: {e(", ".join(stack["env_rewritten"]) or "none")}; '
                     f'volumes copied: {len(stack.get("volumes_copied") or [])}.</p>')
    elif stack:
        parts.append(f'<p id="stack">No copy of the app: {e(stack.get("reason") or "")}</p>')
    if rb:
        app = rb.get("app") or {}
        parts.append(f'<h2>Rollback ({e(rb["why"])})</h2><p id="rollback">{_mark(rb["ok"])} in {_fmt_s(rb["seconds"])}'
                     f': database {e(rb["database"]["detail"])}' + (f'; app {e(app["detail"])}' if app else "")
                     + "</p>")
    parts.append('<h2>Plan</h2><table id="plan"><tr><th>stage</th><th>step</th><th>type</th><th>how</th>'
                 "<th>seconds</th><th>verdict</th><th>detail</th></tr>")
    for p in r.get("plan") or []:
        secs = f'{p.get("seconds") or 0:,.2f}' + ("" if p.get("measured") else " (expected)")
        detail = p.get("error") or p.get("reason") or p.get("summary") or ""
        parts.append(f'<tr class="{"bad" if p.get("ok") is False else ""}"><td>{e(p["stage"] or "smoke")}</td>'
                     f'<td>{e(p["step"] or "")}{" (rollback)" if p["phase"] == "rollback" else ""}</td>'
                     f'<td>{e(p["type"])}</td><td>{e(p.get("mode") or "")}</td><td class="n">{secs}</td>'
                     f'<td>{_mark(p.get("ok"))}</td><td>{e(str(detail))}</td></tr>')
    parts.append("</table>")
    for title, key in (("Blockers", "blockers"), ("Warnings", "warnings")):
        if r.get(key):
            parts.append(f"<h2>{title}</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in r[key]) + "</ul>")
    parts.append('<h2>Not rehearsed for real</h2><ul id="fidelity">'
                 + "".join(f'<li><b>{e(f["step"] or f["type"])}</b>: {e(f["reason"])}</li>' for f in r["fidelity"])
                 + "</ul>")
    parts.append(f'<p class="muted">journal <code>{e(r.get("journal", ""))}</code></p></body></html>')
    return "\n".join(parts)


def write_reports(report: dict[str, Any], folder: Path) -> dict[str, str]:
    """dryrun-<run id>.json and .html in folder; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / f"dryrun-{report['run_id']}.json", folder / f"dryrun-{report['run_id']}.html"
    json_path.write_text(json.dumps(report, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return {"json": str(json_path), "html": str(html_path)}
