"""demo CRM 1.0: sales pipeline, opportunities, activities, attachments

Revision ID: d1_0002
Revises: d1_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "d1_0002"
down_revision = "d1_0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
STAGES = [(1, "lead", 10), (2, "intent", 20), (3, "quote", 30), (4, "won", 40), (5, "lost", 50)]


def upgrade() -> None:
    stages = op.create_table(
        "pipeline_stages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.bulk_insert(stages, [{"id": i, "name": n, "position": p} for i, n, p in STAGES])
    op.create_table(
        "opportunities",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id")),
        sa.Column("stage_id", sa.Integer, sa.ForeignKey("pipeline_stages.id"), nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("expected_close", sa.Date),
        sa.Column("details", sa.JSON),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_opportunities_stage", "opportunities", ["stage_id"])
    op.create_index("ix_opportunities_account", "opportunities", ["account_id"])
    op.create_table(
        "activities",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id")),
        sa.Column("opportunity_id", sa.Integer, sa.ForeignKey("opportunities.id")),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("body", sa.Text),
        sa.Column("duration_seconds", sa.Integer),
        sa.Column("occurred_at", TZ, nullable=False),
    )
    op.create_index("ix_activities_contact", "activities", ["contact_id"])
    op.create_index("ix_activities_occurred", "activities", ["occurred_at"])
    op.create_table(
        "attachments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("opportunity_id", sa.Integer, sa.ForeignKey("opportunities.id")),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("storage_path", sa.String(500), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("thumbnail", sa.LargeBinary),
        sa.Column("uploaded_at", TZ, nullable=False),
    )


def downgrade() -> None:
    # dropping a table drops its indexes (MariaDB refuses to drop one a foreign key uses)
    op.drop_table("attachments")
    op.drop_table("activities")
    op.drop_table("opportunities")
    op.drop_table("pipeline_stages")
