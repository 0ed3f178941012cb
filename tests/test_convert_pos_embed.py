"""The numpy positional-embedding resampler equals open_clip's own `resize_pos_embed` (torch bicubic with
antialias) for up- and down-sampling, CLS row kept."""
import os
import sys
import types

import numpy as np
import pytest

from elip_jax.convert import resize_positional_embedding

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(__file__))
from torch_stubs import install_torchvision_stub  # noqa: E402

install_torchvision_stub()
open_clip_model = pytest.importorskip("open_clip.model")


@pytest.mark.parametrize("old,new", [(7, 8), (14, 16), (16, 14), (14, 24), (7, 3), (7, 7)])
def test_matches_open_clip_resize_pos_embed(old, new):
    pos = np.random.default_rng(old * 100 + new).standard_normal((1 + old * old, 48)).astype(np.float32)
    state_dict = {"visual.positional_embedding": torch.from_numpy(pos.copy())}
    model = types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=(new, new)))
    open_clip_model.resize_pos_embed(state_dict, model)  # in place, as open_clip loads checkpoints
    reference = state_dict["visual.positional_embedding"].numpy()
    ours = resize_positional_embedding(pos, new)
    assert ours.shape == reference.shape == (1 + new * new, 48) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours[0], pos[0])
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)  # torch computes in fp32, we in fp64


def test_antialias_matters_and_jax_image_resize_agrees():
    """open_clip resizes with antialias=True, whose bicubic (a = -0.5, edge taps dropped) is far from
    torch's plain bicubic (a = -0.75, edges clamped); jax.image.resize's antialiased bicubic is the
    a = -0.5 kernel too and agrees with both open_clip and this module (measured, not assumed)."""
    import jax
    pos = np.random.default_rng(0).standard_normal((1 + 49, 8)).astype(np.float32)
    ours = resize_positional_embedding(pos, 8)[1:]
    grid = torch.from_numpy(pos[1:]).reshape(1, 7, 7, 8).permute(0, 3, 1, 2)
    plain = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False,
                                            antialias=False).permute(0, 2, 3, 1).reshape(64, 8).numpy()
    assert np.abs(plain - ours).max() > 0.1
    jax_resized = np.asarray(jax.image.resize(pos[1:].reshape(7, 7, 8), (8, 8, 8), "bicubic")).reshape(64, 8)
    np.testing.assert_allclose(jax_resized, ours, rtol=0, atol=1e-5)
