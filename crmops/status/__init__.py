"""What monitoring and managers see: job records, verdicts, metrics and the status page.

jobs (one lock and one record per unattended run), metrics (Prometheus text and push),
verdicts (green/amber/red from the repository, runs and archives), page (the HTML page).
The top capability: may import every package below cli/.
"""
