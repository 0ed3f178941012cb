"""Test set-up: 8 fake CPU devices (set before jax is imported anywhere) and shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from a test
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    # `./launch/test.sh -m "not slow"` is the quick loop while working; CI runs every test, slow ones included.
    config.addinivalue_line("markers", "slow: takes over about 30 s on 2 cores (training runs, big compiles); "
                                       "CI runs it, `-m 'not slow'` leaves it out of a quick local run")
