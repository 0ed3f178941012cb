"""docs/invariants.md for every registered reduction method, chosen by what the method can do, never by name:
a method registered tomorrow is tested here without editing a list."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import elip_jax
from elip_jax import accounting, benchmark
from elip_jax.reduction import (ReductionMethod, get_method, inference_methods, make_schedule, prune_tokens,
                                registered_methods, registry)

METHODS = registered_methods()
REDUCING = [m for m in METHODS if get_method(m).reduces]
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
NAME, PATCHES, DEPTH, WIDTH, HEADS = "tiny", 64, 4, 64, 4


def inputs(seed=0, batch=2):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    images = jax.random.normal(k1, (batch, 64, 64, 3))
    tokens = jax.random.randint(k2, (batch, 77), 1, 49406).at[:, -1].set(49407)
    guide = jax.random.normal(k3, (batch, 32))
    return images, tokens, guide


@functools.lru_cache(maxsize=None)
def variables(protected=0):
    model = elip_jax.create_model(NAME, reduction={"method": "none", "protected": protected} if protected else None)
    images, tokens, _ = inputs()
    return model.init(jax.random.key(0), images, tokens)


def fitted(model, protected=0):
    """The shared weights plus whatever the model's method owns (a learned scorer: patch_ranking's predictor)."""
    from elip_jax.checkpoints import fit_variables
    return fit_variables(model, variables(protected), 0)


def keep_everything(method):
    """Schedule options under which the method keeps every token (by where the method reduces)."""
    spec = get_method(method)
    if spec.placement == registry.INSIDE_BLOCKS:
        return {"method": method, "r": 0}
    if spec.placement == registry.BETWEEN_BLOCKS:
        begin = spec.default_options(PATCHES, DEPTH)["begin_layers"]
        return {"method": method, "begin_layers": tuple(begin), "keep_ratios": (1.0,) * len(begin)}
    return {"method": method}


def encode(model, params, images, **kwargs):
    out, state = model.apply(params, images, method=model.encode_image, mutable=["intermediates"], **kwargs)
    return out, state.get("intermediates", {}).get("visual", {})


def decisions(visual):
    return list(visual.get("kept_indices", ())) + list(visual.get("tome_matchings", ()))


# ---------------------------------------------------------------- the registry

def test_registry_lists_every_method_and_refuses_unknown_names():
    assert {"none", "elip", "elip_inline", "evit", "random", "tome"} <= set(METHODS)
    assert METHODS[0] == "none"
    with pytest.raises(ValueError, match=r"reduction method must be one of \('none'.*'tome'.*got 'pruney'"):
        get_method("pruney")
    with pytest.raises(ValueError, match="pruney"):
        make_schedule("pruney", PATCHES, DEPTH)
    with pytest.raises(ValueError, match="pruney"):
        accounting.analytic_image_flops(make_schedule("none", PATCHES, DEPTH).__class__("pruney"), WIDTH)
    for name in inference_methods():
        spec = get_method(name)
        assert spec.serves_at_inference and spec.prunes_with(guide_given=False, rng_given=False) or not spec.reduces
    assert {"evit", "tome", "none"} <= set(inference_methods()) and not {"elip", "random"} & set(inference_methods())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_default_schedule_costs_and_a_benchmark_entry(method):
    schedule = make_schedule(method, PATCHES, DEPTH)
    flops = accounting.analytic_image_flops(schedule, WIDTH, heads=HEADS)
    none = accounting.analytic_image_flops(make_schedule("none", PATCHES, DEPTH), WIDTH)
    assert len(flops["per_block"]) == DEPTH and flops["scoring"] >= 0
    if get_method(method).reduces:
        assert schedule.prunes and flops["main_path"] < none["main_path"]
    assert get_method(method).flops_formula in accounting.formulas()["scoring"].values()
    assert benchmark.validate_methods([method])[-1] == method


# ---------------------------------------------------------------- spec invariants, per method

@pytest.mark.parametrize("method", METHODS)
def test_a_schedule_that_keeps_everything_is_the_unpruned_model_bit_for_bit(method):
    params = variables()
    images, tokens, guide = inputs(seed=1)
    unpruned = elip_jax.create_model(NAME)
    full = elip_jax.create_model(NAME, reduction=keep_everything(method))
    expected = unpruned.apply(params, images, tokens, rng=jax.random.key(3))
    got = full.apply(params, images, tokens, rng=jax.random.key(3))
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    features, visual = encode(full, params, images, guide=guide, rng=jax.random.key(3))
    assert decisions(visual) == []
    np.testing.assert_array_equal(features, unpruned.apply(params, images, method=unpruned.encode_image))


@pytest.mark.parametrize("method", REDUCING)
def test_a_method_prunes_exactly_when_its_trigger_is_given(method):
    spec = get_method(method)
    model = elip_jax.create_model(NAME, reduction=method)
    params = fitted(model)
    images, _, guide = inputs()
    unpruned = elip_jax.create_model(NAME).apply(params, images, method="encode_image")
    for guide_given in (False, True):
        for rng_given in (False, True):
            kwargs = {**({"guide": guide} if guide_given else {}), **({"rng": jax.random.key(1)} if rng_given else {})}
            features, visual = encode(model, params, images, **kwargs)
            prunes = spec.prunes_with(guide_given, rng_given)
            assert bool(decisions(visual)) == prunes, kwargs
            assert np.array_equal(features, unpruned) != prunes, kwargs


@pytest.mark.parametrize("method", REDUCING)
def test_one_trace_per_schedule_and_shape(method):
    model = elip_jax.create_model(NAME, reduction=method)
    params = fitted(model)
    traces = []

    @jax.jit
    def forward(params, images, guide, key):
        traces.append(1)
        return model.apply(params, images, guide=guide, rng=key, method=model.encode_image)

    for seed in range(3):
        images, _, guide = inputs(seed=seed)
        forward(params, images, guide, jax.random.key(seed)).block_until_ready()
    assert len(traces) == 1


@pytest.mark.parametrize("method", REDUCING)
def test_selection_adds_no_cross_device_traffic_with_a_sharded_batch(method):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    model = elip_jax.create_model(NAME, reduction=method)
    params = jax.device_put(fitted(model), NamedSharding(mesh, P()))
    images, _, guide = inputs(batch=8)
    batch = NamedSharding(mesh, P("data"))
    images, guide = jax.device_put(images, batch), jax.device_put(guide, batch)
    key = jax.random.key(0)

    def forward(params, images, guide, key):
        return model.apply(params, images, guide=guide, rng=key, method=model.encode_image)

    compiled = jax.jit(forward, out_shardings=batch).lower(params, images, guide, key).compile()
    assert not [op for op in COLLECTIVES if op in compiled.as_text()], "token selection communicates"
    reference = jax.jit(forward)(*jax.device_get((params, images, guide)), key)
    np.testing.assert_allclose(compiled(params, images, guide, key), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", REDUCING)
def test_cls_and_protected_tokens_are_never_pruned_or_merged(method):
    protected = 2
    model = elip_jax.create_model(NAME, reduction={"method": method, "protected": protected})
    schedule = model.reduction
    assert schedule.input_tokens == 1 + PATCHES + protected and schedule.tokens_per_block()[-1] > protected
    params = fitted(model, protected)
    assert params["params"]["visual"]["learnable_tokens"].shape == (protected, WIDTH)
    images, _, guide = inputs()
    _, visual = encode(model, params, images, guide=guide, rng=jax.random.key(2))
    found = decisions(visual)
    assert found
    for stage, kept in enumerate(visual.get("kept_indices", ())):  # candidate positions: never CLS or the tail
        assert int(kept.max()) < schedule.candidates(stage) and kept.shape[1] == schedule.keep[stage]
    for block, matching in zip(schedule.merging_blocks(), visual.get("tome_matchings", ())):
        tokens = schedule.tokens_per_block()[block]
        for positions in (matching.merged, 2 * matching.into + 1, matching.kept):
            assert int(positions.min()) >= 1 and int(positions.max()) < tokens - protected


@pytest.mark.parametrize("merge", [True, False])
def test_pruning_carries_cls_and_the_protected_tail_over_unchanged_and_the_merged_token_sits_before_it(merge):
    x = jax.random.normal(jax.random.key(0), (2, 1 + 6 + 3, 4))
    scores = jax.random.uniform(jax.random.key(1), (2, 6))
    out, kept = prune_tokens(x, scores, 2, merge, protected=3)
    assert out.shape[1] == 1 + 2 + int(merge) + 3
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    np.testing.assert_array_equal(out[:, -3:], x[:, -3:])
    np.testing.assert_array_equal(out[:, 1:3], jnp.take_along_axis(x[:, 1:7], kept[..., None], axis=1))


@pytest.mark.parametrize("method", REDUCING)
def test_no_gradient_reaches_the_guide_or_the_scores_and_every_block_gets_one(method):
    model = elip_jax.create_model(NAME, reduction=method)
    params = fitted(model)
    images, _, guide = inputs()
    target = jax.random.normal(jax.random.key(9), (2, 32))

    def loss(p, guide):
        out = model.apply({"params": p}, images, guide=guide, rng=jax.random.key(4), method=model.encode_image)
        return jnp.sum(out * target)

    # compiled: op by op, the backward pass of elip's look-ahead or tome's matching takes minutes on 2 cores
    grad_params, grad_guide = jax.jit(jax.grad(loss, argnums=(0, 1)))(params["params"], guide)
    np.testing.assert_array_equal(grad_guide, 0.0)
    for i in range(DEPTH):
        norm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grad_params["visual"][f"resblocks_{i}"]))
        assert np.isfinite(norm) and norm > 0, f"block {i}"
    _, visual = encode(model, params, images, guide=guide, rng=jax.random.key(4))
    for scores in visual.get("scores", ()):  # what was sown is what selection saw: constants
        assert jax.grad(lambda s: jnp.sum(jax.lax.stop_gradient(s)))(scores).sum() == 0


@pytest.mark.parametrize("method", REDUCING)
def test_tokens_entering_each_block_are_the_schedules(method):
    model = elip_jax.create_model(NAME, reduction=method)
    params = fitted(model)
    images, _, guide = inputs()
    seen = []

    def record(module, images, guide, key):
        # the tokens entering each block, read from the shapes the blocks are called on
        return module.visual(images, guide, key)

    _, state = model.apply(params, images, guide, jax.random.key(5), method=record,
                           capture_intermediates=lambda mdl, name: name in ("attend", "__call__",
                                                                           "with_cls_attention")
                           and mdl.name and mdl.name.startswith("resblocks_"))
    captured = state["intermediates"]["visual"]
    for i in range(DEPTH):
        block = captured[f"resblocks_{i}"]
        output = next(iter(block.values()))[0]
        output = output[0] if isinstance(output, tuple) else output
        seen.append(output.shape[1])
    assert seen == model.reduction.tokens_per_block()


# ---------------------------------------------------------------- methods with parameters

class LearnedScorer(nn.Module):
    """A scorer with parameters (as a learned predictor would be): a linear score per candidate."""

    @nn.compact
    def __call__(self, inputs):
        x = inputs.x[:, 1:1 + inputs.num_candidates]
        return jax.lax.stop_gradient(nn.Dense(1, name="score")(x)[..., 0].astype(jnp.float32))


def test_a_method_whose_scorer_owns_parameters_gets_them_under_visual_reduction_scorer():
    spec = ReductionMethod(
        name="test_learned", summary="a throw-away learned scorer", trigger=registry.ALWAYS,
        placement=registry.BETWEEN_BLOCKS, removal=registry.DROP,
        default_options=lambda num_patches, depth: {"begin_layers": (1,), "keep": (num_patches // 2,)},
        scoring_flops=lambda schedule, width, heads=None, mlp_ratio=4.0: [2 * schedule.num_patches * width],
        flops_formula="2*P*D (one linear score per candidate)", scorer=LearnedScorer, serves_at_inference=True)
    registry.register(spec)
    try:
        model = elip_jax.create_model(NAME, reduction="test_learned")
        assert model.reduction.keep == (32,) and not model.reduction.merge
        images, tokens, _ = inputs()
        params = model.init(jax.random.key(0), images, tokens)
        assert params["params"]["visual"]["reduction_scorer"]["score"]["kernel"].shape == (WIDTH, 1)
        features, visual = encode(model, params, images)
        assert features.shape == (2, 32) and visual["kept_indices"][0].shape == (2, 32)
        flops = accounting.analytic_image_flops(model.reduction, WIDTH, heads=HEADS)
        assert flops["scoring"] == 2 * PATCHES * WIDTH
        # the benchmark gives the method the shared CLIP weights plus its own scorer's parameters
        shared = variables()
        merged = benchmark.fit_variables(model, shared, 0)  # what run_benchmark gives each method
        assert "reduction_scorer" in merged["params"]["visual"]
        np.testing.assert_array_equal(merged["params"]["visual"]["proj"], shared["params"]["visual"]["proj"])
    finally:
        registry.unregister("test_learned")
    assert "test_learned" not in registered_methods()
