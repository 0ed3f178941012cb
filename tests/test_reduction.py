"""Token reduction: schedules, faithfulness of ELIP to a NumPy reference, invariants of spec section 4."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elip_jax
from elip_jax.reduction import get_method, make_schedule, prune_tokens, registered_methods
from elip_jax.reduction.registry import BETWEEN_BLOCKS
from elip_jax.train.losses import clip_loss
from tests import numpy_reference as ref

IMAGE = (2, 64, 64, 3)
# The methods that prune between blocks; docs/invariants.md's invariants for every method are in
# tests/test_reduction_invariants.py.
STAGE_METHODS = [m for m in registered_methods() if get_method(m).placement == BETWEEN_BLOCKS]


def tiny_inputs(seed=0, batch=2):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    images = jax.random.normal(k1, (batch,) + IMAGE[1:])
    tokens = jax.random.randint(k2, (batch, 77), 1, 49406).at[:, -1].set(49407)
    guide = jax.random.normal(k3, (batch, 32))
    return images, tokens, guide


@functools.lru_cache(maxsize=None)
def tiny_variables(seed=0):
    model = elip_jax.create_model("tiny-12")
    images, tokens, _ = tiny_inputs()
    return model.init(jax.random.key(seed), images, tokens)


def encode(model, variables, images, **kwargs):
    out, state = model.apply(variables, images, method=model.encode_image, mutable=["intermediates"], **kwargs)
    return out, state.get("intermediates", {}).get("visual", {}).get("kept_indices", ())


# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize("name,size,expected", [
    ("ViT-B-16", 224, [197] * 2 + [178] * 2 + [129] * 6 + [80] * 2),
    ("ViT-B-16", 256, [257] * 2 + [232] * 2 + [168] * 6 + [104] * 2),
    ("ViT-B-32", 224, [50] * 2 + [46] * 2 + [33] * 6 + [21] * 2),
])
def test_tokens_per_block_match_the_spec_table(name, size, expected):
    model = elip_jax.create_model(name, image_size=size, reduction="elip")
    assert model.reduction.tokens_per_block() == expected


def test_default_schedule_scales_with_depth():
    schedule = make_schedule("elip", num_patches=256, depth=24)
    assert schedule.begin_layers == (4, 8, 20)
    assert schedule.keep == (230, 166, 102)


@pytest.mark.parametrize("ratio,num_patches,expected", [
    (0.57, 100, 57), (0.29, 100, 29), (0.58, 100, 58), (0.6, 196, 117), (0.9, 196, 176), (0.4, 196, 78),
    (0.7, 10, 7), (0.599, 196, 117), (1.0, 196, 196),
])
def test_keep_counts_floor_the_ratio_as_written(ratio, num_patches, expected):
    """floor(ratio * P) of the decimal the user typed: the float product 0.57 * 100 is 56.99999999999999."""
    schedule = make_schedule("evit", num_patches=num_patches, depth=12, begin_layers=(3,), keep_ratios=(ratio,))
    assert schedule.keep == (expected,)


@pytest.mark.parametrize("kwargs,message", [
    (dict(begin_layers=(0, 4, 10)), r"begin_layers\[0\] = 0 is out of range: must be an int in \[1, 11\]"),
    (dict(begin_layers=(2, 12, 13)), r"begin_layers\[1\] = 12 is out of range"),
    (dict(begin_layers=(4, 2, 10)), "strictly increasing"),
    (dict(keep_ratios=(0.9, 0.95, 0.4)), r"stage 1 .* keeps 186 patches .* keep must be in \[1, 177\]"),
    (dict(keep_ratios=(0.9, 1.5, 0.4)), r"keep_ratios\[1\] = 1.5 is out of range"),
    (dict(keep_ratios=(0.9, 0.4)), "same length"),
    (dict(method="pruney"), "reduction method must be one of"),
])
def test_invalid_schedules_fail_with_the_bad_value_and_range(kwargs, message):
    args = dict(method="elip", num_patches=196, depth=12)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        make_schedule(**args)


def test_exact_keep_counts_and_ratios_exactly_one_of_the_two():
    assert make_schedule("evit", 196, 12, begin_layers=(3,), keep=(118,)).keep == (118,)
    assert make_schedule("evit", 196, 12, begin_layers=(3,), keep_ratios=(118 / 196,)).keep == (117,)  # floor
    with pytest.raises(ValueError, match="keep_ratios or keep"):
        make_schedule("evit", 196, 12, begin_layers=(3,), keep=(118,), keep_ratios=(0.6,))
    with pytest.raises(ValueError, match=r"keeps 197 patches \(197\) .* keep must be in \[1, 196\]"):
        make_schedule("evit", 196, 12, begin_layers=(3,), keep=(197,))
    with pytest.raises(ValueError, match=r"keep\[0\] = 1.5 must be an int"):
        make_schedule("evit", 196, 12, begin_layers=(3,), keep=(1.5,))


def test_protected_tokens_count_in_every_block_and_the_merged_token_sits_before_them():
    schedule = make_schedule("elip", 196, 12, protected=4)
    assert schedule.tokens_per_block() == [201] * 2 + [182] * 2 + [133] * 6 + [84] * 2
    assert schedule.candidates(1) == 176 + 1  # the merged token is a candidate; the protected ones are not
    tome = make_schedule("tome", 196, 12, r=8, protected=4)
    assert tome.tokens_per_block()[:3] == [201, 193, 185]
    with pytest.raises(ValueError, match="protected"):
        make_schedule("elip", 196, 12, protected=-1)


def test_methods_refuse_the_options_of_the_other_placement():
    with pytest.raises(ValueError, match="takes r"):
        make_schedule("tome", 196, 12, begin_layers=(2,), keep_ratios=(0.5,))
    with pytest.raises(ValueError, match="r and decreasing belong"):
        make_schedule("evit", 196, 12, r=8)
    with pytest.raises(ValueError, match="random prunes in at most 1 stage, each before one of blocks 0 to 11"):
        make_schedule("random", 196, 12, begin_layers=(2, 4), keep_ratios=(0.5, 0.4))


def test_random_prunes_once_before_any_block_and_block_0_by_default():
    assert make_schedule("random", 196, 12).begin_layers == (0,)  # FLIP: masking before the first block
    assert make_schedule("random", 64, 12, begin_layers=(3,), keep_ratios=(0.61,)).keep == (39,)
    assert make_schedule("random", 64, 12, begin_layers=(11,), keep_ratios=(0.5,)).tokens_per_block()[-1] == 33
    with pytest.raises(ValueError, match=r"before one of blocks 0 to 11 of a 12-block tower: got begin_layers=\(12,\)"):
        make_schedule("random", 64, 12, begin_layers=(12,), keep_ratios=(0.5,))


@pytest.mark.parametrize("method", registered_methods())
def test_a_schedule_rebuilds_from_its_options(method):
    schedule = make_schedule(method, 196, 12, protected=2)
    options = schedule.options()
    assert make_schedule(num_patches=196, depth=12, **options) == schedule


# ---------------------------------------------------------------- faithfulness

def test_elip_matches_the_numpy_reference_at_every_stage():
    model = elip_jax.create_model("tiny-12", reduction="elip")
    variables = tiny_variables()
    images, _, guide = tiny_inputs(seed=3)
    with jax.default_matmul_precision("highest"):
        features, kept = encode(model, variables, images, guide=guide)
    vp = ref.to_numpy_tree(jax.device_get(variables["params"]["visual"]))
    s = model.reduction
    for b in range(images.shape[0]):
        expected, expected_kept = ref.elip_image_features(
            np.asarray(images[b], np.float64), np.asarray(guide[b], np.float64), vp, patch=8, heads=4, depth=12,
            begin_layers=s.begin_layers, keep=s.keep, mix=s.mix)
        for stage, indices in enumerate(kept):
            assert np.asarray(indices[b]).tolist() == expected_kept[stage], f"example {b}, stage {stage}"
        np.testing.assert_allclose(np.asarray(features[b]), expected, rtol=1e-4, atol=1e-4)


def test_numpy_reference_has_no_near_ties_so_the_comparison_is_meaningful():
    """The reference's decisions are robust: at each stage the kth and (k+1)th scores differ clearly."""
    model = elip_jax.create_model("tiny-12", reduction="elip")
    vp = ref.to_numpy_tree(jax.device_get(tiny_variables()["params"]["visual"]))
    images, _, guide = tiny_inputs(seed=3)
    x = ref.embed(np.asarray(images[0], np.float64), vp, 8)
    t = np.asarray(guide[0], np.float64)
    t = (t / np.linalg.norm(t)) @ vp["proj"].T
    y = x.copy()
    y[0] = 0.2 * t + 0.8 * y[0]
    for j in (2, 3):
        y, attn = ref.block(y, vp[f"resblocks_{j}"], 4)
    scores = np.sort(attn[0, 1:])[::-1]
    k = model.reduction.keep[0]
    assert scores[k - 1] - scores[k] > 1e-7


