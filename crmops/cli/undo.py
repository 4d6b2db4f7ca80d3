"""`crmops undo`: bring deleted rows, and what hangs on them, back into the live CRM."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app

ATTACHMENT_STATUS = {"restore": "to restore", "present": "already there", "differs": "other content there (kept)",
                     "not-in-snapshot": "not in the snapshot", "no-folder": "no attachments.path"}

#: what --apply did with each file, in the plan's words (the JSON keeps the short status)
WRITTEN_STATUS = {**ATTACHMENT_STATUS, "differs (left as it is)": ATTACHMENT_STATUS["differs"]}
del WRITTEN_STATUS["restore"]

#: how many keys a human listing shows per table before "(+N more)"
SHOWN_KEYS = 8


def _keys(keys: list[dict[str, Any]]) -> str:
    """id 12, 57, 203 (+9 more); composite keys in full: (a=1, b=2), ..."""
    from crmops.undo.plan import encode_key

    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    first = keys[:SHOWN_KEYS]
    if first and all(len(k) == 1 for k in first) and len({next(iter(k)) for k in first}) == 1:
        return f"{next(iter(first[0]))} " + ", ".join(str(next(iter(k.values()))) for k in first) + more
    return ", ".join(f"({encode_key(k)})" for k in first) + more


def _lead(text: str) -> int:
    return len(text) - len(text.lstrip(" "))


def _v(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def render(console: Any, out: dict[str, Any]) -> None:
    """The plan as a compact per-table summary, then the details a reviewer needs."""
    from crmops.dburl import display
    from crmops.undo.plan import encode_key

    plan = out["plan"]
    src = plan["source"]
    width_of_screen = max(40, min(console.width, 120))

    def say(text: str = "", indent: int = 0, wrap: bool = True) -> None:
        lines = textwrap.wrap(text, width_of_screen, subsequent_indent=" " * (indent or _lead(text) + 2),
                              break_on_hyphens=False, break_long_words=False) if text and wrap else [text]
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    when = str(src.get("snapshot_time") or "")[:16].replace("T", " ")
    what = f"snapshot {str(src.get('snapshot_id'))[:10]} of {when} UTC" if src.get("snapshot_id") else src.get("label")
    say(f"undo from {what}")
    say(f"  into {display(plan['target'])}", wrap=False)
    say(f"  rows: {plan['table']} WHERE {plan['where']}"
        + ("; foreign keys followed" if plan["follow_fks"] else "; foreign keys NOT followed"))
    say()
    width = max([len("table"), len("total")] + [len(t["table"]) for t in plan["tables"]])
    say(f"{'table':<{width}}  re-insert  changed  identical  conflicts")
    for t in plan["tables"]:
        say(f"{t['table']:<{width}}  {t['insert']:>9}  {t['changed']:>7}  {t['identical']:>9}  {t['conflicts']:>9}")
    s = plan["summary"]
    say(f"{'total':<{width}}  {s['insert']:>9}  {s['changed']:>7}  {s['identical']:>9}  {s['conflicts']:>9}")
    by_table: dict[str, list[dict[str, Any]]] = {}
    for row in plan["rows"]:
        if row["action"] == "insert":
            by_table.setdefault(row["table"], []).append(row["key"])
    if by_table:
        say()
        say("re-insert (deleted since the snapshot):")
        why = {t["table"]: "; ".join(t["reasons"]) for t in plan["tables"]}
        for table, keys in by_table.items():
            say(f"  {table} ({why.get(table) or 'selected'}): {_keys(keys)}")
    changed = [r for r in plan["rows"] if r["action"] == "changed"]
    if changed:
        kept = plan["changed_policy"] == "keep-live"
        say()
        say("changed since the snapshot (" + ("kept as they are live; --changed take-snapshot writes the "
                                                 "snapshot's values" if kept else "the snapshot's values are written")
            + "):")
        for r in changed:
            say(f"  {r['table']} {encode_key(r['key'])}:")
            for c in r["columns"]:
                say(f"    {c['column']}: live {_v(c['live'])}, snapshot {_v(c['snapshot'])}")
    if plan["conflicts"]:
        say()
        say("conflicts (nothing is written while any remains):")
        for c in plan["conflicts"]:
            say(f"  {c['table']} {encode_key(c['key'])}: {c['detail']}")
    if plan["attachments"]:
        counts: dict[str, int] = {}
        for a in plan["attachments"]:
            counts[a["status"]] = counts.get(a["status"], 0) + 1
        say()
        say("attachment files: " + ", ".join(f"{n} {ATTACHMENT_STATUS.get(s, s)}" for s, n in sorted(counts.items())))
        for a in plan["attachments"][:SHOWN_KEYS]:
            say(f"  {a['path']} ({ATTACHMENT_STATUS.get(a['status'], a['status'])})")
    for w in plan["warnings"]:
        say()
        say(f"warning: {w}")
    say()
    if out["refused"]:
        say("refused: nothing was written.")
        return
    if not out["applied"]:
        say("dry run: nothing was written; --apply writes this plan (after a pre-undo snapshot).")
        return
    w = out["written"] or {}
    if out["pre_undo_snapshot"]:
        say(f"pre-undo snapshot {out['pre_undo_snapshot'][:10]} (tag pre-undo): the whole database before")
    if not (w.get("inserted") or w.get("updated") or w.get("attachments")):
        say("nothing to write: the live database already holds these rows.")
    for table, keys in (w.get("inserted") or {}).items():
        say(f"inserted {len(keys)} into {table}: {_keys(keys)}")
    for table, items in (w.get("updated") or {}).items():
        for item in items:
            say(f"updated {table} {encode_key(item['key'])}: {', '.join(item['columns'])}")
    for c in w.get("counters") or []:
        say(f"counter {c['name']}: {c['before']} -> {c['after']} ({c['action']})")
    for a in w.get("attachments") or []:
        say(f"attachment {a['path']}: {WRITTEN_STATUS.get(a['status'], a['status'])}")
    if out.get("journal"):
        say(f"recorded in {out['journal']}")


@click.command("undo")
@click.option("--table", "table", required=True, metavar="TABLE", help="The table whose rows come back.")
@click.option("--where", "where", required=True, metavar="SQL",
              help="Which rows, as an SQL condition, run only on the snapshot's copy (e.g. \"id IN (42, 57)\").")
@click.option("--from", "snapshot", default="latest", show_default=True, metavar="SNAPSHOT",
              help="The snapshot holding the rows (an id, a unique prefix, or latest).")
@click.option("--follow-fks/--no-follow-fks", default=True, show_default=True,
              help="Also bring back the rows that reference them (contacts, deals, activities ...) and the "
                   "rows they need that are gone.")
@click.option("--apply/--dry-run", "apply", default=False,
              help="Write the plan (default: --dry-run, which only shows it).")
@click.option("--changed", type=click.Choice(["keep-live", "take-snapshot"]), default="keep-live",
              show_default=True, help="Rows changed since the snapshot: keep them, or overwrite with the snapshot's.")
@click.option("--to", "to_url", type=DATABASE_URL, default=None,
              help="The live database (default: the configured one); write its password as ${VAR}.")
@click.option("--attachments-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where attachment files go (default: attachments.path, for the configured database).")
@pass_app
def undo_cmd(app: AppContext, table: str, where: str, snapshot: str, follow_fks: bool, apply: bool, changed: str,
             to_url: str | None, attachments_to: Path | None) -> None:
    """Bring back rows deleted (or changed) since a snapshot, with everything that hangs on them.

    The snapshot is restored into a throwaway sandbox, the rows are chosen there, and the
    plan shows per table what would be re-inserted, what changed since, and any conflict.
    With --apply: a pre-undo snapshot, then one transaction; refused (exit 70) on conflicts.
    """
    from crmops.undo.workflow import UndoRequest, undo

    if not table.strip():
        raise click.UsageError("--table is empty: name the table whose rows come back, e.g. --table accounts")
    app.begin_job("undo")
    request = UndoRequest(table=table, where=where, follow_fks=follow_fks, changed=changed, apply=apply,
                          to_url=to_url, attachments_to=attachments_to)
    result = undo(app.config, request, ref=snapshot, on_step=lambda s: app.say(f"· {s}"))
    out = result.to_dict()
    # a refusal is an error like any other: with --json, main() wraps the plan in the error envelope
    app.emit(out, lambda console: render(console, out))
    result.raise_if_refused()
