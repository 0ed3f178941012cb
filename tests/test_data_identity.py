"""Data owns the built-in dataset's identity and prepares it once per job; a data worker imports no model code."""
import ast
import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from elip_jax.data import names, shapes_builder

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_spelling_of_the_builtin_dataset_is_known_in_one_place():
    for spelling in ("elip_shapes", "elip_shapes/small", "elip_shapes:1.0.0", "builtin", "builtin/small"):
        assert names.is_builtin(spelling)
    for other in ("coco_captions", "elip_shapes_other", "builtins", "cifar10/builtin"):
        assert not names.is_builtin(other)
    assert names.canonical_name("builtin") == "elip_shapes"
    assert names.canonical_name("builtin/small:1.0.0") == "elip_shapes/small:1.0.0"
    assert names.canonical_name("coco_captions/2017") == "coco_captions/2017"
    assert names.builtin_config("builtin") == "full" and names.builtin_config("elip_shapes/small") == "small"
    with pytest.raises(ValueError, match="configs full, small; got 'elip_shapes/huge'"):
        names.builtin_config("elip_shapes/huge")
    assert tuple(c.name for c in shapes_builder.ElipShapes.BUILDER_CONFIGS) == names.BUILTIN_CONFIGS


def test_no_other_module_spells_the_builtin_names():
    """The names live in elip_jax/data/names.py; every other module asks it (docstrings and help may mention them)."""
    literals = {names.BUILTIN_DATASET, names.BUILTIN_ALIAS}
    offenders = []
    for path in sorted((ROOT / "elip_jax").rglob("*.py")):
        if path == ROOT / "elip_jax" / "data" / "names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value in literals or node.value.split("/")[0].split(":")[0] in literals):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "ask elip_jax.data.names instead of spelling the built-in dataset:\n" + "\n".join(offenders)


@pytest.fixture
def recorded_builds(monkeypatch):
    calls = []
    monkeypatch.setattr(shapes_builder, "prepare_builtin",
                        lambda data_dir=None, config="full": calls.append(("build", data_dir, config)) or data_dir)
    monkeypatch.setattr(shapes_builder, "_SYNCED", set())
    return calls


def test_process_zero_prepares_while_the_others_wait(recorded_builds, tmp_path):
    barrier = lambda tag: recorded_builds.append(("barrier", tag))  # noqa: E731
    shapes_builder.prepare_builtin_once(str(tmp_path), "small", processes=(0, 2), barrier=barrier)
    assert [c[0] for c in recorded_builds] == ["build", "barrier", "build"]  # the second build is a look-up
    recorded_builds.clear()
    shapes_builder._SYNCED.clear()
    shapes_builder.prepare_builtin_once(str(tmp_path), "small", processes=(1, 2), barrier=barrier)
    assert [c[0] for c in recorded_builds] == ["barrier", "build"]  # nothing built before process 0 is done
    recorded_builds.clear()
    shapes_builder.prepare_builtin_once(str(tmp_path), "small", processes=(1, 2), barrier=barrier)
    assert [c[0] for c in recorded_builds] == ["build"]  # once per job: later calls pass no barrier


def test_one_process_needs_no_barrier_and_starts_no_backend(recorded_builds, tmp_path):
    def barrier(tag):
        raise AssertionError("a single process must not wait for others")
    assert shapes_builder.process_layout() == (0, 1)
    shapes_builder.prepare_builtin_once(str(tmp_path), "small", barrier=barrier)
    assert [c[0] for c in recorded_builds] == ["build"]


def test_resolve_data_dir_prepares_the_builtin_dataset_through_the_barrier(recorded_builds, monkeypatch, tmp_path):
    from elip_jax.data import checks
    monkeypatch.setattr(shapes_builder, "process_layout", lambda: (0, 2))
    monkeypatch.setattr(shapes_builder, "sync_processes", lambda tag: recorded_builds.append(("barrier", tag)))
    assert checks.resolve_data_dir("builtin/small", str(tmp_path)) == str(tmp_path)
    assert [c[0] for c in recorded_builds] == ["build", "barrier", "build"]
    assert all(c[2] == "small" for c in recorded_builds if c[0] == "build")


WORKER = textwrap.dedent("""
    import json, pickle, sys
    import numpy as np
    import elip_jax.data.train_pipeline as tp
    import elip_jax.data.eval_pipeline  # noqa: F401
    collate = pickle.loads(pickle.dumps(tp.CollateTrainBatch(context_length=16)))  # as a grain worker gets it
    prepare = pickle.loads(pickle.dumps(tp.PrepareTrainExample("image", "captions", 8, 4, (0.9, 1.0), (0.75, 1.33))))
    import collections, io
    from PIL import Image
    png = io.BytesIO(); Image.new("RGB", (12, 12), (200, 10, 10)).save(png, format="PNG")
    example = prepare({"image": png.getvalue(), "captions": ["a red square"]}, np.random.default_rng(0))
    batch = collate([example, example], collections.Counter())
    print(json.dumps({"tokens": batch["tokens"].shape, "modules": sorted(sys.modules)}))
""")


def test_a_data_worker_imports_no_model_code():
    out = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(pathlib.Path.home())})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["tokens"] == [2, 16]  # the default tokenizer ran, in the worker's own process
    loaded = [m for m in report["modules"] if m.split(".")[0] == "flax" or any(
        m == f"elip_jax.{room}" or m.startswith(f"elip_jax.{room}.")
        for room in ("models", "reduction", "checkpoints", "convert", "evaluate", "train"))]
    assert not loaded, f"a data worker imported model code: {loaded[:10]}"
    assert "elip_jax.tokenizer" in report["modules"]


def test_the_package_front_loads_models_only_when_asked():
    script = textwrap.dedent("""
        import sys
        import elip_jax
        assert "elip_jax.models" not in sys.modules and "flax" not in sys.modules
        assert {"create_model", "tokenize", "load_pretrained", "CLIP", "make_schedule"} <= set(dir(elip_jax))
        assert elip_jax.tokenize("a cat").shape == (1, 77) and "elip_jax.models" not in sys.modules
        assert elip_jax.create_model("tiny").config.embed_dim == 32 and "elip_jax.models" in sys.modules
        assert callable(elip_jax.load_pretrained)
        try:
            elip_jax.no_such_name
        except AttributeError as error:
            assert "no_such_name" in str(error)
        else:
            raise AssertionError("an unknown name must raise AttributeError")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(pathlib.Path.home())})
    assert out.returncode == 0, out.stderr[-3000:]
