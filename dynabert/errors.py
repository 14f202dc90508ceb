"""The one error type users see.

Anything the user can fix (a bad config key, a malformed TSV row, a missing file) is raised as
``UserError`` with a one-line message that names the file, line or dotted key. The command-line
entry points print it as ``error: <message>`` and exit with status 2, without a traceback.
"""
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input, reported in one line; exit status 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class TrainingDiverged(UserError):
    """A non-finite loss or gradient with run.on_nonfinite=stop; exit status 3."""

    exit_code = 3


def run_reporting_errors(fn: Callable[[], object]) -> int:
    """Run a command's body: 0, or a UserError printed as one ``error:`` line and its exit code."""
    try:
        fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0
