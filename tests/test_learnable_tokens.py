"""Learnable tokens (docs/learnable_tokens.md): visual tokens after the patches (shallow, or VPT-deep: a fresh set
before every block), text context tokens after SOT (CoOp); never pruned or merged; saved and loaded with the
weights.

References are independent of the towers' code paths: the deep tower is recomputed block by block from the
blocks' own parameters, and the text context is checked against the plain text tower fed the token ids whose
embeddings the context was set to (closed form: inserting embeddings = inserting those ids)."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import elip_jax
from elip_jax import checkpoints
from elip_jax.checkpoints import CheckpointError
from elip_jax.models.layers import LayerNorm, ResidualBlock
from elip_jax.reduction import get_method, registered_methods

NAME, PATCHES, DEPTH, WIDTH, PROTECTED = "tiny", 64, 4, 64, 3
SOT, EOT = 49406, 49407
REDUCING = [m for m in registered_methods() if get_method(m).reduces]


def images_of(batch=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, 64, 64, 3))


def tokens_of(lengths, width=77):
    """Rows [SOT, words..., EOT, 0...]: word ids below EOT so that EOT stays each row's highest id."""
    rng = np.random.default_rng(0)
    rows = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        rows[row, :n + 2] = [SOT, *rng.integers(1, 40000, n), EOT]
    return jnp.asarray(rows)


@functools.lru_cache(maxsize=None)
def deep_model_and_params(method="none"):
    model = elip_jax.create_model(NAME, reduction={"method": method, "protected": PROTECTED},
                                  deep_visual_tokens=True)
    return model, checkpoints.random_variables(model, seed=1)


def reference_deep_features(params, images, config):
    """The VPT-deep tower by hand: embed, then before block i >= 1 overwrite the last PROTECTED tokens with
    deep_tokens[i - 1], each block applied alone from its own parameters."""
    vp = params["params"]["visual"]
    model = elip_jax.create_model(NAME, reduction={"method": "none", "protected": PROTECTED})
    x = model.apply({"params": {**params["params"], "visual": {k: v for k, v in vp.items() if k != "deep_tokens"}}},
                    images, method=lambda m, im: m.visual.embed(im))
    block = ResidualBlock(WIDTH, config.vision_heads, config.mlp_ratio, config.activation)
    for i in range(DEPTH):
        if i:
            x = x.at[:, -PROTECTED:].set(vp["deep_tokens"][i - 1][None])
        x = block.apply({"params": vp[f"resblocks_{i}"]}, x)
    cls = LayerNorm().apply({"params": vp["ln_post"]}, x[:, 0])
    return np.asarray(cls @ vp["proj"])


def test_deep_tokens_replace_the_protected_tail_before_every_block_after_the_first():
    model, params = deep_model_and_params()
    assert params["params"]["visual"]["learnable_tokens"].shape == (PROTECTED, WIDTH)
    assert params["params"]["visual"]["deep_tokens"].shape == (DEPTH - 1, PROTECTED, WIDTH)
    images = images_of()
    out = jax.jit(lambda p, x: model.apply(p, x, method=model.encode_image))(params, images)
    np.testing.assert_allclose(out, reference_deep_features(params, images, model.config), rtol=1e-5, atol=1e-5)

    def loss(deep):
        p = {"params": {**params["params"], "visual": {**params["params"]["visual"], "deep_tokens": deep}}}
        return model.apply(p, images, method=model.encode_image).sum()

    grads = jax.jit(jax.grad(loss))(params["params"]["visual"]["deep_tokens"])  # every block's set is used
    assert all(float(jnp.abs(g).sum()) > 0 for g in grads)


def test_without_tokens_the_new_options_change_nothing():
    images, tokens = images_of(), tokens_of([3, 5])
    plain = elip_jax.create_model(NAME)
    variables = checkpoints.random_variables(plain, seed=2)
    deep_without_tokens = elip_jax.create_model(NAME, deep_visual_tokens=True)  # no protected tokens: no-op
    same = checkpoints.random_variables(deep_without_tokens, seed=2)
    assert jax.tree_util.tree_structure(same) == jax.tree_util.tree_structure(variables)
    for model in (plain, deep_without_tokens):
        np.testing.assert_array_equal(model.apply(variables, images, method=model.encode_image),
                                      plain.apply(variables, images, method=plain.encode_image))
    no_context = elip_jax.create_model(NAME, text_context_tokens=0)
    np.testing.assert_array_equal(no_context.apply(variables, tokens, method=no_context.encode_text),
                                  plain.apply(variables, tokens, method=plain.encode_text))


