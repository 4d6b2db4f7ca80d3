"""forget and prune: retention per source, then delete what no snapshot needs.

workflow holds both commands. It sits above verify/ (never forget a source's newest
verified snapshot) and pitr/ (WAL and binlogs no base or dump needs any more).
"""
