"""demo CRM 2.0: one contact per e-mail address

Revision ID: d2_0003
Revises: d2_0002
"""

from alembic import op

revision = "d2_0003"
down_revision = "d2_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.create_unique_constraint("uq_contacts_email", ["email"])


def downgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.drop_constraint("uq_contacts_email", type_="unique")
