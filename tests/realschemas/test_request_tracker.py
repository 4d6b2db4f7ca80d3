"""Request Tracker 5's schema (Debian request-tracker5), on PostgreSQL and MariaDB.

The schema is RT's own etc/schema.Pg / schema.mysql from the package: 33 tables, no foreign
key at all, tickets linked to their history through Transactions (ObjectType, ObjectId),
attachments through TransactionId. The rows are written the way RT writes them (a ticket,
its Create / Correspond / Status transactions, one attachment each, a custom field value,
a link); RT's shredder deletes a ticket with all of those, which undo then brings back
through undo.relations.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.realschemas.harness import Schema, exercise, sql
from tests.realschemas.packages import rt_schema_dir

TICKETS, USERS, QUEUES = 300, 40, 4


def _statements(text: str) -> list[str]:
    text = re.sub(r"^\s*--.*$", "", text, flags=re.M)
    return [s.strip() for s in text.split(";") if s.strip()]


def _t(kind: str, name: str) -> str:
    """RT's table names: lower case on PostgreSQL (unquoted), as written on MariaDB."""
    return name.lower() if kind == "postgresql" else name


def _load_rt(url: str, kind: str) -> None:
    etc = rt_schema_dir()
    sql(url, *_statements((etc / ("schema.Pg" if kind == "postgresql" else "schema.mysql")).read_text()))
    q, u, t = _t(kind, "Queues"), _t(kind, "Users"), _t(kind, "Tickets")
    tx, at, cf, ln = (_t(kind, n) for n in ("Transactions", "Attachments", "ObjectCustomFieldValues", "Links"))
    now = "2026-12-01 10:00:00"
    stmts = [f"INSERT INTO {q} (id, Name, Description, Lifecycle) VALUES ({i}, 'queue {i}', 'q', 'default')"
             for i in range(1, QUEUES + 1)]
    stmts += [f"INSERT INTO {u} (id, Name, EmailAddress, Creator, Created) VALUES "
              f"({i}, 'user{i}', 'user{i}@example.org', 1, '{now}')" for i in range(1, USERS + 1)]
    tid = aid = 0
    for i in range(1, TICKETS + 1):
        stmts.append(f"INSERT INTO {t} (id, EffectiveId, Queue, Type, Owner, Subject, Status, Creator, Created) "
                     f"VALUES ({i}, {i}, {1 + i % QUEUES}, 'ticket', {1 + i % USERS}, 'printer {i} jams', "
                     f"'{('new', 'open', 'resolved')[i % 3]}', {1 + i % USERS}, '{now}')")
        for kind_of in ("Create", "Correspond", "Status"):
            tid += 1
            aid += 1
            stmts.append(f"INSERT INTO {tx} (id, ObjectType, ObjectId, Type, Creator, Created) VALUES "
                         f"({tid}, 'RT::Ticket', {i}, '{kind_of}', {1 + i % USERS}, '{now}')")
            stmts.append(f"INSERT INTO {at} (id, TransactionId, Parent, Subject, ContentType, Content, Creator, "
                         f"Created) VALUES ({aid}, {tid}, 0, 'printer {i}', 'text/plain', 'body {aid}', 1, '{now}')")
        stmts.append(f"INSERT INTO {cf} (CustomField, ObjectType, ObjectId, Content, Creator, Created) VALUES "
                     f"(1, 'RT::Ticket', {i}, 'floor {i % 5}', 1, '{now}')")
        if i > 1:
            stmts.append(f"INSERT INTO {ln} (Base, Target, Type, LocalTarget, LocalBase, Creator, Created) VALUES "
                         f"('fsck.com-rt://example/ticket/{i}', 'fsck.com-rt://example/ticket/{i - 1}', "
                         f"'RefersTo', {i - 1}, {i}, 1, '{now}')")
    # users have transactions too: the same ObjectId, another ObjectType
    for i in range(1, USERS + 1):
        tid += 1
        stmts.append(f"INSERT INTO {tx} (id, ObjectType, ObjectId, Type, Creator, Created) VALUES "
                     f"({tid}, 'RT::User', {i}, 'Set', 1, '{now}')")
    sql(url, *stmts)


def _schema(kind: str) -> Schema:
    t, tx, at, cf, ln = (_t(kind, n) for n in ("Tickets", "Transactions", "Attachments",
                                                "ObjectCustomFieldValues", "Links"))
    col = (lambda c: c.lower()) if kind == "postgresql" else (lambda c: c)
    gone = "(7, 8)"
    return Schema(
        name="Request Tracker 5", core_table=tx, top_table=t, top_where=f"id IN {gone}",
        # what RT's shredder removes with a ticket
        delete=[f"DELETE FROM {at} WHERE TransactionId IN (SELECT id FROM {tx} WHERE ObjectType = 'RT::Ticket' "
                f"AND ObjectId IN {gone})",
                f"DELETE FROM {tx} WHERE ObjectType = 'RT::Ticket' AND ObjectId IN {gone}",
                f"DELETE FROM {cf} WHERE ObjectType = 'RT::Ticket' AND ObjectId IN {gone}",
                f"DELETE FROM {ln} WHERE LocalBase IN {gone}",
                f"DELETE FROM {t} WHERE id IN {gone}"],
        # polymorphic: ObjectId is a ticket's id only where ObjectType says so (users have transactions too)
        relations=[{"table": tx, "column": col("ObjectId"), "type_column": col("ObjectType"),
                    "type_value": "RT::Ticket", "references": f"{t}.id"},
                   {"table": at, "column": col("TransactionId"), "references": f"{tx}.id"},
                   {"table": cf, "column": col("ObjectId"), "type_column": col("ObjectType"),
                    "type_value": "RT::Ticket", "references": f"{t}.id"},
                   {"table": ln, "column": col("LocalBase"), "references": f"{t}.id"}],
        untouched=(_t(kind, "Queues"), _t(kind, "Users")),
        identical=0,  # the users' transactions with ObjectId 7 and 8 are not selected
    )


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_request_tracker_whole_set(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    factory: Callable[[], str] = request.getfixturevalue("pg_url_factory" if kind == "postgresql"
                                                         else "mysql_url_factory")
    src = factory()
    _load_rt(src, kind)
    exercise(_schema(kind), kind, src, factory, tmp_path)
