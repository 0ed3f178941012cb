"""The reduction schedule travels with the weights: converted folders and workdirs save it, loading restores it,
shape checks use the model built with it, and parameters a method owns survive a change of schedule."""
import json
import os
import stat

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from elip_jax import checkpoints
from elip_jax.checkpoints import CheckpointError, params as params_lib
from elip_jax.evaluate.evaluator import with_reduction
from elip_jax.models import create_model

ELIP = {"method": "elip", "begin_layers": (1, 2), "keep": (50, 30)}
PROTECTED = {"method": "evit", "begin_layers": (2,), "keep": (40,), "protected": 2}  # owns learnable tokens


def variables_of(reduction, seed=0):
    model = create_model("tiny", reduction)
    return model, checkpoints.random_variables(model, seed)


def assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_a_converted_folder_saves_and_restores_its_schedule(tmp_path):
    model, variables = variables_of(ELIP)
    checkpoints.save_pretrained(tmp_path / "elip", variables, model.config, reduction=model.reduction)
    document = json.loads((tmp_path / "elip" / "config.json").read_text())
    assert document["reduction"] == {"method": "elip", "mix": 0.8, "begin_layers": [1, 2], "keep": [50, 30]}
    loaded, restored, name = checkpoints.load(str(tmp_path / "elip"))
    assert loaded.reduction == model.reduction and name == "elip"
    assert_same_tree(restored, variables)
    unpruned, _, _ = checkpoints.load(str(tmp_path / "elip"), reduction="none")  # the caller's choice wins
    assert unpruned.reduction.method == "none"


def test_a_folder_without_a_schedule_loads_unpruned(tmp_path):
    model, variables = variables_of(None)
    checkpoints.save_pretrained(tmp_path / "plain", variables, model.config)
    document = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert document["reduction"]["method"] == "none"
    del document["reduction"]  # a format_version 1 folder
    document["format_version"] = 1
    (tmp_path / "plain" / "config.json").write_text(json.dumps(document))
    loaded, _ = checkpoints.load_pretrained(tmp_path / "plain")
    assert loaded.reduction.method == "none"


def test_the_shape_check_counts_the_parameters_a_method_owns(tmp_path):
    model, variables = variables_of(PROTECTED)
    assert "visual/learnable_tokens" in checkpoints.expected_param_shapes(model.config, PROTECTED)
    assert "visual/learnable_tokens" not in checkpoints.expected_param_shapes(model.config)
    checkpoints.save_pretrained(tmp_path / "own", variables, model.config, reduction=PROTECTED)
    loaded, restored, _ = checkpoints.load(str(tmp_path / "own"))
    assert loaded.reduction.protected == 2
    assert_same_tree(restored, variables)
    _, plain = variables_of(None)
    with pytest.raises(CheckpointError, match="missing visual/learnable_tokens"):
        checkpoints.save_pretrained(tmp_path / "short", plain, model.config, reduction=PROTECTED)
    assert not (tmp_path / "short").exists()  # nothing half-written


def test_the_folder_is_readable_by_others(tmp_path):
    model, variables = variables_of(None)
    folder = checkpoints.save_pretrained(tmp_path / "shared", variables, model.config)
    for root, dirs, files in os.walk(folder):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755, root
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o644, name


def test_with_reduction_carries_the_new_methods_parameters():
    trained_model, trained = variables_of(PROTECTED, seed=3)
    plain_model = with_reduction(trained_model, "none")
    assert plain_model.reduction.method == "none"  # without variables: the model alone, as before
    kept_model, kept = with_reduction(trained_model, "none", trained)  # learnable tokens belong to the weights
    assert kept_model.reduction.protected == 2 and "learnable_tokens" in kept["params"]["visual"]
    plain_model, plain = with_reduction(trained_model, {"method": "none", "protected": 0}, trained)
    assert "learnable_tokens" not in plain["params"]["visual"]  # named away: only the old schedule had them
    back_model, back = with_reduction(plain_model, PROTECTED, trained)  # taken from the variables given
    assert_same_tree(back, trained)
    fresh_model, fresh = with_reduction(plain_model, PROTECTED, plain, seed=1)  # none given: initialised
    assert fresh["params"]["visual"]["learnable_tokens"].shape == (2, trained_model.config.vision_width)
    assert_same_tree(fresh["params"]["text"], trained["params"]["text"])
    images = np.zeros((1, 64, 64, 3), np.float32)
    assert fresh_model.apply(fresh, images, method=fresh_model.encode_image).shape == (1, 32)


def test_a_backbone_that_does_not_fit_is_refused():
    model, variables = variables_of(None)
    params = dict(variables["params"])
    params["visual"] = {k: v for k, v in params["visual"].items() if k != "proj"}
    with pytest.raises(params_lib.ParamShapeError, match="missing visual/proj"):
        params_lib.fit_variables(model, {"params": params})


def test_a_workdir_restores_its_schedule(tmp_path):
    model, variables = variables_of(PROTECTED)
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "model_config.json").write_text(json.dumps(model.config.to_dict()))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((workdir / "checkpoints" / "3" / "state").absolute(), {"params": variables["params"]})
    checkpointer.wait_until_finished()
    checkpoints.write_reduction(str(workdir), model.reduction)
    assert json.loads((workdir / "reduction.json").read_text())["protected"] == 2
    loaded, restored, name = checkpoints.load(str(workdir))
    assert name == "run@step3" and loaded.reduction == model.reduction
    assert_same_tree(restored, variables)
    os.remove(workdir / "reduction.json")  # a workdir from before reduction.json: unpruned, extras dropped
    loaded, restored, _ = checkpoints.load(str(workdir))
    assert loaded.reduction.method == "none" and "learnable_tokens" not in restored["params"]["visual"]
