"""The benchmark: JSON fields, ratios, XLA counts against the schedule, and the analytic FLOP formula."""
import json

import pytest

import elip_jax
from elip_jax import accounting, benchmark
from elip_jax.reduction import get_method, make_schedule, registered_methods, tome

METHODS = registered_methods()
PRUNED = [m for m in METHODS if get_method(m).reduces]


# 4 blocks at 32 px (17 tokens) is enough for every method to reduce, and its backward passes compile in a third
# of the time a 12-block model's take: the slow part of this file.
SMALL_MODEL, SMALL_SIZE = "tiny", 32
SMALL_RUN = ["--model", SMALL_MODEL, "--image-size", str(SMALL_SIZE), "--batch", "2", "--repeats", "1",
             "--warmup", "0"]


def run_cli(out, extra):
    json_path, markdown_path = out / "bench.json", out / "BENCHMARKS.md"
    benchmark.main(SMALL_RUN + extra + ["--json", str(json_path), "--markdown", str(markdown_path)])
    return json.loads(json_path.read_text()), markdown_path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every method's image programs, timed once (compiling 12-block backward passes is the slow part, so
    the full training step is left to `full_step_run`)."""
    return run_cli(tmp_path_factory.mktemp("bench"), ["--programs", "image_forward,image_train"])


@pytest.fixture(scope="module")
def full_step_run(tmp_path_factory):
    """The two-tower training step for none and elip only."""
    return run_cli(tmp_path_factory.mktemp("full"), ["--methods", "elip", "--programs", "full_step"])[0]


@pytest.mark.slow
def test_json_has_every_field(run):
    result, _ = run
    for key in ("schema_version", "model", "config", "batch", "image_size", "dtype", "remat", "backend",
                "device", "jax_version", "formulas", "methods", "targets", "repeats", "programs"):
        assert key in result, key
    assert list(result["methods"]) == list(METHODS)
    for method, r in result["methods"].items():
        assert set(r["xla_flops"]) == set(benchmark.PROGRAMS), method
        assert set(r["xla_temp_bytes"]) == set(benchmark.MEMORY_PROGRAMS), method
        assert set(r["time_s"]) == set(benchmark.TIMED_PROGRAMS), method
        timing = r["time_s"]["image_train"]
        assert timing["median"] > 0 and len(timing["all"]) == 1
        assert r["time_s"]["full_step"] is None and r["xla_flops"]["full_step"] is None  # not compiled
        # the CPU backend reports cost and memory analysis
        assert r["xla_flops"]["image_forward"] > 0 and r["xla_flops"]["image_train"] > 0, method
        assert r["xla_temp_bytes"]["image_train"] > 0, method
        assert set(r["ratios"]) == {"analytic_flops", "xla_flops", "xla_temp_bytes", "time_s", "time_s_min"}
        for key in ("per_block", "scoring_per_stage", "main_path", "scoring", "forward", "image_train"):
            assert key in r["analytic_flops"], (method, key)


def test_ratios_of_none_are_one(run, full_step_run):
    for result in (run[0], full_step_run):
        for group in result["methods"]["none"]["ratios"].values():
            for name, value in group.items():
                if result["methods"]["none"]["xla_flops"].get(name, 1) is not None:  # skip programs not run
                    assert value == pytest.approx(1.0), name


def test_pruned_methods_cost_fewer_xla_flops_than_none(run, full_step_run):
    methods = run[0]["methods"]
    for method in PRUNED:
        flops = methods[method]["xla_flops"]
        assert flops["image_train"] < methods["none"]["xla_flops"]["image_train"], method
        if methods[method]["ratios"]["analytic_flops"]["forward"] < 1:  # elip's look-ahead costs more (docs/elip.md)
            assert flops["image_forward"] < methods["none"]["xla_flops"]["image_forward"], method
    full = full_step_run["methods"]
    assert full["elip"]["xla_flops"]["full_step"] < full["none"]["xla_flops"]["full_step"]
    assert full["elip"]["ratios"]["xla_temp_bytes"]["full_step"] < 1
    assert full["elip"]["time_s"]["full_step"]["median"] > 0


def test_tokens_match_the_schedule(run):
    result = run[0]
    for method, r in result["methods"].items():
        model = elip_jax.create_model(SMALL_MODEL, reduction=method, image_size=SMALL_SIZE)
        assert r["tokens_per_block"] == accounting.tokens_per_block(model.reduction), method
        assert r["schedule"]["keep"] == list(model.reduction.keep)
        assert len(r["analytic_flops"]["per_block"]) == model.config.vision_layers == 4


def test_markdown_section_is_replaced_not_duplicated(run):
    result, path = run
    benchmark.update_markdown(str(path), result)
    text = path.read_text()
    begin, end = benchmark.section_marker(result)
    assert text.count(begin) == 1 and text.count(end) == 1
    assert "| elip_inline |" in text


def test_block_formula_matches_a_hand_computation():
    # ViT-B/16: N = 197 tokens, D = 768. 24*N*D^2 + 4*N^2*D.
    assert accounting.block_flops(197, 768) == 24 * 197 * 768 ** 2 + 4 * 197 ** 2 * 768 == 2_907_909_120
    assert accounting.block_flops(10, 8, mlp_ratio=2.0) == 16 * 10 * 64 + 4 * 100 * 8
    assert accounting.cls_row_flops(10, 8) == 2 * 64 + 2 * 10 * 64 + 2 * 10 * 8


def test_analytic_flops_of_elip_count_the_cheap_look_ahead():
    # 4 patches, 4 blocks, one stage before block 2 keeping 2: blocks 0-1 see 5 tokens, blocks 2-3 see 4.
    schedule = make_schedule("elip", num_patches=4, depth=4, begin_layers=[2], keep_ratios=[0.5])
    flops = accounting.analytic_image_flops(schedule, width=8)
    block = accounting.block_flops
    assert flops["per_block"] == [block(5, 8), block(5, 8), block(4, 8), block(4, 8)]
    # group = blocks 2, 3: block 2 full on the 5 pre-pruning tokens, then block 3's CLS row only.
    assert flops["scoring_per_stage"] == [block(5, 8) + accounting.cls_row_flops(5, 8)]
    assert flops["image_train"] == 3 * flops["main_path"] + flops["scoring"]
    inline = accounting.analytic_image_flops(make_schedule("elip_inline", 4, 4, [2], [0.5]), width=8)
    assert inline["scoring"] == accounting.cls_row_flops(5, 8)


def test_analytic_flops_of_tome_count_the_mlp_after_merging_and_the_matching():
    schedule = make_schedule("tome", num_patches=16, depth=4, r=3)
    assert schedule.tokens_per_block() == [17, 14, 11, 8]
    flops = accounting.analytic_image_flops(schedule, width=8, heads=2)
    attention = lambda n: 8 * n * 64 + 4 * n * n * 8
    assert flops["per_block"] == [attention(n) + 16 * (n - 3) * 64 for n in (17, 14, 11, 8)]
    per_block = tome.tome_scoring_flops_per_block(tome.tome_schedule(17, 4, 3), 8, 2)
    assert flops["scoring_per_stage"] == per_block and flops["scoring"] == sum(per_block) > 0
    with pytest.raises(ValueError, match="heads"):
        accounting.analytic_image_flops(schedule, width=8)


def test_vit_b16_tome_default_is_at_about_the_flops_of_evit():
    none = accounting.analytic_image_flops(make_schedule("none", 196, 12), 768)
    evit = accounting.analytic_image_flops(make_schedule("evit", 196, 12), 768)
    merged = make_schedule("tome", 196, 12)
    assert merged.r == (tome.DEFAULT_R_VIT_B16,) * 12 == (9,) * 12
    flops = accounting.analytic_image_flops(merged, 768, heads=12)
    assert flops["forward"] / none["forward"] == pytest.approx(evit["forward"] / none["forward"], abs=0.015)


def test_vit_b16_analytic_ratios_match_the_spec():
    none = accounting.analytic_image_flops(make_schedule("none", 196, 12), 768)
    elip = accounting.analytic_image_flops(make_schedule("elip", 196, 12), 768)
    assert elip["main_path"] / none["main_path"] == pytest.approx(0.71, abs=0.01)  # docs/elip.md
    assert elip["image_train"] / none["image_train"] == pytest.approx(0.88, abs=0.01)


class FakeCompiled:
    def __init__(self, cost=None, memory=None, fail=False):
        self.cost, self.memory, self.fail = cost, memory, fail

    def cost_analysis(self):
        if self.fail:
            raise NotImplementedError
        return self.cost

    def memory_analysis(self):
        if self.fail:
            raise NotImplementedError
        return self.memory


def test_xla_readers_accept_dicts_lists_and_nothing():
    assert accounting.xla_flops(FakeCompiled({"flops": 5.0})) == 5.0  # jax >= 0.4.3x
    assert accounting.xla_flops(FakeCompiled([{"flops": 7.0}])) == 7.0  # older jax: one dict per program
    assert accounting.xla_flops(FakeCompiled([])) is None
    assert accounting.xla_flops(FakeCompiled(None)) is None
    assert accounting.xla_flops(FakeCompiled(fail=True)) is None
    assert accounting.xla_temp_bytes(FakeCompiled(memory=None)) is None
    assert accounting.xla_temp_bytes(FakeCompiled(fail=True)) is None
    assert accounting.xla_temp_bytes(FakeCompiled(memory=type("Stats", (), {"temp_size_in_bytes": 12})())) == 12


def test_unknown_methods_are_rejected_and_none_comes_first():
    assert benchmark.validate_methods(["evit", "none", "elip"]) == ["none", "evit", "elip"]
    with pytest.raises(ValueError, match="unknown method"):
        benchmark.validate_methods(["elip", "fast"])


@pytest.mark.parametrize("flags,match", [
    (["--json", "{tmp}"], "--json must name a file, not a folder"),
    (["--markdown", "{tmp}/broken.md"], "section starts"),
    (["--methods", "none,prune"], "unknown method(s) ['prune']"),
    (["--model", "ViT-Q-99"], "unknown model name 'ViT-Q-99'"),
    (["--batch", "x"], "invalid int value"),
])
def test_bad_requests_are_one_line_before_compiling(tmp_path, capsys, monkeypatch, flags, match):
    (tmp_path / "broken.md").write_text("<!-- elip_jax.benchmark: tiny 32 float32 b2 cpu -->\nno end marker\n")

    def no_compilation(*args, **kwargs):
        raise AssertionError("compiled before the request was checked")
    monkeypatch.setattr(benchmark, "compile_program", no_compilation)
    from elip_jax.command_line import run_command
    code = run_command(benchmark.main, SMALL_RUN + [f.replace("{tmp}", str(tmp_path)) for f in flags])
    err = capsys.readouterr().err
    lines = err.strip("\n").splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_command_line_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "elip_jax.benchmark", *SMALL_RUN, "--json", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["error: --json must name a file, not a folder; got "
                                        f"{str(tmp_path)!r} (e.g. {str(tmp_path / 'result.json')!r})"]
