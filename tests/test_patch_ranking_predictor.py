"""Patch Ranking's predictor and pruned inference (docs/patch_ranking.md): the architecture against a NumPy formula
and its parameter count at ViT-B/16, the registered method's schedule, pruned inference (the predictor's top-k,
one trace per shape, protected tokens never candidates), the KL objective and the bottom-k overlap against NumPy,
frozen parameters computing no backward (XLA FLOPs), and train-predictor end to end on the small dataset."""
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import elip_jax
from elip_jax import checkpoints
from elip_jax.accounting import analytic_image_flops, xla_flops
from elip_jax.patch_ranking import golden as golden_lib, objective, rankings as rankings_lib
from elip_jax.patch_ranking.cli import run as patch_ranking_run
from elip_jax.patch_ranking.train_predictor import (FROZEN_ALL_BUT_PREDICTOR, PredictorObjective, RankedImages,
                                                    predict_logits, predictor_logits)
from elip_jax.reduction import get_method, make_schedule
from elip_jax.reduction.patch_ranking import PatchPredictor, predictor_flops, predictor_parameter_count
from elip_jax.train.step import init_state, make_train_step

NAME, P, WIDTH = "tiny", 64, 64


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=None)
def tiny(protected=0):
    reduction = {"method": "patch_ranking", **({"protected": protected} if protected else {})}
    model = elip_jax.create_model(NAME, reduction=reduction)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 77), jnp.int32))
    return model, variables


def images(batch=2, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, 64, 64, 3))


# ------------------------------------------------------------------------------------- the method and predictor

def test_the_predictor_has_about_46k_parameters_at_vit_b16_and_the_method_keeps_118_of_196_before_block_3():
    model = elip_jax.create_model("ViT-B-16", reduction="patch_ranking")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
                            jax.ShapeDtypeStruct((1, 77), jnp.int32))
    predictor = shapes["params"]["visual"]["reduction_scorer"]
    assert count(predictor) == predictor_parameter_count(196) == 46309
    assert predictor["token_mlp"]["fc1"]["kernel"].shape == (196, 32)
    assert predictor["channel_mlp"]["fc1"]["kernel"].shape == (64, 256)
    schedule = model.reduction
    assert (schedule.begin_layers, schedule.keep, schedule.merge) == ((3,), (118,), False)
    assert schedule.tokens_per_block() == [197] * 3 + [119] * 9
    spec = get_method("patch_ranking")
    assert spec.serves_at_inference and spec.prunes_with(guide_given=False, rng_given=False)
    assert make_schedule("patch_ranking", 64, 4).begin_layers == (1,)  # scaled with the depth
    assert make_schedule("patch_ranking", 64, 12).keep == (39,)  # 64 - floor(0.4 * 64)
    flops = analytic_image_flops(schedule, 768, heads=12)
    assert flops["scoring"] == predictor_flops(196, 768) == 196 * 768 + 4 * 196 * 64 * (32 + 256) + 2 * 196 * 64
    with pytest.raises(ValueError, match="at most 1 stage, each before one of blocks 1 to 11"):
        make_schedule("patch_ranking", 196, 12, begin_layers=(3, 6), keep=(118, 60))


def numpy_layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def numpy_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def numpy_mlp(x, p):
    h = numpy_gelu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def numpy_predictor(tokens, p):
    """The spec's predictor for one image's patch tokens [P, D], written out (float64)."""
    x = tokens.reshape(tokens.shape[0], 64, -1).mean(-1)  # average-pool the channels to 64
    x = x + numpy_mlp(numpy_layer_norm(x, p["token_norm"]).T, p["token_mlp"]).T  # token mixing
    x = x + numpy_mlp(numpy_layer_norm(x, p["channel_norm"]), p["channel_mlp"])  # channel mixing
    return (numpy_layer_norm(x, p["head_norm"]) @ p["score"]["kernel"] + p["score"]["bias"])[:, 0]


def test_the_predictor_is_the_specs_mlp_mixer_block():
    tokens = jax.random.normal(jax.random.key(3), (2, 36, 128))
    params = PatchPredictor().init(jax.random.key(4), tokens, method=PatchPredictor.logits)
    params = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(5), x.shape), params)
    got = PatchPredictor().apply(params, tokens, method=PatchPredictor.logits)
    assert got.shape == (2, 36) and got.dtype == jnp.float32
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params["params"])
    for b in range(2):
        np.testing.assert_allclose(got[b], numpy_predictor(np.asarray(tokens[b], np.float64), p), rtol=1e-4,
                                   atol=1e-4)
    assert count(params) == predictor_parameter_count(36)
    with pytest.raises(ValueError, match="multiple of 64"):
        PatchPredictor().init(jax.random.key(4), jnp.zeros((1, 4, 96)), method=PatchPredictor.logits)