@pytest.mark.parametrize("width", [77, 12])
def test_context_tokens_equal_inserting_the_token_ids_they_embed(width):
    n = 4
    coop = elip_jax.create_model(NAME, text_context_tokens=n)
    plain = elip_jax.create_model(NAME)
    variables = checkpoints.random_variables(coop, seed=3)
    ids = np.array([101, 202, 303, 404])
    table = variables["params"]["text"]["token_embedding"]["embedding"]
    text = {**variables["params"]["text"], "context_tokens": table[ids]}
    params = {"params": {**variables["params"], "text": text}}
    plain_params = {"params": {**params["params"], "text": {k: v for k, v in text.items() if k != "context_tokens"}}}
    assert variables["params"]["text"]["context_tokens"].shape == (n, 64)
    # the text grows by n up to the context (77): narrow input (width 12) grows to 16; at width 77 the tail is cut,
    # padding only for short rows, and the 73-word row's EOT would fall beyond the context: it stays last
    lengths = [2, 5, 9] if width == 12 else [2, 30, 73]
    tokens = np.asarray(tokens_of(lengths, width))
    expected_rows = []
    for row in tokens:
        inserted = np.concatenate([row[:1], ids, row[1:]])[:min(width + n, 77)]
        if EOT not in inserted:
            inserted[-1] = EOT
        expected_rows.append(inserted)
    expected = plain.apply(plain_params, jnp.asarray(np.stack(expected_rows)), method=plain.encode_text)
    got = coop.apply(params, jnp.asarray(tokens), method=coop.encode_text)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_text_context_tokens_are_validated():
    with pytest.raises(ValueError, match="text_context_tokens"):
        elip_jax.create_model(NAME, text_context_tokens=76)
    with pytest.raises(ValueError, match="deep_visual_tokens"):
        elip_jax.create_model(NAME, deep_visual_tokens=1)


@pytest.mark.parametrize("method", REDUCING)
def test_deep_protected_tokens_are_never_pruned_or_merged(method):
    """Every method chooses only among the candidates: the tail the deep tokens overwrite before each block is
    still the learnable tokens (were one pruned, the overwrite would land on a patch)."""
    model = elip_jax.create_model(NAME, reduction={"method": method, "protected": PROTECTED},
                                  deep_visual_tokens=True)
    _, params = deep_model_and_params()
    from elip_jax.checkpoints.params import fit_variables
    params = fit_variables(model, params)  # a method's own parameters (a scorer's) initialised
    schedule = model.reduction
    images = images_of()
    guide = jax.random.normal(jax.random.key(5), (2, 32))
    encode = jax.jit(lambda p, x, g, k: model.apply(p, x, guide=g, rng=k, method=model.encode_image,
                                                    mutable=["intermediates"]))  # compiled: faster than eager
    _, state = encode(params, images, guide, jax.random.key(2))
    visual = state["intermediates"]["visual"]
    found = list(visual.get("kept_indices", ())) + list(visual.get("tome_matchings", ()))
    assert found, f"{method} did not reduce"
    for stage, kept in enumerate(visual.get("kept_indices", ())):
        assert int(kept.max()) < schedule.candidates(stage) and kept.shape[1] == schedule.keep[stage]
    for block, matching in zip(schedule.merging_blocks(), visual.get("tome_matchings", ())):
        tokens = schedule.tokens_per_block()[block]
        for positions in (matching.merged, 2 * matching.into + 1, matching.kept):
            assert int(positions.min()) >= 1 and int(positions.max()) < tokens - PROTECTED


def test_tokens_travel_with_folders_and_workdirs_and_survive_a_change_of_method(tmp_path):
    reduction = {"method": "none", "protected": PROTECTED}
    model = elip_jax.create_model(NAME, reduction=reduction, deep_visual_tokens=True, text_context_tokens=2)
    variables = checkpoints.random_variables(model, seed=4)
    checkpoints.save_pretrained(tmp_path / "tuned", variables, model.config, reduction=model.reduction)
    loaded, restored, _ = checkpoints.load(str(tmp_path / "tuned"))
    assert loaded.config == model.config and loaded.reduction == model.reduction
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, variables)
    images = images_of(1)
    tome, tome_params, _ = checkpoints.load(str(tmp_path / "tuned"), reduction="tome")  # tokens kept
    assert tome.reduction.protected == PROTECTED
    for key in ("learnable_tokens", "deep_tokens"):
        np.testing.assert_array_equal(tome_params["params"]["visual"][key], variables["params"]["visual"][key])
    assert jax.jit(lambda p, x: tome.apply(p, x, method=tome.encode_image))(tome_params, images).shape == (1, 32)

    workdir = tmp_path / "run"  # a workdir: model_config.json carries the config fields, reduction.json the count
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "model_config.json").write_text(json.dumps(model.config.to_dict()))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((workdir / "checkpoints" / "1" / "state").absolute(), {"params": variables["params"]})
    checkpointer.wait_until_finished()
    checkpoints.write_reduction(str(workdir), model.reduction)
    loaded, restored, _ = checkpoints.load(str(workdir))
    assert loaded.config == model.config and loaded.reduction == model.reduction
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, variables)

    document = json.loads((tmp_path / "tuned" / "config.json").read_text())
    document["config"]["text_context_tokens"] = 5  # the config says 5, the params hold 2: refused, named
    (tmp_path / "tuned" / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="text/context_tokens"):
        checkpoints.load(str(tmp_path / "tuned"))
