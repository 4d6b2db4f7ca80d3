"""Compare the rows of a table without any key with the live table: a row is its whole tuple.

Link and relation tables of many PHP CRMs have no primary key and no unique index. Their
rows are compared as a multiset: a tuple the snapshot holds three times and the live
table once is re-inserted twice; a tuple live holds as often as the snapshot is
identical. A row that was changed since therefore counts as one missing (the old
tuple, re-inserted) beside one the snapshot never had (the new one, left as it is).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from crmops.undo.catalog import hashable, unique_keys
from crmops.undo.select import Key, Tables, batches

#: values a live table can be filtered by with IN (...): equality in SQL is equality here
_FILTERABLE = (int, str, date, datetime, time, Decimal, bytes, UUID)
_FILTER_TYPES = (sa.Integer, sa.String, sa.Date, sa.DateTime, sa.Time, sa.Numeric, sa.LargeBinary, sa.Uuid)


@dataclass
class WholeRows:
    """How the snapshot's rows of a key-less table stand against live, by key (values and copy number)."""

    #: why no row can be matched (the table or a column is gone live), else None
    problem: str | None = None
    #: live columns that need a value the snapshot has not
    required: list[str] = field(default_factory=list)
    insert: list[Key] = field(default_factory=list)
    identical: list[Key] = field(default_factory=list)
    #: a row to insert whose unique index values a live row holds: key -> "index (a=1, b=2)"
    taken: dict[Key, list[str]] = field(default_factory=dict)


def classify(live: sa.Connection, inspector: Any, live_tables: Tables, name: str, columns: list[str],
             rows: dict[Key, dict[str, Any]]) -> WholeRows:
    """Sort the rows of a key-less table into insert (missing from live, counted) and identical."""
    out = WholeRows()
    if not inspector.has_table(name):
        out.problem = f"table {name} no longer exists in the live database"
        return out
    t = live_tables[name]
    gone = [c for c in columns if c not in t.c]
    if gone:  # the whole tuple is the key: without a column, no row can be matched
        out.problem = (f"{name}: column(s) {', '.join(gone)} no longer exist live, and {name} has no key: "
                       f"its rows cannot be matched")
        return out
    out.required = [c.name for c in t.columns if c.name not in columns and not c.nullable
                    and c.server_default is None and c.autoincrement is not True]
    live_count = _live_counts(live, t, columns, {k[:-1] for k in rows})
    uniques = [(n, cols) for n, cols in unique_keys(live, name, ()) if all(c in columns for c in cols)]
    for key in rows:
        if key[-1] <= live_count.get(key[:-1], 0):
            out.identical.append(key)
            continue
        out.insert.append(key)
        for uname, ucols in uniques:
            values = [rows[key][c] for c in ucols]
            if any(v is None for v in values):
                continue
            cond = sa.and_(*(t.c[c] == sa.bindparam(None, v, type_=t.c[c].type)
                             for c, v in zip(ucols, values, strict=True)))
            if live.execute(sa.select(sa.literal(1)).select_from(t).where(cond).limit(1)).first():
                out.taken.setdefault(key, []).append(
                    f"{uname} ({', '.join(f'{c}={v!r}' for c, v in zip(ucols, values, strict=True))})")
    return out


def _live_counts(live: sa.Connection, t: sa.Table, columns: list[str], wanted: set[Key]) -> Counter[Key]:
    """How often live holds each wanted tuple. Read by the most selective column that every wanted
    tuple has a plain value in (e.g. the link's id), else the whole table."""
    counts: Counter[Key] = Counter()
    if not wanted:
        return counts
    best: tuple[int, int] | None = None
    for i in range(len(columns)):
        if not isinstance(t.c[columns[i]].type, _FILTER_TYPES):
            continue
        values = {w[i] for w in wanted}
        plain = all(v is not None and isinstance(v, _FILTERABLE) and not isinstance(v, bool) for v in values)
        if plain and (best is None or len(values) > best[1]):
            best = (i, len(values))
    if best is None:
        reads = [sa.select(t)]
    else:
        col = t.c[columns[best[0]]]
        reads = [sa.select(t).where(col.in_(batch)) for batch in batches(sorted({w[best[0]] for w in wanted},
                                                                             key=repr))]
    for stmt in reads:
        for r in live.execute(stmt).mappings():
            values = tuple(hashable(r[c]) for c in columns)
            if values in wanted:
                counts[values] += 1
    return counts
