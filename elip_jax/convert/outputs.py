"""The converter's --output check: a bad --output is refused before any checkpoint is read.

Writing itself goes through the package's one atomic writer (elip_jax.fileio): whole or not at all, folders
0755 and files 0644.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from elip_jax.convert.errors import ConversionError
from elip_jax.fileio import ReplaceRefused, check_replaceable


def _check_target(final: Path, overwrite: bool, writes: Optional[tuple] = None):
    """writes: what the new folder holds; --overwrite replaces a folder only if it holds nothing else (a
    previous conversion, or nothing), so a mistyped --output . --overwrite cannot delete a user's files. The
    rule is fileio's (the one the writer applies again at the rename); only the words are the converter's."""
    try:
        check_replaceable(final, overwrite, writes)
    except ReplaceRefused as refused:
        if not refused.others:
            raise ConversionError(f"{final} already exists; choose another --output or pass --overwrite") from None
        raise ConversionError(f"--overwrite replaces {final} only if it holds a previous conversion "
                              f"({', '.join(refused.writes)}); it also holds {refused.listed_others()}: "
                              "choose another --output") from None


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
    elif final.is_dir():
        for name in inside:
            _check_target(final / name, overwrite)
    ancestor = final if final.is_dir() else final.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"--output {output} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConversionError(f"--output {output} cannot be written: no write permission in {ancestor}")
    return final
