"""benchmarks/gpu.py (issue 13's one-call GPU measurements) in smoke mode on the CPU: every section runs through
the same code as on the GPU machine (with the modules that machine lacks blocked), and its JSON is consistent.
Only relations are checked here; absolute CPU numbers mean nothing."""
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu.py")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu = load_script()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not conftest's 8 fake devices
    env["JAX_PLATFORMS"] = "cpu"
    process = subprocess.run([sys.executable, SCRIPT, str(out), "--smoke"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=2400)
    assert process.returncode == 0, process.stderr[-4000:]
    with open(out / "results.json") as f:
        document = json.load(f)
    return document, process.stdout, out


def close(a, b, rel=1e-9):
    return math.isclose(a, b, rel_tol=rel, abs_tol=0.0)


def median(entry):
    return statistics.median(entry["step_s"]["all"])


def test_every_section_runs_and_the_device_is_named(smoke):
    document, stdout, out = smoke
    sections = document["sections"]
    expected = {"train", "open_clip", "inference", "torch_compile", "memory"} | {f"flags:{name}" for name in gpu.FLAG_VARIANTS}
    assert set(sections) == expected
    assert all(s["status"] == "complete" for s in sections.values()), sections
    assert document["device"]["backend"] == "cpu" and document["device"]["device"].startswith("cpu")
    assert document["absolute_numbers_meaningful"] is False
    assert document["smoke"] is True and document["blocked_modules"] == list(gpu.GPU_IMAGE_LACKS)
    # the table comes last, labelled with the device, and is also saved
    assert stdout.strip().splitlines()[-1].startswith("sections:")
    assert "cpu" in stdout.splitlines()[0] and "smoke run on a CPU" in stdout
    assert (out / "summary.txt").read_text().strip() == stdout.strip()


def test_train_step_every_method_against_none_from_the_same_run(smoke):
    document, _, _ = smoke
    train = document["train"]
    from elip_jax.reduction import METHODS
    assert list(train["methods"]) == ["none"] + [m for m in METHODS if m != "none"]
    # the GPU image lacks the data pipeline's modules: the trainer's own step imports without them (the package
    # fronts are lazy, so no stand-in for elip_jax.data is needed)
    assert train["trainer_step"] == "elip_jax.train.step"
    peak = document["peak"]["flops_per_s"]
    assert peak > 0
    none = train["methods"]["none"]
    for method, entry in train["methods"].items():
        assert entry["status"] == "ok", (method, entry)
        assert entry["images_per_s"] > 0 and entry["xla_flops"] > 0
        assert close(entry["images_per_s"], train["batch"] / median(entry))
        assert close(entry["flops_per_s"], entry["xla_flops"] / median(entry))
        assert close(entry["mfu"], entry["flops_per_s"] / peak)
        assert close(entry["time_ratio"], median(entry) / median(none))
        assert close(entry["speedup"], 1 / entry["time_ratio"])
        assert entry["time_ratio_against"] == "none"
        assert math.isfinite(entry["first_step"]["loss"]) and entry["first_step"]["finite"] == 1.0
        assert entry["memory"]["peak"] > 0
    assert none["time_ratio"] == 1.0
    assert train["methods"]["random"]["xla_flops"] < none["xla_flops"]
    assert train["methods"]["evit"]["xla_flops"] < none["xla_flops"]


def test_attention_variants_against_the_models_own(smoke):
    document, _, _ = smoke
    attention = document["attention"]
    assert "cuDNN" in attention["skipped"]["cudnn"]
    einsum, default = attention["none@einsum"], attention["none@model"]
    assert einsum["status"] == "ok" and einsum["images_per_s"] > 0
    assert close(einsum["time_ratio"], median(einsum) / median(default))
    assert abs(einsum["first_loss_difference"]) < 1e-2  # the same attention, written out


def test_flag_variants_are_timed_against_the_default_flags(smoke):
    document, _, _ = smoke
    for name, flags in document["flags"].items():
        assert flags["xla_flags"] == gpu.FLAG_VARIANTS[name]
        ratio = flags["time_ratio_vs_default_flags"]["none"]
        assert ratio > 0
        assert close(ratio, median(flags["methods"]["none"]) / median(document["train"]["methods"]["none"]))


def test_largest_batch_fits_and_remat_never_fits_fewer(smoke):
    document, _, _ = smoke
    memory = document["memory"]
    limit = memory["limit_bytes"]
    assert memory["configs"], memory
    for method, configs in memory["configs"].items():
        for key in ("no_remat", "remat"):
            entry = configs[key]
            assert entry["status"] == "ok", entry
            assert entry["largest_batch"] >= 1
            for probe in entry["probes"]:
                assert probe["fits"] == (probe["peak_bytes"] <= limit)
            fitting = [p["batch"] for p in entry["probes"] if p["fits"]]
            assert entry["largest_batch"] == max(fitting)
            if entry["exact"]:
                assert entry["smallest_failing_batch"] - entry["largest_batch"] <= entry["granularity"]
        assert configs["remat"]["largest_batch"] >= configs["no_remat"]["largest_batch"]


def test_inference_measures_the_methods_that_prune_without_a_caption(smoke):
    document, _, _ = smoke
    methods = document["inference"]["methods"]
    assert methods["none"]["status"] == "ok" and methods["evit"]["status"] == "ok"
    assert methods["elip"]["status"].startswith("not measured")  # needs the caption to prune
    for name in ("none", "evit"):
        assert methods[name]["images_per_s"] > 0
    assert close(methods["evit"]["time_ratio"], median(methods["evit"]) / median(methods["none"]))
    assert methods["evit"]["xla_flops"] < methods["none"]["xla_flops"]


def test_open_clip_anchor_and_torch_compile(smoke):
    document, _, _ = smoke
    none = document["train"]["methods"]["none"]
    for name in ("open_clip", "torch_compile"):
        anchor = document[name]
        assert anchor["images_per_s"] > 0 and anchor["batch"] == document["train"]["batch"], anchor
        assert anchor["same_batch"] is True and math.isfinite(anchor["first_loss"])
        assert close(anchor["flops_per_s"], anchor["images_per_s"] * document["flops_per_image_none"])
        assert close(anchor["mfu"], anchor["flops_per_s"] / document["peak"]["flops_per_s"])
        assert close(anchor["elip_none_speedup"], none["images_per_s"] / anchor["images_per_s"])
    assert document["torch_compile"]["compile"] is True
    assert document["torch_compile"]["compile_backend"] == gpu.SMOKE_PROFILE.torch_compile_backend
    assert document["targets"]["none_vs_open_clip_speedup"]["value"] == document["open_clip"]["elip_none_speedup"]


def test_optimizer_settings_are_the_trainers():
    defaults = pytest.importorskip("elip_jax.train.defaults")
    optim = dict(defaults.base_config().optim)
    assert {k: optim[k] for k in gpu.OPTIMIZER} == gpu.OPTIMIZER


@pytest.mark.parametrize("fixed, per_image, curve", [(1000, 10, 0.0), (5000, 3, 0.0), (100, 7, 0.0005)])
@pytest.mark.parametrize("limit", [1500, 20000, 90000])
def test_largest_fitting_search(fixed, per_image, curve, limit):
    peak_of = lambda batch: fixed + per_image * batch + curve * batch * batch
    found = gpu.largest_fitting(peak_of, limit, start=16, granularity=4, max_probes=12)
    best = max((b for b in range(0, 40000, 4) if peak_of(b) <= limit), default=0)
    assert found["exact"] and found["largest_batch"] == best
    # a compile per probe: a line needs few (XLA's memory grows about linearly in the batch)
    assert len(found["probes"]) <= (6 if curve == 0 else 10)
