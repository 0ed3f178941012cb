"""Shared helpers for the conversion tests: a small architecture whose heads follow OpenAI's width // 64
rule (so only the activation has to be stated: a plain state dict of it needs --activation or --model),
random parameters, and tree comparison."""
import jax
import numpy as np

from elip_jax.checkpoints.params import expected_param_shapes
from elip_jax.models.config import CLIPConfig

SMALL = CLIPConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=128, vision_layers=2,
                   vision_heads=2, text_width=128, text_layers=2, text_heads=2, context_length=16,
                   vocab_size=500)


def random_params(config: CLIPConfig = SMALL, seed: int = 0) -> dict:
    """A param tree (no 'params' wrapper) with every leaf random: nothing can match by accident."""
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for path, shape in expected_param_shapes(config).items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = rng.standard_normal(shape).astype(np.float32)
    return tree


def assert_trees_equal(a: dict, b: dict):
    """Bitwise equal leaves, same structure."""
    flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert flat_a.keys() == flat_b.keys(), set(flat_a) ^ set(flat_b)
    for key in flat_a:
        x, y = np.asarray(flat_a[key]), np.asarray(flat_b[key])
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape, (key, x.dtype, y.dtype, x.shape, y.shape)
        assert np.array_equal(x, y), f"{jax.tree_util.keystr(key)} differs"
