"""Bad input fails with a message naming what was found and what was expected, writes nothing, and a
checkpoint that carries code is refused without running it."""
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
import safetensors.numpy

from elip_jax.convert import ConversionError, UnsafeCheckpointError, convert_checkpoint, openai_layout, read_config
from elip_jax.convert.cli import main

sys.path.insert(0, os.path.dirname(__file__))
from convert_support import SMALL, random_params  # noqa: E402


@pytest.fixture(scope="module")
def state_dict():
    return openai_layout.from_params(random_params(SMALL, seed=3), SMALL)


class RunsShell:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def assert_fails_cleanly(tmp_path, source, match, error=ConversionError):
    output = tmp_path / "out"
    with pytest.raises(error, match=match):
        convert_checkpoint(source, output)
    assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "temporary folder left behind"


def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    for protocol, match in ((2, r"refused to load(.|\n)*posix.system"), (4, "refused to load")):
        (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"w": RunsShell(marker)}, protocol=protocol))
        assert_fails_cleanly(tmp_path, tmp_path / "plain.pkl", match, UnsafeCheckpointError)
    import torch
    torch.save({"w": RunsShell(marker)}, tmp_path / "zipped.pt")  # the zip container torch.save writes
    assert_fails_cleanly(tmp_path, tmp_path / "zipped.pt", "refused to load", UnsafeCheckpointError)
    assert not marker.exists(), "the payload ran"


def test_torchscript_archive_that_names_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(RunsShell(marker)))
        z.writestr("evil/constants.pkl", pickle.dumps(()))
        z.writestr("evil/code/__torch__.py", "")
    assert_fails_cleanly(tmp_path, archive, r"asks for posix.system", UnsafeCheckpointError)
    assert not marker.exists()


def test_truncated_files(tmp_path, state_dict):
    pytest.importorskip("torch")
    import torch
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, tmp_path / "w.pt")
    for name, match in (("w.safetensors", "truncated"), ("w.pt", "truncated or corrupt")):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[: len(data) // 2])
        assert_fails_cleanly(tmp_path, tmp_path / f"cut-{name}", match)


def test_unknown_format_empty_file_missing_path_and_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, I am not a checkpoint")
    assert_fails_cleanly(tmp_path, tmp_path / "notes.txt", "unknown format(.|\n)*expected a safetensors file")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert_fails_cleanly(tmp_path, tmp_path / "empty.pt", "empty")
    assert_fails_cleanly(tmp_path, tmp_path / "nope.pt", "does not exist")
    (tmp_path / "folder").mkdir()
    assert_fails_cleanly(tmp_path, tmp_path / "folder", "folder without CLIP weights")


def test_missing_and_extra_keys(tmp_path, state_dict):
    missing = {k: v for k, v in state_dict.items() if k != "visual.transformer.resblocks.1.mlp.c_fc.bias"}
    safetensors.numpy.save_file(missing, tmp_path / "missing.safetensors")
    assert_fails_cleanly(tmp_path, tmp_path / "missing.safetensors",
                         r"missing: visual.transformer.resblocks.1.mlp.c_fc.bias")
    extra = {**state_dict, "visual.head.weight": np.zeros((3, 3), np.float32)}
    safetensors.numpy.save_file(extra, tmp_path / "extra.safetensors")
    assert_fails_cleanly(tmp_path, tmp_path / "extra.safetensors", r"unexpected: visual.head.weight")
    no_text = {k: v for k, v in state_dict.items() if k.startswith("visual.")}
    safetensors.numpy.save_file(no_text, tmp_path / "vision-only.safetensors")
    assert_fails_cleanly(tmp_path, tmp_path / "vision-only.safetensors", r"no 'token_embedding.weight'")


def test_shapes_that_fit_no_architecture(tmp_path, state_dict):
    cases = {
        "visual.positional_embedding": (np.zeros((1 + 15, 128), np.float32), "not.*square|1 \\+ grid"),
        "visual.proj": (np.zeros((128, 64), np.float32), r"visual.proj has shape \(128, 64\); expected \[128, 32\]"),
        "visual.transformer.resblocks.0.attn.in_proj_weight": (np.zeros((3 * 128, 100), np.float32),
                                                               r"resblocks_0/attn/in_proj_kernel: found \(100, 384\)"),
    }
    for key, (value, match) in cases.items():
        safetensors.numpy.save_file({**state_dict, key: value}, tmp_path / "bad.safetensors")
        assert_fails_cleanly(tmp_path, tmp_path / "bad.safetensors", match)


def test_resnet_clip_is_named(tmp_path):
    safetensors.numpy.save_file({"visual.layer1.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)},
                                tmp_path / "rn50.safetensors")
    assert_fails_cleanly(tmp_path, tmp_path / "rn50.safetensors", "ResNet CLIP")


def test_existing_output_is_not_replaced_without_overwrite(tmp_path, state_dict, capsys):
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["--input", str(tmp_path / "w.safetensors"), "--output", str(tmp_path / "out"),
                 "--activation", "gelu"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert main(["--input", str(tmp_path / "w.safetensors"), "--output", str(tmp_path / "out"), "--overwrite",
                 "--activation", "gelu"]) == 2  # a folder of the user's own is never deleted, even so
    assert "only if it holds a previous conversion (config.json, params); it also holds keep.txt" in \
        capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    (tmp_path / "out" / "keep.txt").unlink()
    assert main(["--input", str(tmp_path / "w.safetensors"), "--output", str(tmp_path / "out"), "--overwrite",
                 "--activation", "gelu"]) == 0  # an empty folder, then a previous conversion, are replaced
    assert main(["--input", str(tmp_path / "w.safetensors"), "--output", str(tmp_path / "out"), "--overwrite",
                 "--activation", "quick_gelu"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "params"]
    assert read_config(tmp_path / "out")[0].activation == "quick_gelu"
    assert main(["--input", str(tmp_path / "out"), "--to", "hf", "--output", str(tmp_path / "hf"),
                 "--image-size", "64"]) == 2
    assert "--image-size applies when converting to elip_jax" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
