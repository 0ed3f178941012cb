"""Write a folder or file completely or not at all: build it under a temporary name, then rename.

What is written is readable by others (folders 0755, files 0644), like every other output of elip_jax:
mkdtemp's 0700 and mkstemp's 0600 would otherwise survive the rename and hide a converted checkpoint from
the other users of a shared machine. `check_output` refuses a bad --output before anything is read.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from elip_jax.convert.errors import ConversionError

FOLDER_MODE, FILE_MODE = 0o755, 0o644


def _check_target(final: Path, overwrite: bool, writes: Optional[tuple] = None):
    """writes: what the new folder holds; --overwrite replaces a folder only if it holds nothing else (a
    previous conversion, or nothing), so a mistyped --output . --overwrite cannot delete a user's files."""
    if final.exists() and not overwrite:
        raise ConversionError(f"{final} already exists; choose another --output or pass --overwrite")
    if final.is_dir() and writes is not None:
        others = sorted(set(os.listdir(final)) - set(writes))
        if others:
            raise ConversionError(f"--overwrite replaces {final} only if it holds a previous conversion "
                                  f"({', '.join(sorted(writes))}); it also holds {', '.join(others[:5])}"
                                  f"{' ...' if len(others) > 5 else ''}: choose another --output")


def check_output(output, overwrite: bool, writes: tuple = (), inside: Optional[tuple] = None,
                 source=None) -> Path:
    """Refuses an --output that cannot be written, before any checkpoint is read.

    writes: the names the output folder will hold (with --overwrite an existing folder that holds anything
    else is refused). inside: instead, the names of files to write inside `output`, which may already exist
    as a folder (only those files are replaced). source: the input path, which an output may never be or
    contain."""
    final = Path(output).absolute()
    if source is not None:
        src = Path(source).resolve()
        if final.resolve() == src or src.is_relative_to(final.resolve()):
            raise ConversionError(f"--output {output} would replace the --input {source}; choose another --output")
    if final.exists() and not final.is_dir():
        raise ConversionError(f"--output {output} is an existing file; expected a folder path")
    if inside is None:
        _check_target(final, overwrite, writes)
    elif final.is_dir() and not overwrite:
        for name in inside:
            if (final / name).exists():
                raise ConversionError(f"{final / name} already exists; choose another --output or pass --overwrite")
    ancestor = final if final.is_dir() else final.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"--output {output} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConversionError(f"--output {output} cannot be written: no write permission in {ancestor}")
    return final


def _make_readable(root: Path):
    """Folders 0755, files 0644 (safetensors writes 0600 files, mkdtemp makes a 0700 folder)."""
    os.chmod(root, FOLDER_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), FOLDER_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), FILE_MODE)


@contextlib.contextmanager
def atomic_directory(final, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder next to `final`; on success it becomes `final`, on error it is removed."""
    final = Path(final).absolute()
    _check_target(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _make_readable(tmp)
        _check_target(final, overwrite, tuple(os.listdir(tmp)))
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
def atomic_files(folder, names: tuple, overwrite: bool = False) -> Iterator[dict]:
    """Yields {name: temporary path} in the existing `folder`; on success each replaces folder/name (the
    renames follow one another once every file is complete); on error nothing of them is left."""
    folder = Path(folder).absolute()
    for name in names:
        _check_target(folder / name, overwrite)
    temporary = {}
    try:
        for name in names:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=folder)
            os.close(fd)
            temporary[name] = Path(tmp)
        yield dict(temporary)
        for name, tmp in temporary.items():
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, folder / name)
    except BaseException:
        for tmp in temporary.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        raise
