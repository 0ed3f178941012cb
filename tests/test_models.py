"""The Flax CLIP towers: exact parameter counts, shapes, compilation, numerics and bad-input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elip_jax


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_params(name, **overrides):
    model = elip_jax.create_model(name, **overrides)
    c = model.config
    images = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, c.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]


@pytest.mark.parametrize("name,total,visual", [
    ("ViT-B-16", 149_620_737, 86_192_640),  # open_clip / OpenAI ViT-B/16
    ("ViT-B-32", 151_277_313, 87_849_216),
    ("ViT-L-14", 427_616_513, 303_966_208),
    ("ViT-L-14-336", 427_944_193, 304_293_888),
    ("ViT-B-16-gelu", 149_620_737, 86_192_640),
])
def test_parameter_counts_equal_the_pytorch_references(name, total, visual):
    params = abstract_params(name)
    assert count(params) == total
    assert count(params["visual"]) == visual


def tiny(**overrides):
    model = elip_jax.create_model("tiny", **overrides)
    images = jax.random.normal(jax.random.key(1), (3, 64, 64, 3))
    tokens = jnp.asarray(elip_jax.tokenize(["a red circle", "two blue squares on the left", ""]))
    variables = model.init(jax.random.key(0), images, tokens)
    return model, variables, images, tokens


def test_shapes_normalisation_and_logit_scale():
    model, variables, images, tokens = tiny()
    image_features, text_features, logit_scale = model.apply(variables, images, tokens)
    assert image_features.shape == (3, 32) and text_features.shape == (3, 32)
    np.testing.assert_allclose(jnp.linalg.norm(image_features, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(text_features, axis=-1), 1.0, rtol=1e-5)
    assert float(logit_scale) == pytest.approx(1 / 0.07, rel=1e-5)
    raw = model.apply(variables, images, method=model.encode_image)
    np.testing.assert_allclose(raw / jnp.linalg.norm(raw, axis=-1, keepdims=True), image_features, atol=1e-6)


def test_text_is_pooled_at_the_eot_token_and_is_causal():
    model, variables, _, tokens = tiny()
    encode = lambda t: model.apply(variables, t, method=model.encode_text)
    base = encode(tokens)
    # tokens after EOT (padding) cannot change the features: causal attention, pooling at EOT
    eot = int(jnp.argmax(tokens[0]))
    changed = tokens.at[0, eot + 1:].set(5)
    np.testing.assert_allclose(encode(changed)[0], base[0], atol=1e-6)
    # a token before EOT does
    assert not np.allclose(encode(tokens.at[0, 1].set(1000))[0], base[0])


def test_one_trace_per_shape_and_deterministic_under_jit():
    model, variables, images, tokens = tiny()
    traces = []

    @jax.jit
    def forward(variables, images, tokens):
        traces.append(1)
        return model.apply(variables, images, tokens)

    first = forward(variables, images, tokens)
    second = forward(variables, images * 0.5, tokens)
    again = forward(variables, images, tokens)
    assert len(traces) == 1
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], second[0])


def test_bf16_compute_is_finite_and_close_to_fp32_with_fp32_parameters():
    model, variables, images, tokens = tiny()
    bf16 = elip_jax.create_model("tiny", dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(bf16.init(jax.random.key(0), images, tokens)))
    low = bf16.apply(variables, images, tokens)
    high = model.apply(variables, images, tokens)
    for a, b in zip(low[:2], high[:2]):
        assert a.dtype == jnp.float32 and np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(a, b, atol=0.05)
    grads = jax.grad(lambda p: bf16.apply({"params": p}, images, tokens)[0].sum())(variables["params"])
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("call,message", [
    (lambda m, v: m.apply(v, jnp.zeros((2, 32, 32, 3)), method=m.encode_image),
     r"images must be an array of shape \[batch, 64, 64, 3\] .* got \(2, 32, 32, 3\)"),
    (lambda m, v: m.apply(v, jnp.zeros((2, 3, 64, 64)), method=m.encode_image), r"NHWC"),
    (lambda m, v: m.apply(v, jnp.zeros((2, 64, 64, 3), jnp.uint8), method=m.encode_image),
     r"images must be floating point"),
    (lambda m, v: m.apply(v, jnp.zeros((2, 64, 64, 3)), guide=jnp.zeros((2, 7)), method=m.encode_image),
     r"guide must be text features of shape \[2, 32\]"),
    (lambda m, v: m.apply(v, jnp.full((1, 77), 49408), method=m.encode_text), r"token ids must be in \[0, 49408\)"),
    (lambda m, v: m.apply(v, jnp.full((1, 77), -1), method=m.encode_text), r"token ids must be in"),
    (lambda m, v: m.apply(v, jnp.zeros((1, 78), jnp.int32), method=m.encode_text), r"1 to 77 positions"),
    (lambda m, v: m.apply(v, jnp.zeros((1, 77)), method=m.encode_text), r"integer dtype"),
    (lambda m, v: m.apply(v, jnp.zeros((77,), jnp.int32), method=m.encode_text), r"shape \[batch, <= 77\]"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    model, variables, _, _ = tiny()
    with pytest.raises(ValueError, match=message):
        call(model, variables)


def test_unknown_names_and_options_are_named():
    with pytest.raises(ValueError, match="unknown model name 'ViT-X-1'; known models: .*ViT-B-16"):
        elip_jax.create_model("ViT-X-1")
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['heads'\]"):
        elip_jax.create_model("tiny", heads=3)
    with pytest.raises(ValueError, match="image_size .* must be a multiple of patch_size"):
        elip_jax.create_model("ViT-B-16", image_size=250)
    with pytest.raises(ValueError, match="dtype must be one of"):
        elip_jax.create_model("tiny", dtype="int8")
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str"):
        elip_jax.tokenize(["fine", 3])


def test_resolution_override_changes_the_positional_embedding_only():
    params = abstract_params("ViT-B-16", image_size=256)
    assert params["visual"]["positional_embedding"].shape == (257, 768)
    assert count(params) == 149_620_737 + (257 - 197) * 768
