"""The package's one atomic writer: a file or a folder is written whole or not at all, readable by others.

Everything is built under a temporary name beside its destination and renamed into place, so a reader (or a
resumed run) never sees half of it. What lands is readable by the other users of a shared machine (files 0644,
folders 0755): mkstemp's 0600 and mkdtemp's 0700 would otherwise survive the rename. Standard library only, so
data workers, evaluation, training and conversion all import it without pulling in model code.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

FOLDER_MODE, FILE_MODE = 0o755, 0o644


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path, data: bytes) -> None:
    """Writes to a temporary file beside `path`, then renames it over `path` (file mode 0644)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, document) -> None:
    atomic_write_text(path, json.dumps(document, indent=2, default=float) + "\n")


def make_readable(root) -> None:
    """Folders 0755, files 0644 under `root` (safetensors and Orbax may write 0600 files)."""
    os.chmod(root, FOLDER_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), FOLDER_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), FILE_MODE)


class ReplaceRefused(FileExistsError):
    """`path` may not be replaced: it exists and overwrite was not given (`others` is empty), or it is a folder
    that holds `others` besides what the new one `writes`. Callers with their own vocabulary (the converter's
    --output, --overwrite) reword it from these fields; the decision itself is made only in check_replaceable."""

    def __init__(self, path: Path, writes: Optional[tuple] = None, others: tuple = ()):
        self.path, self.writes, self.others = path, tuple(sorted(writes or ())), tuple(others)
        if others:
            message = (f"{path} is replaced only if it holds a previous write of {', '.join(self.writes)}; "
                       f"it also holds {self.listed_others()}")
        else:
            message = f"{path} already exists (choose another destination or overwrite it)"
        super().__init__(message)

    def listed_others(self, at_most: int = 5) -> str:
        """The first few foreign names, enough to recognise the folder without flooding a one-line error."""
        return ", ".join(self.others[:at_most]) + (" ..." if len(self.others) > at_most else "")


def check_replaceable(final: Path, overwrite: bool, writes: Optional[tuple] = None) -> None:
    """Raises ReplaceRefused (a FileExistsError) when `final` exists and may not be replaced. writes: what the
    new folder holds; an existing folder is replaced only if it holds nothing else (a previous write of the
    same kind), so a mistyped destination with overwrite=True cannot delete a user's files."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ReplaceRefused(final)
    if final.is_dir() and writes is not None:
        others = sorted(set(os.listdir(final)) - set(writes))
        if others:
            raise ReplaceRefused(final, writes, tuple(others))


@contextlib.contextmanager
def atomic_directory(final, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder next to `final`; on success it becomes `final` (0755 folders, 0644 files),
    on error it is removed. With overwrite, an existing `final` is swapped out by one rename."""
    final = Path(final).absolute()
    check_replaceable(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        make_readable(tmp)
        check_replaceable(final, overwrite, tuple(os.listdir(tmp)))
        if final.exists():  # move the old one aside first so the swap is one rename
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
        check_replaceable(folder / name, overwrite)
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
