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
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), image[None], tokens)
    kept, scores = vis.pruning_decisions(model, variables, image, tokens)
    assert scores is not None and len(kept) == len(scores) == 3
    for k, s in zip(kept, scores):
        np.testing.assert_array_equal(k, np.sort(np.argsort(-s, kind="stable")[:len(k)]))


# ---------------------------------------------------------------------------------------------- the picture

def _cells(panel, grid):
    """[grid*grid] list of the pixel blocks of a panel, row-major."""
    size = panel.shape[0]
    boxes = [vis.cell_box(i, grid, size) for i in range(grid * grid)]
    return [panel[top:bottom + 1, left:right + 1].astype(np.float32) for left, top, right, bottom in boxes]


def _dot_pixels(cell):
    return int(np.all(np.abs(cell - np.array(vis.DOT, np.float32)) < 1, axis=-1).sum())


def test_pruned_patches_are_dimmed_grey_and_kept_patches_untouched():
    display = np.full((64, 64, 3), (230, 140, 40), np.float32)  # orange: a tint would not show on it
    stage = vis.StageMap(kept=np.array([True, False, True, False]), merged_weight=np.array([0, 0.25, 0, 0.75]))
    panel = vis.stage_panel(display, stage, grid=2)
    kept, pruned = _cells(panel, 2)[0], _cells(panel, 2)[1]
    np.testing.assert_array_equal(kept, display[:32, :32])
    background = pruned[2:6, 2:6]  # a corner of the pruned patch, away from its dot and outline
    assert background.mean() < 0.4 * kept.mean(), "a pruned patch must be visibly darker than a kept one"
    assert np.ptp(background, axis=-1).max() <= 1, "a pruned patch is grey: no colour that reads as important"


def test_merge_weights_are_dots_whose_area_is_proportional_to_the_weight():
    display = np.full((160, 160, 3), 128, np.float32)
    stage = vis.StageMap(kept=np.array([True, False, True, False]), merged_weight=np.array([0, 0.25, 0, 0.75]))
    cells = _cells(vis.stage_panel(display, stage, grid=2), 2)
    small, large = _dot_pixels(cells[1]), _dot_pixels(cells[3])
    assert _dot_pixels(cells[0]) == _dot_pixels(cells[2]) == 0  # kept patches carry no dot
    assert small > 0 and large / small == pytest.approx(3.0, rel=0.15)
    no_merge = vis.StageMap(kept=np.array([True, False, True, False]), merged_weight=np.zeros(4))
    assert sum(map(_dot_pixels, _cells(vis.stage_panel(display, no_merge, grid=2), 2))) == 0


def _figure(random_weights, merge=True):
    image = Image.fromarray(skimage.data.chelsea()).resize((64, 64))
    stage = vis.trace_stages([np.array([0, 5, 10, 15])], num_patches=16, merge=merge)[0]
    return vis.draw_figure(image, [stage], [("before block 2", "4 kept", "")], ["elip on tiny: a cat"], grid=4,
                           panel_size=vis.default_panel_size(64, 4), merge=merge, random_weights=random_weights)


def _note_pixels(figure):
    return int(np.all(np.asarray(figure) == np.array(vis.NOTE_BACKGROUND), axis=-1).sum())


def _has_block(figure, block):
    """Whether `block` appears unchanged in the figure's left legend column."""
    array, size = np.asarray(figure), block.shape[0]
    x = vis.MARGIN
    return any(np.array_equal(array[y:y + size, x:x + size], block) for y in range(array.shape[0] - size))


@pytest.mark.parametrize("merge", [True, False])
def test_the_figure_has_a_legend_drawn_as_the_panels_are(merge):
    figure = _figure(random_weights=False, merge=merge)
    size = vis.default_panel_size(64, 4)
    display = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((64, 64)).resize((size, size), Image.BICUBIC),
                         np.float32)  # the input panel, as draw_figure scales it
    entries = vis.legend_entries(display, 4, merge)
    texts = " | ".join(e.text for e in entries)
    assert "kept" in texts and "pruned" in texts and ("merged" in texts) == merge
    for entry in entries:
        assert _has_block(figure, entry.swatch), f"legend swatch for {entry.text!r} not drawn"


