"""The study command (elip_jax.study): aggregation against NumPy, the batch search on fake memory functions, run
selection, and a two-step smoke study that is killed-and-resumed (one run's summary deleted: only that run is
done again) with its JSON, markdown and pictures checked."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from elip_jax.study import aggregate
from elip_jax.study.budget import largest_batch
from elip_jax.study.runs import (baseline_method, parse_methods, parse_regimes, parse_selection, run_config,
                                 run_keys, study_evals)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path):
    spec = importlib.util.spec_from_file_location("study_test_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ---------------------------------------------------------------- aggregation


def test_mean_std_is_numpys_mean_and_sample_std():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        values = rng.normal(0.3, 0.05, n)
        stat = aggregate.mean_std(list(values))
        assert stat["n"] == n
        np.testing.assert_allclose(stat["mean"], np.mean(values), rtol=1e-12)
        np.testing.assert_allclose(stat["std"], np.std(values, ddof=1), rtol=1e-12)
    assert aggregate.mean_std([0.4]) == {"mean": 0.4, "std": None, "n": 1}  # one seed: no spread, not 0
    assert aggregate.mean_std([None, 0.2, None, 0.4])["n"] == 2  # unfinished evaluations are left out
    assert aggregate.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_group_and_ranking_against_numpy():
    acc = {"none": [0.30, 0.34, 0.32], "elip": [0.31, 0.29, 0.30], "evit": [0.20, 0.22, 0.21]}
    runs = [{"regime": "equal_steps", "method": m, "seed": s, "same_as": None,
             "result": {"acc1": a, "i2t_r1": a / 2, "t2i_r1": None, "final_loss": 3.0 - a, "training_flops": 1e12,
                        "batch_size": 64, "steps": 300}}
            for m, values in acc.items() for s, a in enumerate(values)]
    runs.append({"regime": "equal_steps", "method": "random", "seed": 0, "same_as": None, "result": None})
    groups = aggregate.group(runs)
    assert set(groups["equal_steps"]) == set(acc)  # a run without results is no member
    for method, values in acc.items():
        g = groups["equal_steps"][method]
        np.testing.assert_allclose(g["acc1"]["mean"], np.mean(values))
        np.testing.assert_allclose(g["acc1"]["std"], np.std(values, ddof=1))
        np.testing.assert_allclose(g["i2t_r1"]["mean"], np.mean(values) / 2)
        assert g["t2i_r1"]["mean"] is None and g["seeds"] == [0, 1, 2]
    rows = aggregate.ranking(groups["equal_steps"])
    assert [r["method"] for r in rows] == ["none", "elip", "evit"]
    gap = np.mean(acc["none"]) - np.mean(acc["elip"])
    se = math.sqrt(np.var(acc["none"], ddof=1) / 3 + np.var(acc["elip"], ddof=1) / 3)
    np.testing.assert_allclose([rows[0]["gap_to_next"], rows[0]["gap_standard_error"]], [gap, se])
    assert rows[0]["separated"] == (gap > 2 * se) and rows[1]["separated"]  # elip vs evit: 9 points apart
    targets = aggregate.targets(groups, None, "none")
    np.testing.assert_allclose(targets["elip"]["equal_steps_gap_points"], 100 * -gap)
    assert targets["elip"]["equal_steps_within_1_point"] == (100 * gap <= 1)
    assert not targets["evit"]["equal_steps_within_1_point"]


# ---------------------------------------------------------------- batch search


def affine_memory(batch):
    return 100.0 + 3.0 * batch


def curved_memory(batch):  # superlinear: attention and the contrastive matrix grow faster than the batch
    return 50.0 + batch + 0.02 * batch ** 2


def staircase_memory(batch):  # flat stretches (allocator granularity): the secant guesses are useless here
    return 64.0 * math.ceil(batch / 24)


@pytest.mark.parametrize("memory", [affine_memory, curved_memory, staircase_memory])
def test_largest_batch_fits_and_the_next_does_not(memory):
    multiple, limit = 8, 1024
    previous = 0
    for budget in np.linspace(memory(8), memory(1000), 23):
        calls = []
        batch, probes = largest_batch(lambda b: calls.append(b) or memory(b), budget, start=64, multiple=multiple,
                                      limit=limit)
        brute = max(b for b in range(multiple, limit + 1, multiple) if memory(b) <= budget)
        assert batch == brute, (budget, batch, brute)
        assert memory(batch) <= budget and (batch == limit or memory(batch + multiple) > budget)
        assert batch % multiple == 0 and batch >= previous  # monotone in the budget
        assert len(calls) == len(set(calls)) <= 2 * math.ceil(math.log2(limit / multiple)) + 2
        assert set(probes) == set(calls)
        previous = batch


def test_largest_batch_edges():
    assert largest_batch(affine_memory, affine_memory(7), start=64, multiple=8, limit=512)[0] == 0  # none fits
    assert largest_batch(affine_memory, 1e9, start=64, multiple=8, limit=500)[0] == 496  # the limit, rounded
    calls = []
    found, _ = largest_batch(lambda b: calls.append(b) or affine_memory(b), affine_memory(64), start=64,
                             multiple=8, limit=512, known={64: affine_memory(64)})
    assert found == 64 and 64 not in calls  # a known probe is not measured again
    with pytest.raises(ValueError):
        largest_batch(affine_memory, 1.0, start=60, multiple=8, limit=512)


# ---------------------------------------------------------------- runs


def test_points_at_one_flops_are_drawn_side_by_side_and_lone_points_stay():
    from elip_jax.study.plots import side_by_side
    pixels = [300.0, 100.0, 500.0, 104.0, 505.0, 500.0, 320.0]
    offsets = np.asarray(side_by_side(pixels, width=16))
    drawn = np.asarray(pixels) + offsets
    assert offsets[0] == 0 and offsets[6] == 0  # alone: 300 and 320 are more than 8 apart
    for group in ([1, 3], [2, 4, 5]):  # each group spread about its place, no two of its points closer than 16
        assert np.all(np.diff(np.sort(drawn[group])) >= 16) and offsets[group].sum() == 0


def test_run_list_selection_and_configs():
    base = baseline_method()
    assert base == "none"
    assert parse_methods("elip,evit") == ["none", "elip", "evit"]  # the baseline is always measured beside
    for bad in ("elip,nope", "", "elip,elip"):
        with pytest.raises(ValueError):
            parse_methods(bad)
    with pytest.raises(ValueError):
        parse_regimes("equal_flops")  # its baseline is the equal-steps run
    keys = run_keys(["equal_time", "equal_steps"], ["none", "elip"], [0, 1])
    assert [k.name for k in keys[:5]] == ["equal_steps-none-s0", "equal_steps-elip-s0", "equal_steps-none-s1",
                                         "equal_steps-elip-s1", "equal_time-none-s0"]
    assert [k.index for k in keys] == list(range(8))
    assert parse_selection("0-2,6", None, 8) == [0, 1, 2, 6]
    assert parse_selection(None, "1/3", 8) == [1, 4, 7]
    assert parse_selection(None, None, 3) == [0, 1, 2]
    for runs, shard in (("0-9", None), ("3-1", None), ("a", None), (None, "3/3"), (None, "1"), ("0", "0/2")):
        with pytest.raises(ValueError):
            parse_selection(runs, shard, 8)

    config = load_config("configs/study12.py")
    run = run_config(config, "none", 2, batch_size=96, num_steps=150)
    assert (run.reduction.method, run.seed, run.batch_size, run.num_steps) == ("none", 2, 96, 150)
    assert run.optim.warmup_steps == 15  # the same fraction of training as the config's 30 of 300
    assert run_config(config, "elip", 0).optim.warmup_steps == 30
    evals = study_evals(config)
    assert [e["type"] for e in evals.values()] == ["zeroshot_classification", "zeroshot_retrieval"]
    assert run.evals.to_dict() == evals and config.reduction.method == "elip"  # the study's config is not changed


# ---------------------------------------------------------------- the command


def test_bad_input_is_one_line_before_compiling(tmp_path):
    for args, words in ((["--methods", "elip,nope"], "unknown method"), (["--methods", "elip", "--runs", "0-99"],
                                                                         "outside the study's runs")):
        result = subprocess.run([sys.executable, "-m", "elip_jax.study", "--config", "configs/smoke.py",
                                 "--workdir", str(tmp_path / "w"), *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr


@pytest.mark.slow  # two tiny training runs with their evaluations: about a minute on 2 idle cores
def test_smoke_study_resumes_and_reports(tmp_path):
    """Two 2-step runs (none, elip; one seed) at equal steps, then one run's summary deleted: the rerun does
    only that run, and the report's numbers are the runs' own."""
    from elip_jax.study.driver import Study, run_study
    from elip_jax.train.loop import train

    config = load_config("configs/smoke.py")
    with config.unlocked():
        config.num_steps = 2
        config.eval.datasets = ("",)  # zero-shot classification on the built-in dataset, beside retrieval
        config.eval.batch_size = 128
    study = Study(config=config, config_name="configs/smoke.py", methods=["none", "elip"], seeds=[0],
                  regimes=["equal_steps"], workdir=str(tmp_path / "study"), repeats=1)
    trained = []

    def counting_train(run_config_, path):
        trained.append(os.path.basename(path))
        return train(run_config_, path)

    assert run_study(study, [0, 1], report=print, train=counting_train) == 0
    assert trained == ["equal_steps-none-s0", "equal_steps-elip-s0"]
    runs = tmp_path / "study" / "runs"
    kept = (runs / "equal_steps-none-s0" / "summary.json").stat().st_mtime_ns
    os.remove(runs / "equal_steps-elip-s0" / "summary.json")
    assert run_study(study, [0, 1], report=print, train=counting_train) == 0
    assert trained[2:] == ["equal_steps-elip-s0"]  # the finished run was not touched
    assert (runs / "equal_steps-none-s0" / "summary.json").stat().st_mtime_ns == kept

    document = json.loads((tmp_path / "study" / "results.json").read_text())
    assert document["finished_runs"] == document["total_runs"] == 2
    plan = document["plan"]["methods"]
    assert plan["elip"]["flops_per_step_per_device"] < plan["none"]["flops_per_step_per_device"]
    assert plan["none"]["step_s"] > 0 and plan["elip"]["tokens_per_block"][-1] < plan["none"]["tokens_per_block"][-1]
    for method in ("none", "elip"):
        summary = json.loads((runs / f"equal_steps-{method}-s0" / "summary.json").read_text())
        group = document["groups"]["equal_steps"][method]
        assert group["acc1"] == {"mean": summary["eval"]["classification"]["acc1"], "std": None, "n": 1}
        assert group["i2t_r1"]["mean"] == summary["eval"]["retrieval"]["text_retrieval_recall@1"]
        assert group["t2i_r1"]["mean"] == summary["eval"]["retrieval"]["image_retrieval_recall@1"]
        history = [json.loads(line) for line in open(runs / f"equal_steps-{method}-s0" / "metrics.jsonl")]
        assert history[-1]["step"] == 2 and group["final_loss"]["mean"] == history[-1]["train/loss"]
    table = (tmp_path / "study" / "results.md").read_text()
    acc = 100 * document["groups"]["equal_steps"]["elip"]["acc1"]["mean"]
    assert f"| `elip` | 65 59 43 27 | 1 | {acc:.1f} (1 seed) |" in table
    for name in ("accuracy_vs_flops.png", "loss_curves.png"):
        assert (tmp_path / "study" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_large_batch_runs_follow_the_plan_and_repeat_no_run(tmp_path):
    from elip_jax.study.driver import Study, run_spec
    from elip_jax.study.measure import large_batch_runs
    config = load_config("configs/study12.py")  # batch 64, 300 steps
    plan = {"baseline": "none", "batch_size": 64, "num_steps": 300, "methods": {
        "none": {"flops_per_step_per_device": 100.0, "step_s": 2.0, "large_batch_step_s": 2.0,
                 "largest_batch": {"no_remat": {"batch": 64, "flops_per_step_per_device": 100.0}}},
        "elip": {"flops_per_step_per_device": 90.0, "step_s": 1.6, "large_batch_step_s": 1.5,
                 "largest_batch": {"no_remat": {"batch": 80, "flops_per_step_per_device": 110.0}}},
        "evit": {"flops_per_step_per_device": 80.0, "step_s": 1.4,
                 "largest_batch": {"no_remat": {"batch": 0, "flops_per_step_per_device": None}}}}}
    assert large_batch_runs(plan, "elip") == {"batch": 80, "equal_flops_steps": round(100 * 300 / 110),
                                              "equal_time_steps": round(2.0 * 300 / 1.5)}
    study = Study(config=config, config_name="configs/study12.py", methods=["none", "elip", "evit"], seeds=[0],
                  regimes=["equal_steps", "equal_flops", "equal_time"], workdir=str(tmp_path))
    specs = {key.name: run_spec(study, key, plan) for key in study.keys}
    assert specs["equal_flops-none-s0"] == (None, "equal_steps-none-s0", None)  # the baseline is trained once
    run, same_as, why_not = specs["equal_time-elip-s0"]
    assert (run.batch_size, run.num_steps, run.optim.warmup_steps, same_as) == (80, 400, 40, None)
    assert specs["equal_flops-elip-s0"][0].num_steps == 273
    assert specs["equal_flops-evit-s0"][0] is None and "no batch fits" in specs["equal_flops-evit-s0"][2]
    assert specs["equal_steps-evit-s0"][0].batch_size == 64
