"""The trainer's set-up: the loss registry and its initialisation, frozen parameter groups, sharding rules from
config, all decided once by train/setup.py:plan before anything compiles."""
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import elip_jax
from elip_jax.train import losses, sharding
from elip_jax.train.defaults import base_config, validate_config
from elip_jax.train.optim import check_frozen, make_optimizer, param_path
from elip_jax.train.setup import plan
from elip_jax.train.step import init_state, make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tests.conftest import smoke_config  # noqa: E402


def tiny_config(**overrides):
    """configs/smoke.py (no data directory: nothing here reads data), with dotted overrides."""
    return smoke_config("", **overrides)


# --- losses ------------------------------------------------------------------------------------------------

def test_the_registry_carries_each_loss_initialisation():
    assert losses.LOSSES["clip"].init_logit_scale == pytest.approx(math.log(1 / 0.07))
    assert losses.LOSSES["clip"].init_logit_bias is None
    assert losses.LOSSES["siglip"].init_logit_scale == pytest.approx(math.log(10.0))
    assert losses.LOSSES["siglip"].init_logit_bias == -10.0


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_plan_initialises_the_model_as_the_loss_says(name):
    p = plan(tiny_config(loss=name))
    loss = losses.LOSSES[name]
    assert p.loss is loss
    assert p.model.config.init_logit_scale == pytest.approx(loss.init_logit_scale)
    assert p.model.config.init_logit_bias == loss.init_logit_bias
    assert ("logit_bias" in p.abstract_state.params) == loss.learns_bias


def test_an_unknown_loss_is_named_with_the_registered_ones():
    config = base_config()
    config.loss = "hinge"
    with pytest.raises(ValueError, match=r"config.loss = 'hinge'.*" + str(sorted(losses.LOSSES)).replace("[", r"\[")):
        validate_config(config)


# --- frozen parameter groups -------------------------------------------------------------------------------

def _tiny_step(frozen):
    model = elip_jax.create_model("tiny", reduction="elip")
    images = jax.random.randint(jax.random.key(1), (8, 64, 64, 3), 0, 256).astype(jnp.uint8)
    tokens = jnp.asarray(elip_jax.tokenize([f"a {c} circle" for c in ("red", "blue", "green", "white") * 2]))
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), tokens[:1])["params"]
    optim = base_config().optim
    optim.frozen = frozen
    tx = make_optimizer(optim)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-2), loss_name="clip", logit_scale_max=100.0))
    return step, init_state(params, tx, 0), {"images": images, "tokens": tokens}


def _leaves(tree):
    return {param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_freezing_all_but_one_group_leaves_the_others_bit_identical_and_without_optimizer_state():
    step, state, batch = _tiny_step(frozen=("^text/", "^visual/(?!proj$)", "^logit_scale$"))
    before = _leaves(jax.device_get(state.params))
    for _ in range(3):
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
    after = _leaves(jax.device_get(state.params))
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert changed == ["visual/proj"]
    for name in before:  # bit-identical, not merely close
        if name != "visual/proj":
            assert before[name].tobytes() == after[name].tobytes(), name
    # Adam's moments exist for the trained group only: two arrays of visual/proj's size (plus scalar counters)
    moment_sizes = [x.size for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim]
    assert sorted(moment_sizes) == [before["visual/proj"].size] * 2


def test_without_frozen_groups_the_optimizer_is_plain_adamw():
    _, state, _ = _tiny_step(frozen=())
    params_size = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    assert sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim) >= 2 * params_size - 2


def test_a_frozen_regex_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match=r"config.optim.frozen: '\^txt/' matches no parameter"):
        plan(tiny_config(**{"optim.frozen": ("^text/", "^txt/")}))
    check_frozen(("^text/",), {"text": {"w": np.zeros(2)}})


def test_a_frozen_entry_that_is_not_a_regex_is_named():
    with pytest.raises(ValueError, match=r"config.optim.frozen\[0\] = '\('"):
        validate_config(tiny_config(**{"optim.frozen": ("(",)}))


# --- sharding rules ----------------------------------------------------------------------------------------

