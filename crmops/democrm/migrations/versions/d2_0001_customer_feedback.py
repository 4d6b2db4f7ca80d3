"""demo CRM 2.0: a "feedback" pipeline stage after won, and the customer_feedback table

Revision ID: d2_0001
Revises: d1_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "d2_0001"
down_revision = "d1_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("INSERT INTO pipeline_stages (id, name, position) VALUES (6, 'feedback', 45)")
    op.create_table(
        "customer_feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("opportunity_id", sa.Integer, sa.ForeignKey("opportunities.id"), nullable=False),
        sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id")),
        sa.Column("rating", sa.SmallInteger, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_customer_feedback_opportunity", "customer_feedback", ["opportunity_id"])


def downgrade() -> None:
    # dropping a table drops its indexes (MariaDB refuses to drop one a foreign key uses)
    op.drop_table("customer_feedback")
    # opportunities parked in the feedback stage go back to won, the stage before it
    op.execute("UPDATE opportunities SET stage_id = 4 WHERE stage_id = 6")
    op.execute("DELETE FROM pipeline_stages WHERE id = 6")