def test_cheap_last_lookahead_block_gives_the_decisions_of_the_full_block():
    model = elip_jax.create_model("tiny-12")
    variables = tiny_variables()
    images, _, _ = tiny_inputs(seed=5)

    def both(module, images):
        x = module.visual.embed(images)
        for block in module.visual.blocks[:3]:
            x = block(x)
        block = module.visual.blocks[3]
        _, full_row = block.with_cls_attention(x)  # alongside the full attention
        cheap_row = block.cls_attention(x)  # the CLS row alone
        h = block.ln_1(x)
        q, k, _ = jnp.split(h @ block.attn.in_proj_kernel + block.attn.in_proj_bias, 3, axis=-1)
        split = lambda a: a.reshape(a.shape[0], a.shape[1], 4, 16)
        matrix = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / 4.0, axis=-1)
        return full_row, cheap_row, matrix[:, :, 0].mean(1)

    with jax.default_matmul_precision("highest"):
        full_row, cheap_row, matrix_row = model.apply(variables, images, method=both)
    np.testing.assert_allclose(cheap_row, matrix_row, atol=1e-6)
    np.testing.assert_array_equal(cheap_row, full_row)
    k = 40
    np.testing.assert_array_equal(jax.lax.top_k(cheap_row[:, 1:], k)[1], jax.lax.top_k(matrix_row[:, 1:], k)[1])


