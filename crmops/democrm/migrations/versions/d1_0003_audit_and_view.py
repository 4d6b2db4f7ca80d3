"""demo CRM 1.0: audit log filled by a trigger on stage changes; pipeline view

Revision ID: d1_0003
Revises: d1_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "d1_0003"
down_revision = "d1_0002"
branch_labels = None
depends_on = None

VIEW = """
CREATE VIEW pipeline_summary AS
SELECT s.id AS stage_id, s.name AS stage, s.position AS position,
       COUNT(o.id) AS opportunities, COALESCE(SUM(o.amount), 0) AS total_amount
FROM pipeline_stages s LEFT JOIN opportunities o ON o.stage_id = s.id
GROUP BY s.id, s.name, s.position
"""

TRIGGERS = {
    "postgresql": [
        """
        CREATE FUNCTION log_opportunity_stage() RETURNS trigger AS $$
        BEGIN
          IF NEW.stage_id IS DISTINCT FROM OLD.stage_id THEN
            INSERT INTO audit_log (entity, entity_id, field, old_value, new_value, changed_at)
            VALUES ('opportunity', NEW.id, 'stage_id', OLD.stage_id::text, NEW.stage_id::text, NEW.updated_at);
          END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql
        """,
        """
        CREATE TRIGGER trg_opportunity_stage AFTER UPDATE OF stage_id ON opportunities
        FOR EACH ROW EXECUTE FUNCTION log_opportunity_stage()
        """,
    ],
    "mysql": [
        """
        CREATE TRIGGER trg_opportunity_stage AFTER UPDATE ON opportunities FOR EACH ROW
        BEGIN
          IF NOT (NEW.stage_id <=> OLD.stage_id) THEN
            INSERT INTO audit_log (entity, entity_id, field, old_value, new_value, changed_at)
            VALUES ('opportunity', NEW.id, 'stage_id', OLD.stage_id, NEW.stage_id, NEW.updated_at);
          END IF;
        END
        """,
    ],
    "sqlite": [
        """
        CREATE TRIGGER trg_opportunity_stage AFTER UPDATE OF stage_id ON opportunities
        WHEN NEW.stage_id IS NOT OLD.stage_id
        BEGIN
          INSERT INTO audit_log (entity, entity_id, field, old_value, new_value, changed_at)
          VALUES ('opportunity', NEW.id, 'stage_id', OLD.stage_id, NEW.stage_id, NEW.updated_at);
        END
        """,
    ],
}


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("entity", sa.String(50), nullable=False),
        sa.Column("entity_id", sa.Integer, nullable=False),
        sa.Column("field", sa.String(50), nullable=False),
        sa.Column("old_value", sa.String(255)),
        sa.Column("new_value", sa.String(255)),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    for statement in TRIGGERS[op.get_bind().dialect.name]:
        op.execute(statement)
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW pipeline_summary")
    op.execute("DROP TRIGGER trg_opportunity_stage" + (" ON opportunities" if _pg() else ""))
    if _pg():
        op.execute("DROP FUNCTION log_opportunity_stage()")
    op.drop_table("audit_log")


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"