def test_pruned_inference_keeps_the_predictors_top_k_and_computes_what_dropping_the_rest_computes():
    model, variables = tiny()
    batch = images(3)
    features, state = model.apply(variables, batch, method=model.encode_image, mutable=["intermediates"])
    kept = np.asarray(state["intermediates"]["visual"]["kept_indices"][0])
    logits = model.apply(variables, batch, 1, method=predictor_logits)
    for b in range(3):
        top = np.argsort(-np.asarray(logits[b]), kind="stable")[:39]
        np.testing.assert_array_equal(kept[b], np.sort(top))
    # the same image with the other 25 patches' keys masked from block 1 on (the golden search's path)
    x0 = model.apply(variables, batch, 1, method=golden_lib.prefix_tokens)
    dropped = np.ones((3, P), bool)
    np.put_along_axis(dropped, kept, False, axis=1)
    bias = golden_lib._bias_for(jnp.asarray(dropped), 0)
    masked = model.apply(variables, x0, bias, 1, method=golden_lib.suffix_features)
    np.testing.assert_allclose(features, masked, rtol=1e-5, atol=1e-5)


def test_pruned_inference_compiles_once_per_shape():
    model, variables = tiny()
    traces = []

    @jax.jit
    def encode(variables, images):
        traces.append(1)
        return model.apply(variables, images, method=model.encode_image)

    for seed in range(3):
        encode(variables, images(2, seed)).block_until_ready()
    assert len(traces) == 1
    encode(variables, images(4)).block_until_ready()
    assert len(traces) == 2


def test_protected_tokens_are_never_candidates_and_the_predictor_never_sees_them():
    model, variables = tiny(protected=2)
    batch = images(2)
    _, state = model.apply(variables, batch, method=model.encode_image, mutable=["intermediates"])
    visual = state["intermediates"]["visual"]
    assert visual["scores"][0].shape == (2, P) and int(visual["kept_indices"][0].max()) < P
    # other learnable tokens: other tokens for the patches (attention), but the scores are still a function of the
    # patch tokens alone: the predictor called on the patches gives them
    changed = jax.tree_util.tree_map(lambda x: x, variables)
    changed["params"]["visual"]["learnable_tokens"] = variables["params"]["visual"]["learnable_tokens"] + 3.0
    _, state2 = model.apply(changed, batch, method=model.encode_image, mutable=["intermediates"])
    x0 = model.apply(changed, batch, 1, method=golden_lib.prefix_tokens)
    assert x0.shape[1] == 1 + P + 2
    np.testing.assert_allclose(state2["intermediates"]["visual"]["scores"][0],
                               model.apply(changed, batch, 1, method=predictor_logits), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ objective and metric

def test_kl_loss_and_bottom_k_overlap_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 10)).astype(np.float32)
    removed = np.zeros((3, 10), bool)
    removed[0, [0, 1, 2, 3]] = removed[1, [5, 6, 7, 8]] = removed[2, [9, 0, 4, 2]] = True
    target = np.where(removed, objective.TARGET_FLOOR, 1.0)
    target /= target.sum(-1, keepdims=True)
    log_q = logits - logits.max(-1, keepdims=True)
    log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
    expected = np.mean(np.sum(target * (np.log(target) - log_q), -1))
    np.testing.assert_allclose(objective.kl_to_golden(jnp.asarray(logits), jnp.asarray(removed)), expected,
                               rtol=1e-5)
    assert abs(target[0, 4] - 1 / 6) < 1e-5 and target[0, 0] < 1e-6  # uniform over the 6 kept, ~0 on the removed
    # overlap: image 0 predicts exactly the removed ones lowest, image 1 half of them, image 2 none
    crafted = np.zeros((3, 10))
    crafted[0, [0, 1, 2, 3]] = -1
    crafted[1, [5, 6, 0, 1]] = -1
    crafted[2, [1, 3, 5, 6]] = -1
    np.testing.assert_allclose(objective.bottom_k_overlap(crafted, removed), [1.0, 0.5, 0.0])


# --------------------------------------------------------------- frozen parameters compute no backward (XLA FLOPs)

def predictor_step_flops(model, variables, frozen, batch_size=8):
    tx = optax.chain(optax.scale_by_adam())
    objective_ = PredictorObjective(None, {}, prune_layer=model.reduction.begin_layers[0])
    step = make_train_step(model, tx, optax.constant_schedule(1e-3), loss_name="clip", logit_scale_max=100.0,
                           objective=objective_, frozen=frozen)
    state = init_state(variables["params"], tx, 0)
    batch = {name: jax.ShapeDtypeStruct(spec.shape, spec.dtype)
             for name, spec in objective_.batch_spec(model, batch_size).items()}
    return xla_flops(jax.jit(step).lower(state, batch).compile())


