"""Evaluators built once from config.evals (elip_jax/evaluate/evaluators.py) and run by the trainer at their own
periods; a failing one is reported and skipped, never ending the run."""
import os
import sys

import ml_collections
import pytest

import elip_jax
from elip_jax.evaluate import evaluate
from elip_jax.evaluate.evaluators import EVALUATORS, build_evaluators, settings_of
from elip_jax.train.defaults import validate_config
from elip_jax.train.loop import train
from elip_jax.train.metrics import read_scalars
from elip_jax.train.setup import evals_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import smoke  # noqa: E402  (configs/smoke.py)

DATASET = "elip_shapes/small"


@pytest.fixture(scope="module")
def data_dir(builtin_data_dir):
    return builtin_data_dir  # tests/conftest.py: prepared once per run


@pytest.mark.parametrize("entry, message", [
    (dict(type="linear_probe"), r"config.evals.x.type = 'linear_probe' is invalid: expected one of "
                                + str(sorted(EVALUATORS)).replace("[", r"\[")),
    (dict(type="zeroshot_retrieval", label_key="label"), r"config.evals.x: unknown key\(s\) \['label_key'\]"),
    (dict(type="zeroshot_classification", batch_size=0), r"config.evals.x.batch_size = 0 is invalid"),
    (dict(type="zeroshot_classification", every_steps=-1), r"config.evals.x.every_steps = -1 is invalid"),
    (dict(type="zeroshot_classification", reduction="prune"), r"config.evals.x.reduction = 'prune' is invalid"),
])
def test_bad_evaluator_settings_are_named(entry, message):
    with pytest.raises(ValueError, match=message):
        settings_of("x", entry)
    config = smoke.get_config()
    config.evals = ml_collections.ConfigDict({"x": entry})
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_the_old_eval_keys_become_one_classification_evaluator_per_dataset():
    config = smoke.get_config()
    config.eval.datasets = ("", "cifar10")
    config.eval.every_steps, config.eval.data_dir = 5, "/tfds"
    data_config = ml_collections.ConfigDict(dict(name=DATASET, data_dir="/builtin"))
    evals = evals_config(config, data_config)
    assert list(evals) == [DATASET, "cifar10"]
    assert evals[DATASET]["data_dir"] == "/builtin" and evals["cifar10"]["data_dir"] == "/tfds"
    assert all(e["type"] == "zeroshot_classification" and e["every_steps"] == 5 for e in evals.values())
    config.evals = ml_collections.ConfigDict({"mine": dict(type="zeroshot_retrieval")})
    assert evals_config(config, data_config) == {"mine": {"type": "zeroshot_retrieval"}}


def test_evaluators_run_what_evaluate_returns_and_share_the_fitted_model(data_dir):
    model = elip_jax.create_model("tiny", reduction="elip")
    variables = elip_jax.checkpoints.random_variables(model)
    evaluators = build_evaluators(
        {"shapes": dict(type="zeroshot_classification", batch_size=64, every_steps=3),
         "shapes_retrieval": dict(type="zeroshot_retrieval", dataset=DATASET, data_dir=data_dir, batch_size=64)},
        model, default_dataset=DATASET, default_data_dir=data_dir)
    assert [e.name for e in evaluators] == ["shapes", "shapes_retrieval"]
    assert evaluators[0].model is evaluators[1].model and evaluators[0].model.reduction.method == "none"
    assert [evaluators[0].due(s, 10) for s in (3, 4, 6, 10)] == [True, False, True, True]
    assert [evaluators[1].due(s, 10) for s in (3, 9, 10)] == [False, False, True]
    for evaluator, task in zip(evaluators, ("zeroshot_classification", "zeroshot_retrieval")):
        expected = evaluate(evaluator.model, variables, task=task, dataset=DATASET, split="test", data_dir=data_dir,
                            batch_size=64, compute_flops=False)["metrics"]
        assert evaluator.run(variables["params"]) == pytest.approx({k: float(v) for k, v in expected.items()})


def test_training_runs_each_evaluator_at_its_period_and_skips_a_failing_one(data_dir, tmp_path):
    config = smoke.get_config()
    config.data.data_dir = data_dir
    config.num_steps = 4
    config.evals = ml_collections.ConfigDict({
        "shapes": dict(type="zeroshot_classification", batch_size=64, every_steps=2),
        "retrieval": dict(type="zeroshot_retrieval", batch_size=64),  # only at the end
        "missing": dict(type="zeroshot_classification", dataset="no_such_dataset_xyz", every_steps=2),
    })
    summary = train(config, str(tmp_path))
    assert summary["finished"]
    assert set(summary["eval"]) == {"shapes", "retrieval", "missing"}
    assert "error" in summary["eval"]["missing"] and "acc1" in summary["eval"]["shapes"]
    assert "image_retrieval_recall@1" in summary["eval"]["retrieval"]
    scalars = read_scalars(os.path.join(tmp_path, "tensorboard"))
    steps_with = lambda prefix: sorted({step for tag, values in scalars.items() if tag.startswith(prefix)
                                        for step, _ in values})
    assert steps_with("eval/shapes/") == [2, 4]
    assert steps_with("eval/retrieval/") == [4]
    assert steps_with("eval/missing/") == []
