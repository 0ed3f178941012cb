"""Test set-up: 8 fake CPU devices (set before jax is imported anywhere), a compilation cache shared by the run,
and session fixtures for what many modules need: the small built-in dataset and trained smoke workdirs."""
import os
import shutil
import socket
import sys

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from a test
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    # `./launch/test.sh -m "not slow"` is the quick loop while working; CI runs every test, slow ones included.
    config.addinivalue_line("markers", "slow: takes over about 30 s on 2 cores (training runs, big compiles); "
                                       "CI runs it, `-m 'not slow'` leaves it out of a quick local run")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers: they inherit the environment
def pytest_sessionstart(session):
    """JAX's persistent compilation cache in a folder of this run, shared by the xdist workers and the command
    lines the tests start (they inherit the environment). Many tests compile the same tiny models (the same
    programs in several modules, and again in every subprocess): on 2 CPU cores a 12-block backward pass takes
    a minute to compile, a cache hit seconds. The cache starts empty with each run, so the suite's time stays
    honest; ELIP_JAX_TEST_COMPILATION_CACHE=0 turns it off, and a JAX_COMPILATION_CACHE_DIR of the caller's is
    used as it is (kept across runs)."""
    if os.environ.get("ELIP_JAX_TEST_COMPILATION_CACHE", "1") == "0":
        return
    folder = str(run_folder(session.config._tmp_path_factory) / "jax_compilation_cache")
    if os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", folder) != folder:
        return  # the caller's own cache (an xdist worker finds the folder its controller set: this one)
    settings = {"jax_compilation_cache_dir": folder,
                "jax_persistent_cache_min_compile_time_secs": 0,  # tiny test programs compile fast, but often
                "jax_persistent_cache_min_entry_size_bytes": 0}
    os.environ.update({name.upper(): str(value) for name, value in settings.items()})
    if "jax" in sys.modules:  # imported already (by a plugin): it read the environment before we set it
        import jax
        for name, value in settings.items():
            jax.config.update(name, value)


def run_folder(tmp_path_factory):
    """A folder of this test run shared by its xdist workers (the parent of each worker's basetemp, as
    pytest-xdist documents); the run's own basetemp without xdist. Never one of an earlier run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def free_port() -> int:
    """A TCP port nobody listens on now (for a jax.distributed coordinator in multi-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def made_once(tmp_path_factory, name: str, make) -> str:
    """make(folder) -> str, run once per test run whichever xdist worker asks first; the others wait on a file
    lock and get the same result. What it makes is shared: a test that changes it copies it first."""
    from filelock import FileLock  # pinned in requirements/runtime.txt, which .venv-test installs too

    root = run_folder(tmp_path_factory) / "shared"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if folder.exists():  # a worker failed half-way: start over
                shutil.rmtree(folder)
            folder.mkdir()
            done.write_text(make(str(folder)))
        return done.read_text()


@pytest.fixture(scope="session")
def builtin_data_dir(tmp_path_factory):
    """The data_dir holding the small built-in dataset `elip_shapes/small`, prepared once per run."""
    from elip_jax.data import prepare_builtin
    return made_once(tmp_path_factory, "elip_shapes_small", lambda folder: prepare_builtin(folder, config="small"))


def smoke_config(data_dir, method="elip", **overrides):
    """configs/smoke.py for `method` on data_dir, with dotted overrides ("checkpoint.every_steps": 4)."""
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import smoke  # configs/smoke.py
    config = smoke.get_config(method)
    config.data.data_dir = data_dir
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


@pytest.fixture(scope="session")
def smoke_workdir(builtin_data_dir, tmp_path_factory):
    """trained(method="elip") -> a workdir named `run`: configs/smoke.py as it is (12 steps, checkpoints kept at
    steps 8, 10 and 12) on the small built-in dataset, trained once per run and method. Shared: a test that
    writes into it copies it first."""
    def trained(method: str = "elip") -> str:
        def make(folder):
            from elip_jax.train.loop import train
            path = os.path.join(folder, "run")
            train(smoke_config(builtin_data_dir, method), path)
            return path
        return made_once(tmp_path_factory, f"smoke_{method}", make)
    return trained