def test_the_random_weights_note_is_drawn_only_for_random_weights():
    assert _note_pixels(_figure(random_weights=True)) > 1000
    assert _note_pixels(_figure(random_weights=False)) == 0


def test_small_images_are_drawn_large():
    for image_size, grid in [(64, 8), (96, 12), (224, 14), (224, 7), (336, 24)]:
        panel = vis.default_panel_size(image_size, grid)
        assert panel >= max(224, image_size) and panel % grid == 0 and panel // grid >= 16


# ---------------------------------------------------------------------------------------------- the command

def _write_chelsea(tmp_path):
    image_path = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(image_path)
    return image_path


def test_cli_with_random_weights_draws_large_panels_a_legend_and_the_note(tmp_path):
    image_path, out = _write_chelsea(tmp_path), tmp_path / "stages.png"
    assert vis.main(["--image", str(image_path), "--caption", "a photo of a cat", "--out", str(out),
                     "--model", "tiny-12", "--method", "elip"]) == 0
    with Image.open(out) as written:
        assert written.format == "PNG"
        assert written.width >= 4 * 224  # input + ELIP's 3 stages, 64-px images drawn at least 224 px
        assert "kept" in written.info["legend"] and "merged" in written.info["legend"]
        assert "RANDOM WEIGHTS" in written.info["note"]
        assert _note_pixels(written.convert("RGB")) > 1000


def _converted_folder(tmp_path):
    import jax
    import elip_jax
    from elip_jax.checkpoints import save_pretrained

    model = elip_jax.create_model("tiny")
    variables = model.init(jax.random.PRNGKey(3), np.zeros((1, 64, 64, 3), np.float32), np.zeros((1, 77), np.int32))
    return str(save_pretrained(tmp_path / "converted", variables, model.config)), "converted"


def _training_workdir(request):
    """configs/smoke.py trained with elip (tests/conftest.py, shared; only read here): drawn with evit below."""
    return request.getfixturevalue("smoke_workdir")(), "run@step12"


@pytest.mark.parametrize("make_checkpoint", [_converted_folder, _training_workdir], ids=["converted", "workdir"])
def test_cli_reads_a_converted_folder_or_a_training_workdir_and_draws_no_random_weights_note(
        tmp_path, request, capsys, make_checkpoint):
    checkpoint, name = make_checkpoint(tmp_path if make_checkpoint is _converted_folder else request)
    image_path, out = _write_chelsea(tmp_path), tmp_path / "stages.png"
    capsys.readouterr()
    assert vis.main(["--image", str(image_path), "--caption", "a cat", "--out", str(out),
                     "--checkpoint", checkpoint, "--method", "evit"]) == 0, capsys.readouterr().err
    with Image.open(out) as written:
        assert "note" not in written.info and "kept" in written.info["legend"]
        assert _note_pixels(written.convert("RGB")) == 0
        assert name in written.info["title"]


