"""Point-in-time recovery: the WAL archive, physical base backups, and replay to a moment.

Kept apart from the logical path (services/backup.py, services/restore.py): a physical
snapshot is a tar of a data directory, useful only together with the archive.
"""
