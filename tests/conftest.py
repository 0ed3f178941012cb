"""Test set-up: 8 fake CPU devices (set before jax is imported anywhere) and shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from a test
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
