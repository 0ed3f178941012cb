"""What the converter writes and where: outputs readable by others, the open_clip folder, --output checked
before anything is read, one-line errors from the command line, and training workdirs as export inputs."""
import json
import os
import pickle
import stat
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from elip_jax.convert import ConversionError, convert_checkpoint, export_checkpoint, openai_layout
from elip_jax.convert import params_from_checkpoint, save_pretrained
from elip_jax.convert.cli import main

sys.path.insert(0, os.path.dirname(__file__))
from convert_support import SMALL, assert_trees_equal, random_params  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GELU = SMALL.replace(activation="gelu", vision_heads=4)  # states what a plain state dict cannot


@pytest.fixture(scope="module")
def params():
    return random_params(GELU, seed=5)


@pytest.fixture
def elip_folder(tmp_path, params):
    return save_pretrained(tmp_path / "elip", params, GELU)


def modes(root):
    """{relative path: permission bits} of a folder and everything in it, or of one file."""
    if os.path.isfile(root):
        return {os.path.basename(root): stat.S_IMODE(os.stat(root).st_mode)}
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def test_converted_and_exported_checkpoints_are_readable_by_others(tmp_path, params, elip_folder):
    """mkdtemp's 0700 used to survive the rename: a converted folder no one else could open."""
    safetensors.numpy.save_file(openai_layout.from_params(params, GELU), tmp_path / "w.safetensors")
    (tmp_path / "existing").mkdir(mode=0o755)
    old_umask = os.umask(0o022)  # what a shared machine usually has; mkdtemp/mkstemp ignore it
    try:
        convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "converted", activation="gelu")
        export_checkpoint(elip_folder, "hf", tmp_path / "hf")
        export_checkpoint(elip_folder, "open_clip", tmp_path / "open_clip")
        export_checkpoint(elip_folder, "open_clip", tmp_path / "existing")
    finally:
        os.umask(old_umask)
    for output in ("converted", "hf", "open_clip", "existing"):
        found = modes(tmp_path / output)
        assert len(found) > 2, found
        for path, mode in found.items():
            expected = 0o755 if os.path.isdir(tmp_path / output / path) else 0o644
            assert mode == expected, f"{output}/{path}: {oct(mode)}, expected {oct(expected)}"


