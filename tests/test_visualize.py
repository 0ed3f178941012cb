"""The pruning visualisation: patch-position mapping across stages, preprocessing, and the CLI."""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from elip_jax import visualize as vis
from elip_jax.data import CLIP_MEAN, CLIP_STD


def test_trace_stages_maps_kept_and_merged_tokens_back_to_patches():
    # 6 patches. Stage 0 keeps patches 0, 2, 5 and merges 1, 3, 4 with weights 0.1, 0.3, 0.6 (= m0).
    # Stage 1's candidates are [p0, p2, p5, m0]; it keeps p2 and m0 and merges p0, p5 equally (= m1).
    stage0_scores = np.array([9.0, 0.1, 9.0, 0.3, 0.6, 9.0])
    stage1_scores = np.array([0.5, 9.0, 0.5, 9.0])
    maps = vis.trace_stages([np.array([0, 2, 5]), np.array([1, 3])], num_patches=6, merge=True,
                            scores=[stage0_scores, stage1_scores])

    np.testing.assert_array_equal(maps[0].kept, [True, False, True, False, False, True])
    np.testing.assert_allclose(maps[0].merged_weight, [0, 0.1, 0, 0.3, 0.6, 0], atol=1e-5)
    assert maps[0].merged_tokens == 1

    np.testing.assert_array_equal(maps[1].kept, [False, False, True, False, False, False])
    # m0 survives as a token and m1 holds p0 and p5: both count as merged.
    np.testing.assert_allclose(maps[1].merged_weight, [0.5, 0.1, 0, 0.3, 0.6, 0.5], atol=1e-5)
    assert maps[1].merged_tokens == 2


def test_trace_stages_folds_a_pruned_merged_token_into_the_next_one():
    # Stage 1 prunes m0 (candidate 2) together with p3: m1 = 0.5 * p3 + 0.5 * m0 = 0.5 p3 + 0.25 p0 + 0.25 p2.
    maps = vis.trace_stages([np.array([1, 3]), np.array([0])], num_patches=4, merge=True,
                            scores=[np.array([1.0, 0, 1.0, 0]), np.array([0.0, 1.0, 1.0])])
    np.testing.assert_array_equal(maps[1].kept, [False, True, False, False])
    np.testing.assert_allclose(maps[1].merged_weight, [0.25, 0, 0.25, 0.5], atol=1e-5)
    assert maps[1].merged_tokens == 1


def test_trace_stages_without_scores_or_merging():
    uniform = vis.trace_stages([np.array([0, 1])], num_patches=4, merge=True)
    np.testing.assert_allclose(uniform[0].merged_weight, [0, 0, 0.5, 0.5])
    dropped = vis.trace_stages([np.array([3, 1])], num_patches=4, merge=False)
    np.testing.assert_array_equal(dropped[0].kept, [False, True, False, True])
    assert dropped[0].merged_weight.sum() == 0 and dropped[0].merged_tokens == 0


def test_trace_stages_rejects_indices_outside_the_candidates():
    with pytest.raises(ValueError, match="stage 1"):
        vis.trace_stages([np.array([0, 1]), np.array([3])], num_patches=4, merge=True)  # 3 candidates


def test_preprocessing_crops_the_centre_and_normalises():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    crop, pixels = vis.clip_preprocess(image, 16)
    assert crop.size == (16, 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[0, 0], (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), rtol=1e-5)


def test_patch_grid_mask_is_row_major():
    mask = vis.patch_grid_mask(np.array([1, 0, 0, 0]), grid=2, panel_size=4)
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_captured_scores_are_the_ones_the_model_selected_by():
    import jax
    import elip_jax

    model = elip_jax.create_model("tiny-12", reduction="elip")
    image = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (64, 64, 3)))
    tokens = np.zeros((1, 77), np.int32)
    tokens[0, :3] = [49406, 320, 49407]
    variables = model.init(jax.random.PRNGKey(0), image[None], tokens)
    kept, scores = vis.pruning_decisions(model, variables, image, tokens)
    assert scores is not None and len(kept) == len(scores) == 3
    for k, s in zip(kept, scores):
        np.testing.assert_array_equal(k, np.sort(np.argsort(-s, kind="stable")[:len(k)]))


def test_cli_writes_a_png_of_the_expected_size(tmp_path):
    image_path, out = tmp_path / "chelsea.png", tmp_path / "stages.png"
    Image.fromarray(skimage.data.chelsea()).save(image_path)

    vis.main(["--image", str(image_path), "--caption", "a photo of a cat", "--out", str(out),
              "--model", "tiny-12", "--method", "elip"])

    with Image.open(out) as written:
        assert written.format == "PNG"
        assert written.size == vis.figure_size(1 + 3, 224)  # input + ELIP's 3 stages, 224-px panels


def test_cli_names_a_checkpoint_it_cannot_load(tmp_path):
    image_path = tmp_path / "grey.png"
    Image.new("RGB", (80, 64), (128, 128, 128)).save(image_path)
    with pytest.raises(SystemExit, match="cannot load checkpoint|load_pretrained"):
        vis.main(["--image", str(image_path), "--caption", "a cat", "--out", str(tmp_path / "x.png"),
                  "--checkpoint", str(tmp_path / "missing")])
