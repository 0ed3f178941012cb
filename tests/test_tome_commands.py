"""ToMe through the commands: evaluation (one schedule and the r sweep) on the built-in dataset, and training."""
import json
import os
import sys

import pytest

from elip_jax.evaluate import cli

SMALL_BUILTIN = "elip_shapes/small"
TINY = ["--model", "tiny", "--split", "test", "--batch-size", "64"]


@pytest.fixture(scope="module")
def data_dir(builtin_data_dir):
    return builtin_data_dir  # tests/conftest.py: prepared once per run


def run(tmp_path, data_dir, *args):
    out = tmp_path / "result.json"
    payload = cli.main([*TINY, "--dataset", SMALL_BUILTIN, "--data-dir", data_dir, "--output", str(out), *args])
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    return payload


@pytest.mark.slow
def test_evaluate_with_tome_and_its_r_sweep(tmp_path, data_dir):
    plain = run(tmp_path, data_dir, "--task", "zeroshot_retrieval")
    merged = run(tmp_path, data_dir, "--task", "zeroshot_retrieval", "--reduction", "tome")
    reduction = merged["reduction"]
    assert reduction["method"] == "tome" and reduction["prunes_at_eval"] and reduction["r"] == [9] * 4
    assert reduction["tokens_per_block"] == [65, 56, 47, 38]
    assert merged["flops_per_image"] < plain["flops_per_image"]

    sweep = run(tmp_path, data_dir, "--task", "zeroshot_retrieval", "--reduction", "tome",
                "--reduction-sweep", "0;9;8d")
    rows = sweep["sweep"]
    assert [r["reduction"]["r"] for r in rows] == [[0] * 4, [9] * 4, [16, 11, 5, 0]]
    assert [r["reduction"]["prunes_at_eval"] for r in rows] == [False, True, True]
    assert rows[0]["metrics"] == plain["metrics"]  # r = 0 is the unpruned model
    assert rows[1]["metrics"] == merged["metrics"]
    assert rows[2]["flops_per_image"] < rows[0]["flops_per_image"]
    table = (tmp_path / "result.md").read_text()
    assert "r (as typed) `0;9;8d`" in table and "| tome |" in table and "r 9x4" in table


@pytest.mark.parametrize("args,message", [
    (["--reduction-sweep", "4;x"], "a tome sweep entry is an int r"),
    (["--reduction-sweep", "4", "--begin-layers", "1"], "--begin-layers does not apply to tome"),
])
def test_a_bad_tome_sweep_is_one_line(tmp_path, data_dir, capsys, args, message):
    out = tmp_path / "r.json"
    code = cli.run([*TINY, "--dataset", SMALL_BUILTIN, "--data-dir", data_dir, "--output", str(out),
                    "--task", "zeroshot_retrieval", "--reduction", "tome", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_training_with_tome_runs_and_logs_its_tokens(tmp_path, data_dir):
    from elip_jax.train.loop import train

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    import smoke  # configs/smoke.py

    config = smoke.get_config("tome")
    config.data.data_dir = data_dir
    config.num_steps = 2
    config.checkpoint.every_steps = 2
    config.checkpoint.async_save = False
    workdir = tmp_path / "workdir"
    train(config, str(workdir))
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["reduction"] == "tome" and summary["tokens_per_block"] == [65, 56, 47, 38]