def test_a_sharding_rule_shards_the_matched_parameter_and_its_moments_as_stated():
    assert jax.device_count() == 8
    config = tiny_config(**{"mesh.fsdp": 4, "batch_size": 8,
                            "sharding_rules": (("^visual/proj$", ("fsdp", None)),
                                               ("^text/text_projection$", (None, ("data", "fsdp"))))})
    p = plan(config)
    proj = p.state_shardings.params["visual"]["proj"]
    assert proj.spec == P("fsdp", None) and proj.mesh.shape == {"data": 2, "fsdp": 4}
    assert p.state_shardings.params["text"]["text_projection"].spec == P(None, ("data", "fsdp"))
    assert p.state_shardings.params["visual"]["conv1"]["kernel"].spec == P()  # param_sharding: replicated
    moments = [s for path, s in jax.tree_util.tree_flatten_with_path(p.state_shardings.opt_state)[0]
               if param_path(path).endswith("visual/proj")]
    assert moments and all(s.spec == P("fsdp", None) for s in moments)
    # the layout reaches real arrays: each device holds a quarter of visual/proj's rows
    shape = p.abstract_state.params["visual"]["proj"].shape
    array = jax.device_put(np.zeros(shape, np.float32), proj)
    assert {s.data.shape for s in array.addressable_shards} == {(shape[0] // 4, shape[1])}


@pytest.mark.parametrize("rules, message", [
    ((("^visual/proj$", ("model", None)),), r"sharding_rules\[0\] \('\^visual/proj\$'\): axis 'model' is not a mesh"),
    ((("^visual/proj$", (None, ("data", "tensor"))),), r"axis 'tensor' is not a mesh axis"),
    ((("^visual/proj$",),), r"sharding_rules\[0\] = .* expected a \(regex, spec\) pair"),
    ((("(", ()),), r"sharding_rules\[0\]: '\(' is not a regex"),
])
def test_bad_sharding_rules_are_named_before_anything_compiles(rules, message):
    with pytest.raises(ValueError, match=message):
        validate_config(tiny_config(sharding_rules=rules))


def test_a_rule_with_more_entries_than_dimensions_is_named():
    with pytest.raises(ValueError, match=r"gives logit_scale .* more entries than dimensions"):
        plan(tiny_config(sharding_rules=(("^logit_scale$", ("fsdp",)),)))


def test_every_config_validates():
    import importlib
    for name in ("demo", "smoke", "vit_b16_elip"):
        validate_config(importlib.import_module(name).get_config())


# --- initialisation ----------------------------------------------------------------------------------------

def test_init_from_a_converted_folder_is_decided_once_with_the_loss_bias_added(tmp_path):
    from elip_jax.checkpoints import random_variables, save_pretrained
    model = elip_jax.create_model("tiny")
    params = jax.device_get(random_variables(model, seed=3)["params"])
    folder = str(tmp_path / "tiny-converted")
    save_pretrained(folder, params, model.config)
    p = plan(tiny_config(**{"model.init_from": folder}))
    assert p.init.from_checkpoint and "logit_bias" not in p.init.params
    for name, leaf in _leaves(params).items():
        assert _leaves(p.init.params)[name].tobytes() == np.asarray(leaf, np.float32).tobytes(), name
    siglip = plan(tiny_config(**{"model.init_from": folder, "loss": "siglip"}))
    assert float(siglip.init.params["logit_bias"]) == -10.0 and siglip.model.config.init_logit_bias == -10.0
    with pytest.raises(ValueError, match=r"config.model.init_from = 'tiny' is invalid: expected a converted folder"):
        plan(tiny_config(**{"model.init_from": "tiny"}))


def test_reduction_config_reaches_the_schedule_with_r_exact_counts_and_protected_tokens():
    """Every schedule option of the registry can be set from the config: ToMe's r (decreasing), exact keep
    counts and learnable tokens; keep and keep_ratios together are refused, naming the key."""
    from elip_jax.train.setup import build_model

    config = smoke_config("", "tome")
    config.reduction.r, config.reduction.decreasing = 4, True
    validate_config(config)
    assert build_model(config).reduction.tokens_per_block() == [65, 57, 52, 49]

    config = smoke_config("", "evit")
    config.reduction.begin_layers, config.reduction.keep, config.reduction.protected = (1,), (40,), 2
    validate_config(config)
    schedule = build_model(config).reduction
    assert schedule.keep == (40,) and schedule.protected == 2
    assert schedule.tokens_per_block() == [67, 44, 44, 44]  # CLS + 64 patches + 2; then CLS + 40 + merged + 2

    config.reduction.keep_ratios = (0.5,)
    with pytest.raises(ValueError, match="config.reduction.keep"):
        validate_config(config)
