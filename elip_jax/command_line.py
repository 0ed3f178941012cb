"""What every `python -m elip_jax.*` command does with bad input: one line `error: ...`, exit code 2.

A user who mistypes a dataset name should read one sentence that names what was expected, not a traceback
from deep inside a library. Library code raises ordinary exceptions (ValueError for bad values, OSError for
files); only the command-line entry points turn them into that line, through `run_command`. Set
ELIP_JAX_TRACEBACK=1 to see the full traceback instead (when reporting a bug).
"""
from __future__ import annotations

import argparse
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors become one `error: ...` line (through run_command), not usage + exit."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def check_output_file(path: str, flag: str = "--output", suffix: str = "") -> None:
    """Fails before any work when `path` cannot be written as a file: a folder, a parent that is a file, a
    folder without write permission, or (with `suffix`) another kind of file. The write itself checks again;
    this is the early, one-line answer."""
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        example = os.path.join(path or ".", "result" + (suffix or ".json"))
        raise UsageError(f"{flag} must name a file, not a folder; got {path!r} (e.g. {example!r})")
    if suffix and not path.lower().endswith(suffix):
        raise UsageError(f"{flag} {path!r} must name a {suffix} file")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {path!r} cannot be written: {existing!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r} cannot be written: no permission to write in {existing!r}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path!r} exists and is not writable")
