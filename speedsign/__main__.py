"""`python -m speedsign`: see speedsign/cli.py."""

import sys
import time

from speedsign.machine import process_age

# Before anything heavy is imported: a time budget counts from the process's start.
STARTED = time.monotonic() - process_age()

from speedsign.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started=STARTED))
