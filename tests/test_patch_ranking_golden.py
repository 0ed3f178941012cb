"""Golden rankings (docs/patch_ranking.md): the JAX search against an independent NumPy greedy search written from
the method's description (gathering the remaining patches, float64, one image and one candidate at a time), key
masking against gathering, the on-disk format, the command's resume and its one-line errors."""
import functools
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import elip_jax
from elip_jax import checkpoints
from elip_jax.patch_ranking import golden as golden_lib, golden_cli, rankings as rankings_lib
from elip_jax.patch_ranking.cli import main as patch_ranking_main, run as patch_ranking_run
from elip_jax.patch_ranking.golden import GATHERING, MASKING, GoldenSearch, golden_ranking, make_settings
from tests.conftest import free_port
from tests.numpy_reference import block, embed, layer_norm, to_numpy_tree

NAME, PATCH, HEADS, DEPTH, P = "tiny", 8, 4, 4, 64


@functools.lru_cache(maxsize=None)
def model_and_variables(protected=0):
    model = elip_jax.create_model(NAME, reduction={"method": "none", "protected": protected} if protected else None)
    images = np.zeros((1, 64, 64, 3), np.float32)
    return model, model.init(jax.random.key(0), images, np.zeros((1, 77), np.int32))


def images(batch=2, seed=1):
    return np.asarray(jax.random.normal(jax.random.key(seed), (batch, 64, 64, 3)), np.float32)


# ------------------------------------------------------------------- the independent NumPy greedy search

def numpy_features(image, vp, prune_layer, kept_patches):
    """Image features [E] of one image with only `kept_patches` (sorted patch indices) from block prune_layer."""
    x = embed(image.astype(np.float64), vp, PATCH)
    for i in range(prune_layer):
        x, _ = block(x, vp[f"resblocks_{i}"], HEADS)
    x = np.concatenate([x[:1], x[1:][kept_patches]], 0)
    for i in range(prune_layer, DEPTH):
        x, _ = block(x, vp[f"resblocks_{i}"], HEADS)
    return layer_norm(x[0], vp["ln_post"]["LayerNorm_0"]) @ vp["proj"]


def numpy_score(features, reference, score, label=None, class_embeddings=None, logit_scale=None):
    f = features / np.linalg.norm(features)
    if score == "similarity":
        return float(f @ reference)
    logits = logit_scale * class_embeddings @ f
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return float(p.max() if score == "max" else p[label])


