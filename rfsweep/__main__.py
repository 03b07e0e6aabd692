"""`python -m rfsweep [overrides]`: the main entry point (`rfsweep.cli.main`)."""

from rfsweep.cli.main import main

if __name__ == "__main__":
    main()
