"""Schema migrations around Alembic: revision scripts, running them safely, pre-checks,
lint, schema comparison and the run journal.

Alembic does the migrating; this package adds what a live CRM needs around it. It
knows nothing of repositories or backups: crmops.services.migrate composes it with them.
"""
