"""Write a folder or file completely or not at all: build it under a temporary name, then rename."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from elip_jax.convert.errors import ConversionError


def _check_target(final: Path, overwrite: bool):
    if final.exists() and not overwrite:
        raise ConversionError(f"{final} already exists; choose another --output or pass --overwrite")


@contextlib.contextmanager
def atomic_directory(final, overwrite: bool = False):
    """Yields a temporary folder next to `final`; on success it becomes `final`, on error it is removed."""
    final = Path(final).absolute()
    _check_target(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # --overwrite: move the old one aside first so the swap is one rename
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final, overwrite: bool = False):
    """Yields a temporary file path next to `final`; on success it replaces `final`."""
    final = Path(final).absolute()
    _check_target(final, overwrite)
    if final.is_dir():
        raise ConversionError(f"{final} is a folder; expected a file path")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