@pytest.mark.parametrize("method", STAGE_METHODS)
def test_every_method_keeps_the_scheduled_counts_and_distinct_sorted_indices(method):
    from elip_jax.checkpoints import fit_variables
    images, _, guide = tiny_inputs()
    model = elip_jax.create_model("tiny-12", reduction=method)
    variables = fit_variables(model, tiny_variables())  # plus what the method owns (a learned scorer)
    _, kept = encode(model, variables, images, guide=guide, rng=jax.random.key(7))
    assert [k.shape[1] for k in kept] == list(model.reduction.keep)
    for stage, indices in enumerate(kept):
        indices = np.asarray(indices)
        assert (np.diff(indices, axis=1) > 0).all()
        assert indices.max() < model.reduction.candidates(stage)


def test_evit_without_its_merged_token_drops_what_it_would_merge():
    """merge=False: the same decisions as EViT (its scores come from the block before), one token fewer after the
    stage, and a schedule that saves and rebuilds as such; methods that do not fuse into one token refuse it."""
    variables = tiny_variables()
    images, _, _ = tiny_inputs()
    options = dict(begin_layers=(3,), keep=(39,))
    fused = elip_jax.create_model("tiny-12", reduction=dict(method="evit", **options))
    dropped = elip_jax.create_model("tiny-12", reduction=dict(method="evit", merge=False, **options))
    assert dropped.reduction.tokens_per_block() == [65] * 3 + [40] * 9
    assert fused.reduction.tokens_per_block() == [65] * 3 + [41] * 9
    assert make_schedule(num_patches=64, depth=12, **dropped.reduction.options()) == dropped.reduction
    fused_out, fused_kept = encode(fused, variables, images)
    dropped_out, dropped_kept = encode(dropped, variables, images)
    np.testing.assert_array_equal(np.asarray(fused_kept[0]), np.asarray(dropped_kept[0]))
    assert not np.allclose(np.asarray(fused_out), np.asarray(dropped_out))
    for method in ("tome", "random", "none"):
        with pytest.raises(ValueError, match="merge applies to methods that fuse"):
            make_schedule(method, 64, 12, merge=False)


