"""ToMe (docs/other_methods.md): equality with an independent NumPy reference, and docs/invariants.md."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import elip_jax
from elip_jax.reduction import tome
from tests import numpy_reference as ref
from tests import numpy_tome_reference as nref

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
TINY_TOKENS, TINY_HEADS = 65, 4  # tiny and tiny-12: 64 px, patch 8 -> CLS + 64 patches, width 64, 4 heads
DEPTH = {"tiny": 4, "tiny-12": 12}


match = jax.jit(tome.bipartite_soft_matching, static_argnums=(1, 2))
merge = jax.jit(tome.merge_tokens)
merge_sum = jax.jit(tome.merge_sum)


def random_case(seed, batch=3, num_tokens=33, width=8, key_dim=5, max_size=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, num_tokens, width)).astype(np.float32)
    keys = rng.normal(size=(batch, num_tokens, key_dim)).astype(np.float32)
    sizes = rng.integers(1, max_size + 1, size=(batch, num_tokens)).astype(np.float32)
    return x, keys, sizes


def merged_with_jax(x, keys, sizes, r, protected):
    matching = match(jnp.asarray(keys), r, protected)
    new_x, new_sizes = merge(jnp.asarray(x), jnp.asarray(sizes), matching)
    return matching, np.asarray(new_x), np.asarray(new_sizes)


def assert_matches_reference(x, keys, sizes, r, protected, exact=False):
    matching, new_x, new_sizes = merged_with_jax(x, keys, sizes, r, protected)
    for b in range(x.shape[0]):
        expected_x, expected_sizes, (kept, merged, partners, _) = nref.merge(
            x[b].astype(np.float64), sizes[b].astype(np.float64), keys[b].astype(np.float64), r, protected)
        assert np.asarray(matching.kept[b]).tolist() == kept, f"example {b}"
        assert np.asarray(matching.merged[b]).tolist() == merged, f"example {b}"
        assert (2 * np.asarray(matching.into[b]) + 1).tolist() == partners, f"example {b}"
        np.testing.assert_array_equal(new_sizes[b], expected_sizes)
        np.testing.assert_allclose(new_x[b], expected_x, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- matching and merging

@pytest.mark.parametrize("num_tokens,protected,r", [
    (33, 0, 1), (34, 0, 5), (33, 3, 5), (34, 3, 14), (33, 0, 16), (34, 0, 100), (34, 3, 100), (33, 3, 0)])
def test_matching_and_merge_equal_the_numpy_reference(num_tokens, protected, r):
    x, keys, sizes = random_case(seed=r + 7 * protected + num_tokens, num_tokens=num_tokens)
    assert_matches_reference(x, keys, sizes, r, protected)
    matching, new_x, _ = merged_with_jax(x, keys, sizes, r, protected)
    assert matching.r == tome.clamp_r(r, num_tokens, protected) == min(r, (num_tokens - 1 - protected) // 2)
    assert new_x.shape[1] == num_tokens - matching.r


@pytest.mark.parametrize("protected", [0, 2])
@pytest.mark.parametrize("r", [3, 8, 15])
def test_ties_go_to_the_lower_position_as_in_the_reference(protected, r):
    """Keys with four ones out of eight: every similarity is a multiple of 1/4, exact in fp32 and fp64, so
    edges and partners tie often and exactly."""
    rng = np.random.default_rng(r + protected)
    x, _, sizes = random_case(seed=r, num_tokens=32)
    pool = np.zeros((3, 8), np.float32)
    for row, ones in zip(pool, ([0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7])):
        row[ones] = 1.0
    keys = pool[rng.integers(0, 3, size=x.shape[:2])]
    assert_matches_reference(x, keys, sizes, r, protected)
    # identical keys everywhere: every A token's partner is the first B token, the first r A tokens merge
    same = np.broadcast_to(pool[0], keys.shape)
    matching, _, _ = merged_with_jax(x, same, sizes, r, protected)
    np.testing.assert_array_equal(matching.merged, np.broadcast_to(2 + 2 * np.arange(matching.r), (3, matching.r)))
    np.testing.assert_array_equal(matching.into, 0)


@pytest.mark.parametrize("protected", [0, 2])
def test_sizes_add_up_and_cls_and_protected_tokens_stay_in_place_unchanged(protected):
    x, keys, _ = random_case(seed=11, num_tokens=40)
    sizes = np.ones(x.shape[:2], np.float32)
    xj, sj = jnp.asarray(x), jnp.asarray(sizes)
    for r in (6, 9, 5, 100):
        matching = match(jnp.asarray(keys[:, :xj.shape[1]]), r, protected)
        new_x, sj = merge(xj, sj, matching)
        np.testing.assert_array_equal(new_x[:, 0], xj[:, 0])
        np.testing.assert_array_equal(new_x[:, new_x.shape[1] - protected:], xj[:, xj.shape[1] - protected:])
        np.testing.assert_array_equal(sj[:, 0], 1.0)
        np.testing.assert_array_equal(sj[:, sj.shape[1] - protected:], 1.0)
        # unmerged A tokens and B tokens that received nothing are carried over bit for bit
        np.testing.assert_array_equal(new_x[:, 1:1 + matching.kept.shape[1]],
                                      jnp.take_along_axis(xj, matching.kept[..., None], axis=1))
        xj = new_x
        np.testing.assert_array_equal(sj.sum(axis=1), 40.0)
    assert xj.shape[1] == tome.tome_schedule(40, 4, [6, 9, 5, 100], protected).final_tokens


def test_sources_follow_the_merges():
    x, keys, _ = random_case(seed=3, num_tokens=21)
    sizes = jnp.ones(x.shape[:2])
    sources = tome.initial_sources(3, 21)
    xj = jnp.asarray(x)
    for r in (5, 4, 3):
        matching = match(jnp.asarray(keys[:, :xj.shape[1]]), r, protected=1)
        xj, sizes = merge(xj, sizes, matching)
        sources = merge_sum(sources, matching)
        np.testing.assert_array_equal(sources.sum(-1), sizes)  # a token's size counts the inputs it holds
        np.testing.assert_array_equal(sources.sum(1), 1.0)  # every input token sits in exactly one token
    # a size-weighted token is the mean of the input tokens it holds (here nothing ran between merges)
    np.testing.assert_allclose(xj, sources @ x / sizes[..., None], rtol=1e-5, atol=1e-6)


def test_merging_keeps_the_size_weighted_mean_and_identical_tokens_unchanged():
    x, keys, sizes = random_case(seed=5, num_tokens=30)
    matching = match(jnp.asarray(keys), 10)
    new_x, new_sizes = merge(jnp.asarray(x), jnp.asarray(sizes), matching)
    mean = lambda x, s: (np.asarray(x, np.float64) * np.asarray(s)[..., None]).sum(1) / np.asarray(s).sum(1)[:, None]
    np.testing.assert_allclose(mean(new_x, new_sizes), mean(x, sizes), rtol=1e-5, atol=1e-6)
    same = np.broadcast_to(x[:, :1], x.shape)  # all tokens identical
    merged, _ = merge(jnp.asarray(same), jnp.asarray(sizes), matching)
    np.testing.assert_allclose(merged, same[:, :20], rtol=1e-6)


def test_r_zero_changes_nothing():
    x, keys, sizes = random_case(seed=1)
    matching = match(jnp.asarray(keys), 0, protected=2)
    assert matching.r == 0 and matching.kept.shape == (3, 15)
    new_x, new_sizes = merge(jnp.asarray(x), jnp.asarray(sizes), matching)
    np.testing.assert_array_equal(new_x, x)
    np.testing.assert_array_equal(new_sizes, sizes)


def test_clamp_and_bad_arguments_are_named():
    assert tome.clamp_r(100, 197) == 98 and tome.clamp_r(100, 197, protected=4) == 96
    assert tome.clamp_r(3, 2) == 0 and tome.clamp_r(3, 1) == 0
    with pytest.raises(ValueError, match="non-negative Python int"):
        tome.clamp_r(-1, 10)
    with pytest.raises(ValueError, match="protected"):
        tome.clamp_r(1, 10, protected=-1)
    with pytest.raises(ValueError, match="num_tokens"):
        tome.clamp_r(1, 3, protected=3)


# ---------------------------------------------------------------- schedules and FLOPs

def test_constant_and_decreasing_schedules_are_clamped():
    s = tome.tome_schedule(197, 12, 8)
    assert s.r == (8,) * 12 and s.tokens == tuple(197 - 8 * i for i in range(12)) and s.final_tokens == 101
    d = tome.tome_schedule(197, 12, 8, decreasing=True)
    assert d.r == (16, 15, 13, 12, 10, 9, 7, 6, 4, 3, 1, 0) and sum(d.r) == 96 and d.final_tokens == 101
    c = tome.tome_schedule(10, 4, 3, protected=1)  # 8 mergeable: 4, then 3 of 6 ... clamped to half
    assert c.r == (3, 2, 1, 1) and c.tokens == (10, 7, 5, 4)
    assert tome.tome_schedule(65, 3, [0, 40, 2]).r == (0, 32, 2)
    with pytest.raises(ValueError, match="one value per block"):
        tome.tome_schedule(65, 3, [1, 2])
    with pytest.raises(ValueError, match="single int"):
        tome.tome_schedule(65, 3, [1, 2, 3], decreasing=True)
    with pytest.raises(ValueError, match="depth"):
        tome.tome_schedule(65, 0, 1)


def test_scoring_flops_follow_the_formula():
    # ViT-B/16 @224, r = 8 on 197 tokens: nA = nB = 98, dk = 64
    expected = 197 * 768 + 3 * 196 * 64 + 2 * 98 * 98 * 64 + 2 * (8 + 98) * 768
    assert tome.tome_scoring_flops(197, 8, 768, 12) == expected
    assert tome.tome_scoring_flops(197, 0, 768, 12) == 0
    per_block = tome.tome_scoring_flops_per_block(tome.tome_schedule(197, 12, 8), 768, 12)
    assert len(per_block) == 12 and per_block == sorted(per_block, reverse=True)
    # the similarity, about (N/2)^2 * 2 dk, is most of it
    assert 0.75 < 2 * 98 * 98 * 64 / per_block[0] < 1


# ---------------------------------------------------------------- attention

@functools.lru_cache(maxsize=None)
def tiny_variables(name="tiny", seed=0):
    model = elip_jax.create_model(name)
    images = jnp.zeros((1, 64, 64, 3))
    tokens = jnp.zeros((1, 77), jnp.int32).at[:, -1].set(49407)
    return model.init(jax.random.key(seed), images, tokens)


def tiny_images(seed=0, batch=2):
    return jax.random.normal(jax.random.key(seed), (batch, 64, 64, 3))


def test_proportional_attention_with_unit_sizes_is_plain_attention_bit_for_bit():
    model = elip_jax.create_model("tiny")

    def both(module, images):
        x = module.visual.embed(images)
        attn = module.visual.blocks[0].attn
        plain = attn(x)
        biased, keys = attn(x, key_bias=tome.size_bias(jnp.ones(x.shape[:2])), return_keys=True)
        k = x @ attn.in_proj_kernel[:, 64:128] + attn.in_proj_bias[64:128]
        return plain, biased, keys, k.reshape(k.shape[0], k.shape[1], 4, 16).mean(2)

    plain, biased, keys, expected_keys = jax.jit(functools.partial(model.apply, method=both))(
        tiny_variables(), tiny_images())
    np.testing.assert_array_equal(plain, biased)
    np.testing.assert_allclose(keys, expected_keys, rtol=1e-5, atol=1e-6)


def test_a_token_of_size_two_attends_as_two_copies():
    """Proportional attention: one token of size 2 weighs, for every query, as the token duplicated."""
    model = elip_jax.create_model("tiny")

    def outputs(module, images):
        x = module.visual.embed(images)[:, :9]
        attn = module.visual.blocks[1].attn
        sizes = jnp.ones(x.shape[:2]).at[:, 4].set(2.0)
        with_size = attn(x, key_bias=tome.size_bias(sizes))
        duplicated = attn(jnp.concatenate([x, x[:, 4:5]], axis=1))
        return with_size, duplicated[:, :9]

    with jax.default_matmul_precision("highest"):
        with_size, duplicated = model.apply(tiny_variables(), tiny_images(), method=outputs)
    np.testing.assert_allclose(with_size, duplicated, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the tiny ViT with ToMe in every block

def tome_features(module, images, r_per_block, protected_tokens=None):
    """The vision tower with `tome_block` in every block: (features, sizes, tokens entering each block,
    matchings). protected_tokens [n, D] are appended after ln_pre, as learnable tokens would be."""
    visual = module.visual
    x = visual.embed(images)
    protected = 0
    if protected_tokens is not None:
        extra = jnp.broadcast_to(protected_tokens, (x.shape[0],) + protected_tokens.shape).astype(x.dtype)
        x = jnp.concatenate([x, extra], axis=1)
        protected = protected_tokens.shape[0]
    sizes, counts, matchings = None, [], []
    for block, r in zip(visual.blocks, r_per_block):
        counts.append(x.shape[1])
        x, sizes, matching = tome.tome_block(block, x, sizes, r, protected)
        matchings.append(matching)
    features = visual.ln_post(x[:, 0]).astype(jnp.float32) @ visual.proj
    return features, sizes, tuple(counts), matchings


def jit_tome_features(model):
    return jax.jit(functools.partial(model.apply, method=tome_features), static_argnums=2)


@pytest.mark.parametrize("r,decreasing,protected", [(4, False, 0), (8, True, 2)])
def test_tiny_vit_with_tome_matches_the_numpy_reference(r, decreasing, protected):
    """12 blocks; the decreasing schedule from 16 with 2 protected tokens is clamped in its later blocks."""
    model = elip_jax.create_model("tiny-12")
    variables = tiny_variables("tiny-12")
    images = tiny_images(seed=r)
    extra = None
    if protected:
        extra = jax.random.normal(jax.random.key(9), (protected, 64))
    schedule = tome.tome_schedule(TINY_TOKENS + protected, DEPTH["tiny-12"], r, protected, decreasing)
    with jax.default_matmul_precision("highest"):
        features, sizes, counts, matchings = jit_tome_features(model)(variables, images, schedule.r, extra)
    counts = tuple(int(c) for c in counts)
    assert counts == schedule.tokens
    assert sizes.shape == (2, schedule.final_tokens)
    np.testing.assert_array_equal(sizes.sum(1), TINY_TOKENS + protected)
    vp = ref.to_numpy_tree(jax.device_get(variables["params"]["visual"]))
    for b in range(images.shape[0]):
        expected, expected_counts, expected_sizes, decisions = nref.tome_image_features(
            np.asarray(images[b], np.float64), vp, patch=8, heads=TINY_HEADS, depth=DEPTH["tiny-12"],
            r_per_block=schedule.r, extra_tokens=None if extra is None else np.asarray(extra, np.float64))
        assert tuple(expected_counts) == counts
        for i, (matching, (kept, merged, partners, margin)) in enumerate(zip(matchings, decisions)):
            if matching is None:
                assert merged == []
                continue
            assert margin > 1e-5, f"near tie in block {i}: the comparison would not be meaningful"
            assert np.asarray(matching.kept[b]).tolist() == kept, f"example {b}, block {i}"
            assert np.asarray(matching.merged[b]).tolist() == merged, f"example {b}, block {i}"
            assert (2 * np.asarray(matching.into[b]) + 1).tolist() == partners, f"example {b}, block {i}"
        np.testing.assert_array_equal(np.asarray(sizes[b]), expected_sizes)
        np.testing.assert_allclose(np.asarray(features[b]), expected, rtol=1e-4, atol=1e-4)


def test_r_zero_everywhere_is_the_unpruned_model_bit_for_bit():
    model = elip_jax.create_model("tiny")
    variables, images = tiny_variables(), tiny_images()
    tome_forward = jax.jit(lambda v, im: model.apply(v, im, [0] * DEPTH["tiny"], method=tome_features)[0])
    plain = jax.jit(lambda v, im: model.apply(v, im, method=model.encode_image))
    np.testing.assert_array_equal(tome_forward(variables, images), plain(variables, images))


def test_one_trace_per_shape_and_gradients_flow():
    model = elip_jax.create_model("tiny")
    r_per_block = list(tome.tome_schedule(TINY_TOKENS, DEPTH["tiny"], 8).r)
    traces = []

    @jax.jit
    def loss(params, images):
        traces.append(1)
        features = model.apply({"params": params}, images, r_per_block, method=tome_features)[0]
        return (features ** 2).sum()

    params = tiny_variables()["params"]
    grad = jax.jit(jax.grad(loss))
    for seed in range(3):
        loss(params, tiny_images(seed)).block_until_ready()
    assert len(traces) == 1
    grads = grad(params, tiny_images(0))
    visual = grads["visual"]
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(visual))
    for i in range(DEPTH["tiny"]):  # every block's parameters get a gradient, the key projection included
        assert np.abs(visual[f"resblocks_{i}"]["attn"]["in_proj_kernel"]).sum() > 0
        assert np.abs(visual[f"resblocks_{i}"]["mlp"]["c_fc"]["kernel"]).sum() > 0


def test_gradient_flows_through_the_size_weighted_merge_not_the_similarity():
    x, keys, sizes = random_case(seed=2, num_tokens=17)
    weights = np.random.default_rng(0).normal(size=(3, 17 - 5, x.shape[2])).astype(np.float32)

    def loss(x, keys):
        matching = tome.bipartite_soft_matching(keys, 5)
        return (tome.merge_tokens(x, jnp.asarray(sizes), matching)[0] * weights).sum()

    grad_x, grad_keys = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(keys))
    np.testing.assert_array_equal(grad_keys, 0.0)
    matching = tome.bipartite_soft_matching(jnp.asarray(keys), 5)
    for b in range(3):  # d out_j / d x_p = s_p / (total size of token j) for every p that token j holds
        sources = np.asarray(tome.merge_sum(tome.initial_sources(3, 17), matching)[b])
        new_sizes = np.asarray(tome.merge_sum(jnp.asarray(sizes), matching)[b])
        expected = (sources * sizes[b][None, :] / new_sizes[:, None]).T @ weights[b]
        np.testing.assert_allclose(grad_x[b], expected, rtol=1e-5, atol=1e-6)


def test_tome_adds_no_cross_device_traffic_with_a_sharded_batch():
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    model = elip_jax.create_model("tiny")
    variables = jax.device_put(tiny_variables(), NamedSharding(mesh, P()))
    batch = NamedSharding(mesh, P("data"))
    images = jax.device_put(tiny_images(batch=8), batch)
    extra = jnp.ones((2, 64))
    r_per_block = list(tome.tome_schedule(TINY_TOKENS + 2, DEPTH["tiny"], 12, protected=2).r)

    def forward(variables, images):
        return model.apply(variables, images, r_per_block, extra, method=tome_features)[:2]

    compiled = jax.jit(forward, out_shardings=batch).lower(variables, images).compile()
    hlo = compiled.as_text()
    assert not [op for op in COLLECTIVES if op in hlo], "ToMe communicates across devices"
    expected = jax.jit(forward)(*jax.device_get((variables, images)))
    got = compiled(variables, images)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], expected[1])


# ---------------------------------------------------------------- the registered method, in the tower

def test_the_registered_tome_in_the_tower_is_the_block_by_block_reference_and_sows_its_matchings():
    """`create_model(reduction='tome')` runs tome_block in every block, as `tome_features` does by hand."""
    model = elip_jax.create_model("tiny", reduction={"method": "tome", "r": 8, "decreasing": True})
    variables, images = tiny_variables(), tiny_images()
    features, state = jax.jit(lambda v, im: model.apply(v, im, method=model.encode_image,
                                                         mutable=["intermediates"]))(variables, images)
    expected, _, counts, matchings = jit_tome_features(model)(variables, images, model.reduction.r)
    np.testing.assert_array_equal(features, expected)
    assert list(counts) == model.reduction.tokens_per_block()
    sown = state["intermediates"]["visual"]["tome_matchings"]
    assert len(sown) == len([m for m in matchings if m is not None])
    for got, want in zip(sown, [m for m in matchings if m is not None]):
        np.testing.assert_array_equal(got.merged, want.merged)


def test_remat_gives_the_same_gradients_with_tome():
    variables, images = tiny_variables(), tiny_images()
    grads = []
    for remat in (False, True):
        model = elip_jax.create_model("tiny", reduction="tome", remat=remat)
        loss = lambda p: (model.apply({"params": p}, images, method=model.encode_image) ** 2).sum()
        grads.append(jax.jit(jax.grad(loss))(variables["params"]))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)
