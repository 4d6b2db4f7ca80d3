"""demo CRM 2.0: merge duplicate contacts (same e-mail within one account)

Rule: contacts whose lower(trim(email)) match AND that belong to the same account are
one person entered twice; the lowest id survives, activities, opportunities and
feedback are re-pointed to it, the others are deleted, and every e-mail is stored
normalised. Duplicates spanning two accounts are not merged: that needs a person to
decide, so the migration fails and names them (the unique constraint in the next
revision could not be added anyway). The downgrade keeps the merge (data is not
un-merged) and only the schema goes back.

Revision ID: d2_0002
Revises: d2_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "d2_0002"
down_revision = "d2_0001"
branch_labels = None
depends_on = None

REFERENCES = [("activities", "contact_id"), ("opportunities", "contact_id"), ("customer_feedback", "contact_id")]


class UnmergeableDuplicates(RuntimeError):
    pass


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, account_id, email FROM contacts ORDER BY id")).all()
    groups: dict[str, list[tuple[int, int]]] = {}
    for cid, account_id, email in rows:
        groups.setdefault(email.strip().lower(), []).append((cid, account_id))
    cross = sorted(e for e, members in groups.items() if len({a for _, a in members}) > 1)
    if cross:
        raise UnmergeableDuplicates(
            f"contacts share an e-mail across accounts and cannot be merged: {', '.join(cross[:10])}"
            + (f" (+{len(cross) - 10} more)" if len(cross) > 10 else ""))
    for members in groups.values():
        if len(members) < 2:
            continue
        keep, drop = members[0][0], [cid for cid, _ in members[1:]]
        for table, column in REFERENCES:
            bind.execute(sa.text(f"UPDATE {table} SET {column} = :keep WHERE {column} IN :drop")
                         .bindparams(sa.bindparam("drop", expanding=True)), {"keep": keep, "drop": drop})
        bind.execute(sa.text("DELETE FROM contacts WHERE id IN :drop")
                     .bindparams(sa.bindparam("drop", expanding=True)), {"drop": drop})
    bind.execute(sa.text("UPDATE contacts SET email = LOWER(TRIM(email)) WHERE email <> LOWER(TRIM(email))"))


def downgrade() -> None:
    pass