def test_the_guide_changes_elip_decisions_and_random_follows_its_key():
    variables = tiny_variables()
    images, _, guide = tiny_inputs()
    elip = elip_jax.create_model("tiny-12", reduction="elip")
    _, kept_a = encode(elip, variables, images, guide=guide)
    _, kept_b = encode(elip, variables, images, guide=-guide)
    assert any((np.asarray(a) != np.asarray(b)).any() for a, b in zip(kept_a, kept_b))
    rand = elip_jax.create_model("tiny-12", reduction="random")
    _, r1 = encode(rand, variables, images, rng=jax.random.key(1))
    _, r1_again = encode(rand, variables, images, rng=jax.random.key(1))
    _, r2 = encode(rand, variables, images, rng=jax.random.key(2))
    np.testing.assert_array_equal(r1[0], r1_again[0])
    assert (np.asarray(r1[0]) != np.asarray(r2[0])).any()


# ---------------------------------------------------------------- gradients

def test_prune_gradient_flows_through_gather_and_merge_only():
    """Closed form: d/dx sum(c * prune(x)) is c on kept rows and w_p * c_merged on pruned rows, with the
    scores a differentiable function of x whose own gradient must not contribute."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 4))
    c = jax.random.normal(jax.random.key(1), (2, 1 + 3 + 1, 4))
    score_fn = lambda x: jax.nn.softmax(x[:, 1:].sum(-1))  # depends on x: its gradient would leak if not stopped
    grad = jax.grad(lambda x: jnp.sum(c * prune_tokens(x, score_fn(x), 3, merge=True)[0]))(x)
    scores = np.asarray(score_fn(x))
    _, kept = prune_tokens(x, scores, 3, merge=True)
    expected = np.zeros(x.shape)
    for b in range(2):
        expected[b, 0] = c[b, 0]
        pruned = [n for n in range(8) if n not in np.asarray(kept[b])]
        for j, n in enumerate(np.asarray(kept[b])):
            expected[b, 1 + n] = c[b, 1 + j]
        total = scores[b, pruned].sum() + 1e-6
        for n in pruned:
            expected[b, 1 + n] = scores[b, n] / total * c[b, -1]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected[:, 1:]).min() > 0  # kept and merged tokens all receive gradient


def test_remat_gives_the_same_gradients():
    variables = tiny_variables()
    images, tokens, _ = tiny_inputs()
    grads = []
    for remat in (False, True):
        model = elip_jax.create_model("tiny-12", reduction="elip", remat=remat)
        loss = lambda p: clip_loss(*model.apply({"params": p}, images, tokens))
        grads.append(jax.jit(jax.grad(loss))(variables["params"]))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)


# ---------------------------------------------------------------- compilation

def test_one_trace_per_schedule_and_shape():
    model = elip_jax.create_model("tiny-12", reduction="elip")
    variables = tiny_variables()
    traces = []

    @jax.jit
    def forward(variables, images, guide):
        traces.append(1)
        return model.apply(variables, images, guide=guide, method=model.encode_image)

    for seed in range(3):
        images, _, guide = tiny_inputs(seed=seed)
        forward(variables, images, guide).block_until_ready()
    assert len(traces) == 1
