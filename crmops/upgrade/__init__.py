"""Staged upgrades: run a playbook for real, or rehearse it on throwaway copies.

workflow (run, resume, roll back), steps (the executors that touch databases and
snapshots), rehearsal (the dry run), forecast (downtime from the measured steps), stack
and rehearsal_steps (the copies the dry run works on), report (the rehearsal report).
May import engine_upgrade/, verify/, undo/, pitr/, services/ and the core packages.
"""