def test_open_clip_output_is_a_hub_folder_and_an_existing_folder_receives_it(tmp_path, params, elip_folder):
    names = ["open_clip_config.json", "open_clip_model.safetensors"]
    assert sorted(os.listdir(export_checkpoint(elip_folder, "open_clip", tmp_path / "new" / "oc"))) == names
    shared = tmp_path / "exports"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine")
    export_checkpoint(elip_folder, "open_clip", f"{shared}/")
    assert sorted(os.listdir(shared)) == ["notes.txt"] + names
    before = (shared / "open_clip_model.safetensors").read_bytes()
    with pytest.raises(ConversionError, match=r"exports/open_clip_model.safetensors already exists(.|\n)*--overwrite"):
        export_checkpoint(elip_folder, "open_clip", shared)
    other = save_pretrained(tmp_path / "other", random_params(GELU, seed=6), GELU)
    export_checkpoint(other, "open_clip", shared, overwrite=True)  # replaces the two files, nothing else
    assert (shared / "open_clip_model.safetensors").read_bytes() != before
    assert sorted(os.listdir(shared)) == ["notes.txt"] + names and (shared / "notes.txt").read_text() == "mine"
    assert_trees_equal(params_from_checkpoint(tmp_path / "new" / "oc")[0], params)
    assert json.loads((shared / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is False


def test_bad_output_is_refused_before_the_input_is_read(tmp_path, elip_folder):
    """The input here cannot be read at all: the error must be about --output, found first."""
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(ConversionError, match=r"--to open_clip writes an open_clip folder(.|\n)*not a weights file"):
        export_checkpoint(missing, "open_clip", tmp_path / "vit.safetensors")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConversionError, match=r"taken already exists"):
        export_checkpoint(missing, "hf", tmp_path / "taken")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{" + b" " * 7)
    with pytest.raises(ConversionError, match=r"taken already exists"):
        convert_checkpoint(tmp_path / "corrupt.safetensors", tmp_path / "taken")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConversionError, match="is an existing file; expected a folder path"):
        export_checkpoint(missing, "hf", tmp_path / "a-file")
    with pytest.raises(ConversionError, match="a-file is a file, not a folder"):
        convert_checkpoint(tmp_path / "corrupt.safetensors", tmp_path / "a-file" / "out")
    with pytest.raises(ConversionError, match="would replace the --input"):
        export_checkpoint(elip_folder, "hf", elip_folder, overwrite=True)
    assert (elip_folder / "params").is_dir()


def run_cli(*args):
    run = subprocess.run([sys.executable, "-m", "elip_jax.convert", *map(str, args)], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    return run.returncode, run.stderr


def assert_one_line_error(code_and_stderr, *fragments):
    code, stderr = code_and_stderr
    assert code == 2 and stderr.startswith("error: ") and len(stderr.splitlines()) == 1, (code, stderr)
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


class RunsTrue:
    def __reduce__(self):
        return os.system, ("true",)


def test_command_line_errors_are_one_line(tmp_path, params, elip_folder):
    """Each of these used to print a usage block or a traceback, or (the first) convert silently."""
    safetensors.numpy.save_file(openai_layout.from_params(params, GELU), tmp_path / "w.safetensors")
    assert_one_line_error(run_cli("--input", tmp_path / "w.safetensors", "--output", tmp_path / "out"),
                          "does not state its activation", "--activation", "--model", "nothing was written")
    assert not (tmp_path / "out").exists()
    assert_one_line_error(run_cli("--input", tmp_path / "w.safetensors"), "--output", "--help")
    assert_one_line_error(run_cli("--input", elip_folder, "--to", "torch", "--output", tmp_path / "x"),
                          "--to: invalid choice: 'torch'")
    (tmp_path / "code.pkl").write_bytes(pickle.dumps({"w": RunsTrue()}, protocol=4))  # torch used to warn first
    assert_one_line_error(run_cli("--input", tmp_path / "code.pkl", "--output", tmp_path / "out"), "refused to load")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((elip_folder / "config.json").read_text())
    (corrupt / "params").mkdir()
    (corrupt / "params" / "_METADATA").write_text("{not json")
    assert_one_line_error(run_cli("--input", corrupt, "--to", "hf", "--output", tmp_path / "hf"), "cannot be restored")
    document = json.loads((elip_folder / "config.json").read_text())
    document["config"]["vision_depth"] = 3
    (corrupt / "config.json").write_text(json.dumps(document))
    assert_one_line_error(run_cli("--input", corrupt, "--to", "open_clip", "--output", tmp_path / "oc"),
                          "holds no valid model config", "vision_depth")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "oc").exists()


def test_a_training_workdir_exports_to_hf_and_open_clip(tmp_path, smoke_workdir):
    """`--to hf|open_clip --input WORKDIR` used to fail: only converted folders were read."""
    import orbax.checkpoint as ocp
    from pathlib import Path
    workdir = Path(smoke_workdir())  # tests/conftest.py: configs/smoke.py, 12 steps; only read here
    trained = ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / "12" / "state"))["params"]
    for target in ("hf", "open_clip"):
        assert main(["--input", str(workdir), "--to", target, "--output", str(tmp_path / target)]) == 0
        again, exported_config, _ = params_from_checkpoint(tmp_path / target)  # no flags: the folder says it all
        assert exported_config.to_dict() == json.loads((workdir / "model_config.json").read_text())
        assert_trees_equal(again, _as_float32(trained))


def _as_float32(tree):
    import jax
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
