"""`python -m speedsign`: see speedsign/cli.py."""

import sys

from speedsign.cli import main

if __name__ == "__main__":
    sys.exit(main())
