"""`python -m crmops` runs the command line."""

from crmops.cli.main import main

main()
