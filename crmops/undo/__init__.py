"""Undo: put back rows deleted or changed since a snapshot, without a whole restore.

catalog (tables, keys and relations), select (the rows to bring back and their closure),
plan (what an apply would write), apply (one transaction on the live database), source
(a database holding the past: a sandbox restored from a snapshot), workflow (the command).
May import services/, pitr/ and the core packages; nothing above.
"""
