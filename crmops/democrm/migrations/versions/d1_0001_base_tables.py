"""demo CRM 1.0: users, roles, accounts, contacts, leads

Revision ID: d1_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "d1_0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "roles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("permissions", sa.JSON, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("role_id", sa.Integer, sa.ForeignKey("roles.id"), nullable=False),
        sa.Column("login", sa.String(64), nullable=False, unique=True),
        sa.Column("full_name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("industry", sa.String(100)),
        sa.Column("website", sa.String(255)),
        sa.Column("annual_revenue", sa.Numeric(16, 2)),
        sa.Column("address", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_accounts_owner", "accounts", ["owner_id"])
    op.create_table(
        "contacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("phone", sa.String(50)),
        sa.Column("title", sa.String(100)),
        sa.Column("notes", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_contacts_account", "contacts", ["account_id"])
    op.create_index("ix_contacts_email", "contacts", ["email"])
    op.create_table(
        "leads",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id")),
        sa.Column("company", sa.String(200), nullable=False),
        sa.Column("contact_name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(255)),
        sa.Column("source", sa.String(50), nullable=False),
        sa.Column("score", sa.Integer),
        sa.Column("created_at", TZ, nullable=False),
    )


def downgrade() -> None:
    # dropping a table drops its indexes (MariaDB refuses to drop one a foreign key uses)
    op.drop_table("leads")
    op.drop_table("contacts")
    op.drop_table("accounts")
    op.drop_table("users")
    op.drop_table("roles")