@pytest.mark.slow  # two training steps of tiny-12 compiled: about 45 s on 2 cores
def test_frozen_parameters_cost_no_backward_pass():
    model = elip_jax.create_model("tiny-12", reduction="patch_ranking")  # prune layer 3
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 77), jnp.int32))
    forward = xla_flops(jax.jit(lambda v, x: model.apply(v, x, 3, method=predictor_logits)).lower(
        variables, jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32)).compile())
    frozen = predictor_step_flops(model, variables, (FROZEN_ALL_BUT_PREDICTOR,))
    everything = predictor_step_flops(model, variables, ())
    predictor = 8 * predictor_flops(P, WIDTH)  # its forward, analytic
    backbone = forward - predictor  # embedding and the three blocks before the prune layer
    # frozen: that forward once, the predictor's backward (~2x its forward) and the step's elementwise work on every
    # parameter (update, finiteness checks: a few FLOPs each); no backward through the backbone
    assert frozen < forward + 2.5 * predictor + 20 * count(variables), (frozen, forward, predictor)
    # computing every gradient adds the backbone's backward, about twice its forward (measured 388 vs 420 MFLOP)
    assert everything - frozen > 1.5 * backbone, (everything, frozen, backbone)


# ---------------------------------------------------------------- train-predictor end to end on the small dataset

@pytest.mark.slow
def test_train_predictor_end_to_end_on_the_small_dataset_resumes_and_serves(tmp_path, capsys):
    base = elip_jax.create_model("tiny")
    variables = base.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 77), jnp.int32))
    pretrained = tmp_path / "tiny"
    checkpoints.save_pretrained(pretrained, variables, base.config)
    ranks = tmp_path / "rankings"
    assert patch_ranking_run(["golden", "--pretrained", str(pretrained), "--dataset", "elip_shapes/small",
                              "--split", "train[:40]", "--output", str(ranks), "--batch-size", "40",
                              "--per-step", "13", "--target", "25"]) == 0
    output = tmp_path / "predictor"
    argv = ["train-predictor", "--pretrained", str(pretrained), "--rankings", str(ranks), "--output", str(output),
            "--epochs", "4", "--batch-size", "8", "--holdout", "0.2", "--log-every", "4"]
    assert patch_ranking_run(argv) == 0
    out = capsys.readouterr().out
    assert "holdout: bottom-k overlap" in out
    model, trained = checkpoints.load_pretrained(str(output))
    assert model.reduction.method == "patch_ranking" and model.reduction.keep == (39,)
    assert model.reduction.begin_layers == (1,)
    # the backbone is the pretrained one, bit for bit; the predictor learned something
    np.testing.assert_array_equal(trained["params"]["visual"]["proj"], variables["params"]["visual"]["proj"])
    fresh = checkpoints.fit_variables(model, variables, 0)["params"]["visual"]["reduction_scorer"]
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), fresh,
                                   trained["params"]["visual"]["reduction_scorer"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0
    # the reported overlap is the metric on the held-out images, recomputed here
    reader = rankings_lib.read_rankings(str(ranks))
    from elip_jax.patch_ranking.train_predictor import load_ranked_images
    ranked = load_ranked_images(reader, 64)
    held = ranked.take(slice(32, None))
    overlap = objective.bottom_k_overlap(predict_logits(model, trained, held.images, 1), held.removed).mean()
    from elip_jax.checkpoints.folder import read_document
    document = read_document(str(output))
    assert document["provenance"]["bottom_k_overlap"]["holdout"] == pytest.approx(overlap, abs=1e-6)
    # a finished run rerun: nothing trained again, the same folder written
    assert patch_ranking_run(argv) == 0
    _, again = checkpoints.load_pretrained(str(output))
    np.testing.assert_array_equal(again["params"]["visual"]["reduction_scorer"]["score"]["kernel"],
                                  trained["params"]["visual"]["reduction_scorer"]["score"]["kernel"])
    # it serves: features of the pruned model
    features = model.apply(trained, images(2), method=model.encode_image)
    assert features.shape == (2, 32) and np.all(np.isfinite(features))


def test_train_predictor_refuses_bad_input_in_one_line(tmp_path, capsys):
    cases = [
        (["train-predictor", "--pretrained", str(tmp_path), "--rankings", str(tmp_path / "none"), "--output",
          str(tmp_path / "o")], "--rankings"),
        (["train-predictor", "--pretrained", str(tmp_path), "--rankings", str(tmp_path), "--output",
          str(tmp_path / "o"), "--holdout", "1.5"], "--holdout"),
        (["train-predictor", "--pretrained", str(tmp_path), "--rankings", str(tmp_path), "--output",
          str(tmp_path / "o")], "holds no golden rankings"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert patch_ranking_run(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_the_oracles_forward_with_the_predictors_kept_patches_is_the_pruned_model():
    from elip_jax.patch_ranking.oracle import kept_features
    model, variables = tiny()
    batch = images(2, seed=6)
    features, state = model.apply(variables, batch, method=model.encode_image, mutable=["intermediates"])
    kept = state["intermediates"]["visual"]["kept_indices"][0]
    np.testing.assert_allclose(model.apply(variables, batch, kept, 1, method=kept_features), features, rtol=1e-5,
                               atol=1e-5)
    unpruned = elip_jax.create_model(NAME)
    every = jnp.tile(jnp.arange(P), (2, 1))
    np.testing.assert_allclose(model.apply(variables, batch, every, 1, method=kept_features),
                               unpruned.apply(variables, batch, method=unpruned.encode_image), rtol=1e-5, atol=1e-5)
