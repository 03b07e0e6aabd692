"""`python -m rfsweep [overrides]`: the main entry point (`rfsweep.cli.main`)."""

from rfsweep.cli.main import main

main()
