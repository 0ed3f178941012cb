"""One atomic writer for the whole package (elip_jax.fileio): whole or nothing, readable by others, used by all."""
import ast
import os
import pathlib
import stat

import pytest

from elip_jax import fileio

ROOT = pathlib.Path(__file__).resolve().parents[1]
RENAMING_CALLS = {"mkstemp", "mkdtemp", "NamedTemporaryFile", "replace", "rename"}  # building, then renaming


def test_no_other_module_writes_by_renaming():
    """A second atomic writer would drift (modes, clean-up): every writer goes through elip_jax.fileio."""
    offenders = []
    for path in sorted((ROOT / "elip_jax").rglob("*.py")):
        if path == ROOT / "elip_jax" / "fileio.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in RENAMING_CALLS
                    and getattr(node.func.value, "id", None) in ("os", "tempfile")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.value.id}.{node.func.attr}")
    assert not offenders, "write through elip_jax.fileio instead:\n" + "\n".join(offenders)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_are_readable_by_others(tmp_path):
    fileio.atomic_write_json(tmp_path / "a" / "result.json", {"acc1": 0.5})
    assert mode(tmp_path / "a" / "result.json") == 0o644
    with fileio.atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "inner").mkdir()
        (tmp / "inner" / "weights.bin").write_bytes(b"x")
        os.chmod(tmp / "inner" / "weights.bin", 0o600)  # as safetensors writes them
    assert mode(tmp_path / "folder") == 0o755 and mode(tmp_path / "folder" / "inner") == 0o755
    assert mode(tmp_path / "folder" / "inner" / "weights.bin") == 0o644
    with fileio.atomic_files(tmp_path / "folder", ("a.json", "b.json")) as tmp:
        for path in tmp.values():
            path.write_text("{}")
    assert mode(tmp_path / "folder" / "a.json") == 0o644


def test_nothing_is_half_written(tmp_path):
    fileio.atomic_write_text(tmp_path / "kept.txt", "old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_directory(tmp_path / "never") as tmp:
            (tmp / "part").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["kept.txt"]  # no folder, no temporary left behind
    with pytest.raises(FileExistsError, match="already exists"):
        with fileio.atomic_directory(tmp_path / "kept.txt"):
            pass
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="thesis.tex"):  # overwrite replaces only a previous write
        with fileio.atomic_directory(tmp_path / "mine", overwrite=True) as tmp:
            (tmp / "config.json").write_text("{}")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert (tmp_path / "kept.txt").read_text() == "old"
