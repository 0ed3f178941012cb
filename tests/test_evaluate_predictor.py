"""`python -m elip_jax.evaluate --reduction patch_ranking --predictor DIR`: a trained predictor (and learnable
tokens) laid over the model of --pretrained; one-line errors when DIR holds none or does not fit; pruned
inference traced once for every batch of one shape."""
import json

import jax
import numpy as np
import pytest

import elip_jax
from elip_jax import checkpoints
from elip_jax.evaluate import cli, evaluator
from elip_jax.reduction import get_method

SMALL_BUILTIN = "elip_shapes/small"
METHOD = "patch_ranking"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from elip_jax.data import prepare_builtin
    return prepare_builtin(str(tmp_path_factory.mktemp("tfds")), config="small")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A plain pretrained folder, and a 'trained' predictor folder: the same backbone (another copy of it, to show
    that only the predictor and the tokens are taken) with a predictor and 2 deep learnable tokens."""
    root = tmp_path_factory.mktemp("folders")
    plain = elip_jax.create_model("tiny")
    backbone = checkpoints.random_variables(plain, seed=0)
    checkpoints.save_pretrained(root / "pretrained", backbone, plain.config)
    tuned = elip_jax.create_model("tiny", reduction={"method": METHOD, "protected": 2}, deep_visual_tokens=True)
    own = checkpoints.random_variables(tuned, seed=7)  # its backbone differs from `backbone`: it must not be used
    checkpoints.save_pretrained(root / "predictor", own, tuned.config, reduction=tuned.reduction)
    return root, backbone, own, tuned


def cli_args(root, data_dir, out, *extra):
    return ["--pretrained", str(root / "pretrained"), "--dataset", SMALL_BUILTIN, "--data-dir", data_dir,
            "--task", "zeroshot_classification", "--split", "test", "--batch-size", "64", "--output", str(out),
            *extra]


def test_the_predictor_and_tokens_of_dir_run_on_the_pretrained_backbone(folders, data_dir, tmp_path):
    root, backbone, own, tuned = folders
    payload = cli.main(cli_args(root, data_dir, tmp_path / "r.json", "--reduction", METHOD,
                                "--predictor", str(root / "predictor")))
    assert payload["reduction"]["method"] == METHOD and payload["reduction"]["protected"] == 2
    assert payload["model"] == "pretrained" and payload["predictor"] == str(root / "predictor")
    # the same evaluation by hand: the backbone of --pretrained, everything else of DIR
    params = jax.tree_util.tree_map(np.asarray, backbone["params"])
    params["visual"] = {**params["visual"], **{k: own["params"]["visual"][k]
                                               for k in ("reduction_scorer", "learnable_tokens", "deep_tokens")}}
    expected = evaluator.evaluate(tuned, {"params": params}, task="zeroshot_classification", dataset=SMALL_BUILTIN,
                                  data_dir=data_dir, batch_size=64, compute_flops=False)
    assert payload["metrics"] == json.loads(json.dumps(expected["metrics"]))
    unpruned = cli.main(cli_args(root, data_dir, tmp_path / "u.json"))
    assert payload["flops_per_image"] < unpruned["flops_per_image"]


@pytest.mark.parametrize("extra, message", [
    (["--reduction", METHOD], "needs its trained parameters"),  # no predictor anywhere
    (["--reduction", METHOD, "--predictor", "{pretrained}"], "holds no parameters of 'patch_ranking'"),
    (["--reduction", "evit", "--predictor", "{predictor}"], "'evit' has none"),
    (["--reduction", METHOD, "--predictor", "{other}"], "another architecture"),
    (["--reduction", METHOD, "--predictor", "{missing}"], "is not a directory"),
])
def test_bad_predictors_are_one_line_errors(folders, data_dir, tmp_path, capsys, extra, message):
    root = folders[0]
    other = root / "other"
    if not other.exists():  # a 32-pixel tower: 16 patches, another positional embedding
        model = elip_jax.create_model("tiny", image_size=32, reduction=METHOD)
        checkpoints.save_pretrained(other, checkpoints.random_variables(model), model.config, reduction=METHOD)
    names = {"pretrained": root / "pretrained", "predictor": root / "predictor", "other": other,
             "missing": root / "missing"}
    extra = [e.format(**names) for e in extra]
    assert cli.run(cli_args(root, data_dir, tmp_path / "r.json", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "r.json").exists()


def test_pruned_inference_traces_once_for_every_batch_of_one_shape(folders, data_dir, monkeypatch):
    _, backbone, own, tuned = folders
    scorer = get_method(METHOD).scorer
    calls = []
    original = scorer.__call__
    monkeypatch.setattr(scorer, "__call__", lambda self, inputs: calls.append(inputs.x.shape) or original(self, inputs))
    result = evaluator.evaluate(tuned, own, task="zeroshot_classification", dataset=SMALL_BUILTIN,
                                data_dir=data_dir, batch_size=32, compute_flops=False)  # 128 images: 4 batches
    assert result["num_examples"] == 128
    assert len(calls) == 1, calls  # traced once, then the compiled program serves every batch
