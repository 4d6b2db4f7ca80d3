"""Proof that backups restore: verify, drill, their checks, signed records and reports.

workflow (restore into a sandbox and compare), checks (assertions and the fingerprint
comparison), record (signed verification records), report (the drill report),
pitr (verify a point-in-time restore).
May import pitr/, services/ and the core packages.
"""
