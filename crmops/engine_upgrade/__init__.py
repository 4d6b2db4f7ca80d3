"""Database engine upgrades (a new major version) as a playbook step.

step (one executor choosing the method), logical (dump and restore into the new
server), pg_upgrade (PostgreSQL's in-place upgrade) and box (its rehearsal container),
compare (fingerprints across versions and smoke SQL, shared by both methods).
May import verify/, services/ and the core packages.
"""
