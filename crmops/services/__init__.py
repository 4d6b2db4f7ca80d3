"""The small workflows every capability builds on: backup, restore, sources, check, repair,
locks (unlock), schedule and migrate (with migrate_schema).

Each is small enough to need no package of its own. May import the core packages
(engines, sandbox, repository, storage, playbooks, migrations, democrm) and nothing above.
"""
