"""`python -m elip_jax.patch_ranking tune-tokens`: the shots, the tokens learning with CLIP and the predictor
frozen bit for bit, the folder evaluation loads, resume after a kill, and one-line errors."""
import json

import jax
import numpy as np
import pytest
from flax import traverse_util

import elip_jax
from elip_jax import checkpoints
from elip_jax.patch_ranking import cli, tune_tokens
from elip_jax.patch_ranking.few_shot import select_shots

SMALL_BUILTIN = "elip_shapes/small"
METHOD = "patch_ranking"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The small built-in dataset, a pretrained tiny folder and a predictor folder trained on another copy of the
    backbone (random weights: the tokens still fit 16 shots, a tiny case)."""
    from elip_jax.data import prepare_builtin
    root = tmp_path_factory.mktemp("tune")
    data_dir = prepare_builtin(str(root / "tfds"), config="small")
    plain = elip_jax.create_model("tiny")
    backbone = jax.device_get(checkpoints.random_variables(plain, seed=0))
    checkpoints.save_pretrained(root / "pretrained", backbone, plain.config)
    pruned = elip_jax.create_model("tiny", reduction=METHOD)
    checkpoints.save_pretrained(root / "predictor", checkpoints.random_variables(pruned, seed=5), pruned.config,
                                reduction=METHOD)
    return root, data_dir


def flags(root, data_dir, output, *extra):
    return ["--pretrained", str(root / "pretrained"), "--predictor", str(root / "predictor"), "--dataset",
            SMALL_BUILTIN, "--data-dir", data_dir, "--shots", "1", "--visual-tokens", "2", "--deep", "--text-tokens",
            "2", "--output", str(output), "--steps", "20", "--batch-size", "16", "--learning-rate", "0.1",
            "--checkpoint-every", "8", *extra]


def flat(tree):
    return traverse_util.flatten_dict(tree["params"], sep="/")


def test_shots_are_k_per_class_and_the_same_for_the_same_seed():
    classes = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, -1, 1])
    chosen = select_shots(classes, 2, 3, seed=4)
    assert [int(c) for c in classes[chosen]] == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(chosen, select_shots(classes, 2, 3, seed=4))
    assert any(not np.array_equal(chosen, select_shots(classes, 2, 3, seed=s)) for s in range(5, 10))
    with pytest.raises(ValueError, match="class 2 has 3 example"):
        select_shots(classes, 4, 3, seed=0)


def test_batches_cycle_every_shot_once_per_epoch():
    seen = np.concatenate([tune_tokens.batch_indices(s, 4, 12, seed=1) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(12))
    np.testing.assert_array_equal(tune_tokens.batch_indices(2, 4, 12, 1), tune_tokens.batch_indices(2, 4, 12, 1))


@pytest.mark.slow  # three short runs (one killed and resumed) and an evaluation: about 2 minutes on 2 cores
def test_tokens_learn_with_clip_and_the_predictor_frozen_and_the_folder_evaluates(setup, tmp_path, monkeypatch):
    root, data_dir = setup
    out = tmp_path / "tuned"
    assert cli.main(["tune-tokens", *flags(root, data_dir, out)]) == 0
    document = json.loads((out / "config.json").read_text())
    summary = document["provenance"]["tune_tokens"]
    assert summary["shots_loss_after"] < summary["shots_loss_before"]
    assert summary["shots_accuracy_after"] > summary["shots_accuracy_before"]
    assert document["reduction"]["method"] == METHOD and document["reduction"]["protected"] == 2
    assert document["config"]["deep_visual_tokens"] and document["config"]["text_context_tokens"] == 2

    model, tuned, _ = checkpoints.load(str(out))
    _, pretrained, _ = checkpoints.load(str(root / "pretrained"))
    _, predictor, _ = checkpoints.load(str(root / "predictor"))
    tuned, pretrained, predictor = flat(tuned), flat(pretrained), flat(predictor)
    tokens = {"visual/learnable_tokens", "visual/deep_tokens", "text/context_tokens"}
    assert tokens <= set(tuned)
    for key, value in tuned.items():  # every other parameter is bit for bit what it came from
        if key in tokens:
            continue
        source = predictor if key.startswith("visual/reduction_scorer/") else pretrained
        np.testing.assert_array_equal(value, source[key], err_msg=key)

    # a killed run continues from its last checkpoint and ends where the uninterrupted run ended
    killed = tmp_path / "killed"
    original = tune_tokens.batch_indices

    def dies_at_step_10(step, *args):
        if step == 10:
            raise KeyboardInterrupt
        return original(step, *args)

    monkeypatch.setattr(tune_tokens, "batch_indices", dies_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["tune-tokens", *flags(root, data_dir, killed)])
    assert not killed.exists() and (tmp_path / "killed.partial").is_dir()
    monkeypatch.setattr(tune_tokens, "batch_indices", original)
    assert cli.main(["tune-tokens", *flags(root, data_dir, killed)]) == 0
    resumed = json.loads((killed / "config.json").read_text())["provenance"]["tune_tokens"]
    assert resumed["resumed_at_step"] == 8 and not (tmp_path / "killed.partial").exists()
    _, again, _ = checkpoints.load(str(killed))
    for key in tokens:
        np.testing.assert_allclose(flat(again)[key], tuned[key], rtol=1e-6, atol=1e-7, err_msg=key)

    # the evaluation loads the folder as tuned: the tokens, the predictor and its schedule
    from elip_jax.evaluate import cli as evaluate_cli
    payload = evaluate_cli.main(["--pretrained", str(out), "--dataset", SMALL_BUILTIN, "--data-dir", data_dir,
                                 "--task", "zeroshot_classification", "--batch-size", "64", "--reduction", METHOD,
                                 "--output", str(tmp_path / "eval.json")])
    assert payload["reduction"]["method"] == METHOD and payload["reduction"]["protected"] == 2
    assert model.reduction.protected == 2 and model.config.text_context_tokens == 2


@pytest.mark.parametrize("extra, message", [
    (["--visual-tokens", "0", "--text-tokens", "0"], "nothing to tune"),
    (["--visual-tokens", "0"], "--deep replaces the visual tokens"),
    (["--text-tokens", "80"], "--text-tokens must leave room"),
    (["--shots", "0"], "--shots must be at least 1"),
    (["--predictor", "/nonexistent/folder"], "is not a directory"),
])
def test_bad_requests_are_one_line_before_anything_loads(setup, tmp_path, capsys, extra, message):
    root, data_dir = setup
    assert cli.run(["tune-tokens", *flags(root, data_dir, tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_an_existing_output_is_refused_without_overwrite(setup, tmp_path, capsys):
    root, data_dir = setup
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert cli.run(["tune-tokens", *flags(root, data_dir, tmp_path / "o")]) == 2
    assert "exists: give --overwrite" in capsys.readouterr().err
    assert cli.run(["tune-tokens", *flags(root, data_dir, tmp_path / "o", "--overwrite")]) == 2
    assert "is not a model folder (it holds notes.txt)" in capsys.readouterr().err