def numpy_golden(image, vp, *, prune_layer, per_step, target, groups, score="similarity", label=None,
                 class_embeddings=None, logit_scale=None):
    """Greedy removal as docs/patch_ranking.md describes it, written out: every remaining candidate tried, the
    per_step best go, repeat."""
    full = numpy_features(image, vp, prune_layer, list(range(P)))
    reference = full / np.linalg.norm(full)
    removed, order, last_scores = set(), [], {}
    to_remove = -(-target // len(groups[0]))
    while len(order) < to_remove:
        scores = {}
        for c, members in enumerate(groups):
            if c in removed:
                continue
            gone = set(removed_patches(removed, groups)) | set(members)
            kept = [p for p in range(P) if p not in gone]
            scores[c] = numpy_score(numpy_features(image, vp, prune_layer, kept), reference, score, label,
                                    class_embeddings, logit_scale)
        ranked = sorted(scores, key=lambda c: (-scores[c], c))
        chosen = ranked[:min(per_step, to_remove - len(order))]
        order += chosen
        removed |= set(chosen)
        last_scores = {c: s for c, s in scores.items() if c not in removed}
    rest = sorted(last_scores, key=lambda c: (-last_scores[c], c))
    return [p for c in order + rest for p in groups[c]], last_scores


def assert_same_ranking(got, expected, removed, last_scores, groups, tolerance=1e-6):
    """The removed patches in the same order; the never-removed ones in an order the NumPy scores of the last
    step agree with up to float32 rounding (near-ties of unimportant patches may swap)."""
    np.testing.assert_array_equal(got[:removed], expected[:removed])
    assert sorted(got) == list(range(P))
    size = len(groups[0])
    patch_score = {p: last_scores[c] for c in last_scores for p in groups[c]}
    tail = [patch_score[p] for p in got[removed::size]]
    assert all(a >= b - tolerance for a, b in zip(tail, tail[1:])), tail


def removed_patches(removed, groups):
    return [p for c in removed for p in groups[c]]


def vision_params(variables):
    return to_numpy_tree(jax.device_get(variables["params"]["visual"]))


@functools.lru_cache(maxsize=None)
def numpy_rankings_of_two_images():
    _, variables = model_and_variables()
    vp, batch = vision_params(variables), images(2)
    return [numpy_golden(batch[b], vp, prune_layer=1, per_step=3, target=7, groups=[[p] for p in range(P)])
            for b in range(2)]


@pytest.mark.parametrize("mode", [MASKING, GATHERING])
def test_golden_search_equals_an_independent_numpy_greedy_search(mode):
    model, variables = model_and_variables()
    got = golden_ranking(model, variables, images(2), prune_layer=1, per_step=3, target=7, mode=mode)
    assert got.shape == (2, P) and got.dtype == np.int32
    for b, (expected, last_scores) in enumerate(numpy_rankings_of_two_images()):
        assert_same_ranking(got[b], expected, 7, last_scores, [[p] for p in range(P)])


def test_golden_search_with_2x2_candidates_and_the_label_score_equals_numpy():
    model, variables = model_and_variables()
    batch = images(1, seed=4)
    classes = np.asarray(jax.random.normal(jax.random.key(7), (5, 32)), np.float32)
    classes = classes / np.linalg.norm(classes, axis=-1, keepdims=True)
    labels = np.array([3], np.int32)
    got = golden_ranking(model, variables, batch, prune_layer=2, per_step=2, target=18, candidate=2, score="label",
                         labels=labels, class_embeddings=classes)
    settings = make_settings(model.config, prune_layer=2, per_step=2, target=18, candidate=2, score="label")
    groups = settings.groups().tolist()
    assert groups[0] == [0, 1, 8, 9] and groups[1] == [2, 3, 10, 11] and len(groups) == 16
    assert settings.removal_counts() == [2, 2, 1]  # 18 patches: 5 blocks of 4, 2 per step
    logit_scale = min(float(np.exp(variables["params"]["logit_scale"])), 100.0)
    expected, last_scores = numpy_golden(batch[0], vision_params(variables), prune_layer=2, per_step=2, target=18,
                                         groups=groups, score="label", label=3,
                                         class_embeddings=classes.astype(np.float64), logit_scale=logit_scale)
    assert_same_ranking(got[0], expected, 20, last_scores, groups)


def test_masking_gives_the_scores_of_gathering_at_one_program_and_gathering_compiles_one_per_step():
    model, variables = model_and_variables(protected=2)  # a protected tail: kept, never a candidate
    settings = make_settings(model.config, prune_layer=1, per_step=5, target=12)
    batch = images(3, seed=2)
    searches = {mode: GoldenSearch(model, variables, settings, mode=mode, candidate_batch=16)
                for mode in (MASKING, GATHERING)}
    ranked = {mode: search(batch) for mode, search in searches.items()}
    np.testing.assert_array_equal(ranked[MASKING], ranked[GATHERING])
    assert len(searches[MASKING]._steps) == 1 and len(searches[GATHERING]._steps) == len(settings.removal_counts())
    # the scores themselves, at a step with patches already removed
    search, batch = searches[MASKING], images(8, seed=3)  # one image per device
    x0, reference = search._prefix(search.variables, search.put(batch))
    removed = np.zeros((8, P), bool)
    removed[:, [3, 17, 40, 41, 63]] = True
    labels = search.put(np.zeros(8, np.int32))
    scores = {mode: np.asarray(s._step(5)(s.variables, x0, s.put(removed), reference, labels, None)[0])
              for mode, s in searches.items()}
    assert np.all(np.isneginf(scores[MASKING][removed])) and np.all(np.isneginf(scores[GATHERING][removed]))
    np.testing.assert_allclose(scores[MASKING][~removed], scores[GATHERING][~removed], rtol=0, atol=2e-6)


def test_settings_defaults_scale_with_depth_and_bad_values_name_the_range():
    b16 = elip_jax.get_config("ViT-B-16")
    s = make_settings(b16)
    assert (s.prune_layer, s.per_step, s.target, s.num_candidates) == (3, 10, 78, 196)
    assert s.removal_counts() == [10] * 7 + [8] and s.candidate_forwards() == 196 * 8
    assert make_settings(elip_jax.get_config("tiny")).prune_layer == 1
    tiny12 = make_settings(elip_jax.get_config("tiny-12"))  # 64 patches: the published 10 of 196 per step, scaled
    assert (tiny12.target, tiny12.per_step, tiny12.removal_counts()) == (25, 3, [3] * 8 + [1])
    assert make_settings(b16, candidate=2).per_step == 2  # 49 candidates of 2x2 patches
    assert make_settings(elip_jax.get_config("ViT-B-32")).per_step == 2  # 49 patches
    for kwargs, message in (({"target": 64}, r"target .* \[1, 63\]"), ({"prune_layer": 4}, r"\[0, 3\]"),
                            ({"per_step": 0}, "per step"), ({"score": "entropy"}, "score"),
                            ({"candidate": 3}, "candidate")):
        with pytest.raises(ValueError, match=message):
            make_settings(elip_jax.get_config("tiny"), **kwargs)


# ------------------------------------------------------------------------------- the command, and resume

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    model, variables = model_and_variables()
    folder = tmp_path_factory.mktemp("golden") / "tiny"
    checkpoints.save_pretrained(folder, variables, model.config)
    return str(folder)


def golden_args(pretrained, output, *extra):
    return ["golden", "--pretrained", pretrained, "--dataset", "elip_shapes/small", "--split", "test[:10]",
            "--output", str(output), "--batch-size", "4", "--prune-layer", "1", "--per-step", "8", "--target", "16",
            *extra]


def test_golden_command_writes_chunks_keyed_by_example_and_resumes_after_an_interruption(pretrained, tmp_path,
                                                                                       monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert patch_ranking_run(golden_args(pretrained, whole)) == 0
    reader = rankings_lib.read_rankings(str(whole))
    assert reader.complete and reader.available.all() and reader.rankings.shape == (10, P)
    assert rankings_lib.written_chunks(str(whole)) == [0, 4, 8]
    assert reader.meta["settings"]["target"] == 16 and reader.meta["split"] == "test[:10]"
    assert reader.removed_mask().sum(axis=1).tolist() == [16] * 10
    out = capsys.readouterr()
    assert "images/s" in out.err + out.out and "candidate forwards/s" in out.err + out.out

    # the same search, interrupted after its first chunk (as a kill would: only whole chunks are on disk)
    partial = tmp_path / "partial"
    real_write, calls = rankings_lib.write_chunk, []

    def write_then_stop(folder, start, ranked):
        real_write(folder, start, ranked)
        calls.append(start)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(rankings_lib, "write_chunk", write_then_stop)
    assert patch_ranking_run(golden_args(pretrained, partial)) == 130
    assert rankings_lib.written_chunks(str(partial)) == [0] and not rankings_lib.read_rankings(str(partial)).complete
    computed = []
    monkeypatch.setattr(golden_cli, "read_images",
                        lambda source, prepare, start, count, real=golden_cli.read_images:
                        computed.append(start) or real(source, prepare, start, count))
    assert patch_ranking_run(golden_args(pretrained, partial)) == 0
    assert computed == [4, 8]  # only what was missing
    np.testing.assert_array_equal(rankings_lib.read_rankings(str(partial)).rankings, reader.rankings)
    # the rankings are the API's on the same images
    from elip_jax.data import normalize_images, open_source
    from elip_jax.data.eval_pipeline import PrepareEvalExample
    source = open_source("elip_shapes/small", "test[:10]")
    raw, _, _ = golden_cli.read_images(source, PrepareEvalExample("image", "label", 64), 0, 4)
    model, variables = model_and_variables()
    np.testing.assert_array_equal(
        golden_ranking(model, variables, np.asarray(normalize_images(raw)), prune_layer=1, per_step=8, target=16),
        reader.rankings[:4])


def test_two_processes_continue_a_partial_folder_with_the_rankings_of_one_process(pretrained, tmp_path):
    """2 processes x 1 CPU device over gloo: the images are sharded over both, process 0 alone saw the folder
    (the chunks to compute reach the other by broadcast), and the rankings are those of one process."""
    whole = tmp_path / "whole"
    assert patch_ranking_run(golden_args(pretrained, whole)) == 0
    partial = tmp_path / "partial"
    shutil.copytree(whole, partial)
    for start in (4, 8):
        os.remove(rankings_lib.chunk_path(str(partial), start))
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen([sys.executable, "-m", "elip_jax.patch_ranking", *golden_args(pretrained, partial),
                               "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "2 chunk(s) to compute (4 images done)" in out and "2 device(s)" in out, out[-3000:]
    np.testing.assert_array_equal(rankings_lib.read_rankings(str(partial)).rankings,
                                  rankings_lib.read_rankings(str(whole)).rankings)


def test_golden_command_refuses_to_continue_another_search_and_bad_flags_are_one_line(pretrained, tmp_path, capsys):
    output = tmp_path / "run"
    rankings_lib.start_folder(str(output), {"dataset": "elip_shapes/small", "split": "test[:10]", "num_examples": 10,
                                            "num_patches": P, "chunk_size": 4, "settings": {}, "pretrained": "x",
                                            "image_size": 64})
    cases = [
        (golden_args(pretrained, output), "holds golden rankings of another search"),
        (golden_args(pretrained, tmp_path / "a", "--target", "64"), "target"),
        (golden_args(pretrained, tmp_path / "b", "--score", "entropy"), "invalid choice"),
        (golden_args(str(tmp_path / "nowhere"), tmp_path / "c"), "does not exist"),
        (golden_args(pretrained, tmp_path / "d")[:-2] + ["--split", "validation"], "no split 'validation'"),
        (["goldn"], "unknown subcommand 'goldn'"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert patch_ranking_run(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
    assert not os.path.exists(tmp_path / "a")  # refused before anything was written


def test_the_command_lists_its_subcommands_and_wants_one(capsys):
    assert patch_ranking_main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("golden", "train-predictor", "tune-tokens", "benchmark-golden"))
    assert patch_ranking_main([]) == 2


def test_golden_command_with_a_zero_shot_score_builds_the_classifier_first(pretrained, tmp_path):
    output = tmp_path / "max"
    argv = golden_args(pretrained, output, "--score", "max")
    argv[argv.index("test[:10]")] = "test[:4]"
    assert patch_ranking_run(argv) == 0
    reader = rankings_lib.read_rankings(str(output))
    assert reader.complete and reader.meta["settings"]["score"] == "max"
    assert sorted(reader.rankings[0]) == list(range(P))