def _bad_inputs(tmp_path):
    image = _write_chelsea(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(image.read_bytes()[:2000])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    out = str(tmp_path / "out.png")
    base = ["--caption", "a cat"]
    return {
        "missing image": (base + ["--image", str(tmp_path / "missing.png"), "--out", out], "missing.png"),
        "not an image": (base + ["--image", str(text), "--out", out], "notes.txt"),
        "truncated image": (base + ["--image", str(truncated), "--out", out], "truncated.png"),
        "image is a folder": (base + ["--image", str(tmp_path), "--out", out], "folder"),
        "output is a folder": (base + ["--image", str(image), "--out", str(folder)], "folder"),
        "output under a file": (base + ["--image", str(image), "--out", str(text / "x.png")], "not a folder"),
        "output not png": (base + ["--image", str(image), "--out", str(tmp_path / "x.jpg")], ".png"),
        "method prunes nothing": (base + ["--image", str(image), "--out", out, "--method", "none"], "none"),
        "panel size": (base + ["--image", str(image), "--out", out, "--panel-size", "0"], "panel-size"),
        "missing flag": (["--image", str(image), "--out", out], "caption"),
        "unknown model": (base + ["--image", str(image), "--out", out, "--model", "ViT-Q-99"], "ViT-Q-99"),
        "missing checkpoint": (base + ["--image", str(image), "--out", out, "--checkpoint",
                                       str(tmp_path / "nowhere")], "nowhere"),
        "checkpoint of neither kind": (base + ["--image", str(image), "--out", out, "--checkpoint",
                                               str(folder)], "neither"),
        "checkpoint is a file": (base + ["--image", str(image), "--out", out, "--checkpoint", str(text)],
                                 "is a file"),
    }


CASES = ["missing image", "not an image", "truncated image", "image is a folder", "output is a folder",
         "output under a file", "output not png", "method prunes nothing", "panel size", "missing flag",
         "unknown model", "missing checkpoint", "checkpoint of neither kind", "checkpoint is a file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_exit_2_before_any_compilation(tmp_path, capsys, monkeypatch, case):
    def compiled(*args, **kwargs):
        raise AssertionError("the model ran before the input was checked")

    monkeypatch.setattr(vis, "pruning_decisions", compiled)
    if case not in ("unknown model", "missing checkpoint", "checkpoint of neither kind", "checkpoint is a file"):
        monkeypatch.setattr(vis, "load_model", compiled)
    argv, named = _bad_inputs(tmp_path)[case]
    assert vis.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert named in err[0]
    assert not (tmp_path / "out.png").exists()


def test_the_module_command_exits_2_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "elip_jax.visualize", "--image", str(tmp_path / "missing.png"),
                             "--caption", "a cat", "--out", str(tmp_path / "out.png")],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, ELIP_JAX_TRACEBACK=""))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")


# ---------------------------------------------------------------------------------------------- tome

@pytest.mark.slow
def test_tome_merges_are_traced_back_to_the_patches_every_token_holds():
    import jax
    import elip_jax

    model = elip_jax.create_model("tiny-12", reduction="tome")
    image = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (64, 64, 3)))
    tokens = np.zeros((1, 77), np.int32)
    tokens[0, :3] = [49406, 320, 49407]
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), image[None], tokens)
    matchings, scores = vis.pruning_decisions(model, variables, image, tokens)
    assert scores is None and len(matchings) == len(model.reduction.merging_blocks()) == 12
    maps = vis.trace_merges(matchings, model.reduction)
    assert [m.block for m in maps] == vis.panel_blocks(model.reduction.merging_blocks()) == [2, 5, 8, 11]
    counts = model.reduction.tokens_per_block()
    for m in maps:
        assert m.tokens == counts[m.block] - model.reduction.r[m.block]
        holders, held = np.unique(m.token_of_patch, return_counts=True)
        assert len(holders) == m.tokens - 1 and 0 not in holders  # every token but CLS holds patches
        np.testing.assert_array_equal(m.group_size, held[np.searchsorted(holders, m.token_of_patch)])
    assert maps[-1].group_size.max() > 1


def test_merge_panel_paints_a_merged_token_in_its_mean_colour_and_leaves_lone_patches():
    display = np.zeros((64, 64, 3), np.float32)
    display[:32, :32] = (200, 0, 0)
    display[:32, 32:] = (0, 0, 200)
    merges = vis.MergeMap(0, token_of_patch=np.array([1, 1, 2, 3]), group_size=np.array([2, 2, 1, 1]), tokens=4)
    cells = _cells(vis.merge_panel(display, merges, 2), 2)
    np.testing.assert_allclose(cells[0][8:-8, 8:-8].reshape(-1, 3).mean(0), (100, 0, 100), atol=1)
    np.testing.assert_allclose(cells[1][8:-8, 8:-8].reshape(-1, 3).mean(0), (100, 0, 100), atol=1)
    np.testing.assert_array_equal(cells[2], display[32:, :32])


@pytest.mark.slow
def test_cli_draws_tome_merges(tmp_path):
    image_path, out = _write_chelsea(tmp_path), tmp_path / "tome.png"
    assert vis.main(["--image", str(image_path), "--caption", "a cat", "--out", str(out), "--model", "tiny-12",
                     "--method", "tome"]) == 0
    with Image.open(out) as written:
        assert written.width >= 5 * 256  # the input and 4 panels
        assert "merged" in written.info["legend"] and "alone" in written.info["legend"]
        assert "tome" in written.info["title"]
