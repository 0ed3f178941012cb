"""elip_jax.checkpoints: one loader for a converted folder, a training workdir or a model name; workdirs read
back with only their parameters, past checkpoints that no longer restore."""
import logging
import os
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import elip_jax
from elip_jax import checkpoints
from elip_jax.checkpoints import workdir as workdir_lib
from elip_jax.convert import save_pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import smoke  # noqa: E402  (configs/smoke.py)


@pytest.fixture(scope="module")
def workdir(smoke_workdir):
    """A real training workdir (tests/conftest.py, shared: copied before it is changed): configs/smoke.py for
    12 steps, checkpoints kept at steps 8, 10 and 12."""
    return smoke_workdir()


def saved_params(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))["params"]


def assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def corrupt(workdir, step):
    """Truncates the array data of one checkpoint, as a full disk or a failing copy would leave it."""
    state = os.path.join(workdir, "checkpoints", str(step), "state")
    truncated = 0
    for root, _, files in os.walk(state):
        if os.path.basename(root) == "d":
            for name in files:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(100)
                truncated += 1
    assert truncated


def copy_of(workdir, tmp_path):
    target = str(tmp_path / os.path.basename(workdir))
    shutil.copytree(workdir, target)
    return target


def test_load_accepts_a_workdir_a_converted_folder_and_a_model_name(workdir, tmp_path):
    model, variables, name = checkpoints.load(workdir, reduction="elip")
    assert name == "run@step12" and model.reduction.method == "elip"
    assert_same_tree(variables["params"], saved_params(workdir, 12))

    model, variables = elip_jax.load_pretrained(workdir)  # the top-level export takes workdirs too
    trained = smoke.get_config().reduction.method
    assert trained != "none" and model.reduction.method == trained  # the workdir's schedule is restored
    assert_same_tree(variables["params"], saved_params(workdir, 12))

    folder = tmp_path / "converted"
    save_pretrained(folder, variables["params"], model.config)
    model, converted, name = checkpoints.load(str(folder), reduction="evit")
    assert name == "converted" and model.reduction.method == "evit"
    assert_same_tree(converted["params"], saved_params(workdir, 12))

    model, random3, name = checkpoints.load("tiny", seed=3)
    assert name == "tiny" and model.config.image_size == 64
    _, random4, _ = checkpoints.load("tiny", seed=4)
    assert not np.array_equal(random3["params"]["visual"]["proj"], random4["params"]["visual"]["proj"])


def test_anything_else_is_refused_naming_the_three_kinds(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    for source in (str(tmp_path / "missing"), str(empty), str(a_file), "ViT-Q-99"):
        with pytest.raises(ValueError, match="a converted folder .* a training workdir .* or a model name"):
            checkpoints.load(source)


def test_reading_a_workdir_restores_only_the_parameters(workdir, monkeypatch):
    """Evaluation and export never read the Adam moments (twice the parameters' size)."""
    from orbax.checkpoint import type_handlers
    read = []
    original = type_handlers.NumpyHandler.deserialize

    async def recording(self, infos, args=None):
        read.extend(info.name for info in infos)
        return await original(self, infos, args)

    monkeypatch.setattr(type_handlers.NumpyHandler, "deserialize", recording)
    _, variables, step = checkpoints.load_workdir(workdir)
    assert step == 12
    assert read and all(name.startswith("params.") for name in read), sorted(read)[:5]
    assert len(read) == len(jax.tree_util.tree_leaves(variables["params"]))


def test_a_truncated_latest_checkpoint_falls_back_to_the_newest_good_one(workdir, tmp_path, caplog):
    damaged = copy_of(workdir, tmp_path)
    corrupt(damaged, 12)
    with caplog.at_level(logging.WARNING):
        _, variables, step = checkpoints.load_workdir(damaged)
    assert step == 10
    assert_same_tree(variables["params"], saved_params(workdir, 10))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "checkpoint step 12" in lines[0] and "OUT_OF_RANGE" in lines[0] and "trying step 10" in lines[0]

    from elip_jax.evaluate.cli import load_model  # what `evaluate --pretrained WORKDIR` loads
    _, _, name = load_model(damaged)
    assert name == "run@step10"


def test_no_restorable_checkpoint_is_one_error_naming_the_folders(workdir, tmp_path):
    damaged = copy_of(workdir, tmp_path)
    for step in (12, 10, 8):
        corrupt(damaged, step)
    with pytest.raises(ValueError) as error:
        checkpoints.load(damaged)
    message = str(error.value)
    assert "\n" not in message and "no checkpoint in" in message
    for step in (12, 10, 8):
        assert os.path.join(damaged, "checkpoints", str(step)) in message



def test_a_failed_restores_late_reads_reach_no_hook(workdir, tmp_path):
    """A failed restore's reads still finish, on TensorStore's threads, into the asyncio loop Orbax has closed
    ("Event loop is closed", through sys.unraisablehook, for seconds after). The loaders drop those before any
    hook: a hook written in Python (pytest's, IPython's) formats each on that thread, Python 3.11 formats
    tracebacks with `ast`, whose state all threads share, and an ast.parse on the main thread meanwhile fails
    with "AST constructor recursion depth mismatch" (this suite's next test did, every run, before)."""
    reached, previous = [], sys.unraisablehook
    sys.unraisablehook = lambda unraisable: reached.append(str(unraisable.exc_value))
    try:
        damaged = copy_of(workdir, tmp_path)
        for step in (12, 10, 8):
            corrupt(damaged, step)
        for attempt in range(2):  # a first restore in a process may be slow enough for its reads to end in time
            with pytest.raises(ValueError, match="no checkpoint in"):
                checkpoints.load(damaged)
            if attempt == 0:  # reports of earlier tests' restores may reach this hook before the loader's filter
                reached.clear()
        time.sleep(3)  # late reads arrive for about a second (hundreds of them)
    finally:
        sys.unraisablehook = previous
        workdir_lib.quiet_reads_of_failed_restores()  # for reads later still, as the loader would have
    assert "Event loop is closed" not in reached, reached[:3]
