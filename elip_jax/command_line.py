"""What every `python -m elip_jax.*` command does with bad input: one line `error: ...`, exit code 2.

A user who mistypes a dataset name should read one sentence that names what was expected, not a traceback
from deep inside a library. Library code raises ordinary exceptions (ValueError for bad values, OSError for
files); only the command-line entry points turn them into that line, through `run_command`. Set
ELIP_JAX_TRACEBACK=1 to see the full traceback instead (when reporting a bug).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

EXIT_USAGE = 2

# What a user's input can cause. A KeyError's message is only the missing key, so it gets a prefix.
USER_ERRORS = (ValueError, OSError, KeyError)


class UsageError(ValueError):
    """Bad input from the command line (a flag, a path, a name); its message is shown as it is."""


def error_line(error: BaseException) -> str:
    """The one line a user sees for `error`."""
    if isinstance(error, KeyError) and not isinstance(error, UsageError):
        message = f"missing key {error.args[0]!r}" if error.args else "missing key"
    else:
        message = str(error) or type(error).__name__
    return "error: " + " ".join(message.split())


def fail(error: BaseException) -> int:
    print(error_line(error), file=sys.stderr, flush=True)
    return EXIT_USAGE


def run_command(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Runs `main(argv)`; bad input becomes one `error: ...` line on stderr and exit code 2.

    Returns the exit code: `main`'s own if it returned an int, else 0."""
    try:
        result = main(argv)
    except USER_ERRORS as error:
        if os.environ.get("ELIP_JAX_TRACEBACK"):
            raise
        return fail(error)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
