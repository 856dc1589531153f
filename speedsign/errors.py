"""The one exception type for bad input from a user (files, uploads, settings).

The command line turns it into exit code 2 and a one-line message on stderr; the pages show
its message. Anything else that escapes is a bug in speedsign, not the user's fault.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input from a user that speedsign refuses, with a message that says what to do."""
