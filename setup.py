"""elip_jax: ELIP text-guided vision-token pruning and merging for CLIP pre-training, in JAX/Flax.

Exact versions that are known to work together live in requirements/*.txt; the launch scripts install those.
"""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10,<0.12",
    "flax>=0.12",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "chex>=0.1.90",
    "tensorflow-datasets>=4.9.9",
    "importlib_resources",  # tensorflow-datasets 4.9.10 imports it without declaring it
    "pillow",  # image decoding without TensorFlow
    "grain>=0.2.12",
    "array_record>=0.8",
    "numpy",
    "ftfy",
    "regex",
    "tokenizers>=0.20",
    "absl-py",
    "tqdm",
    "tensorboardX",
    "scikit-image",  # real offline images for the demo and tests
]
CONVERT = ["torch==2.13.0", "safetensors"]  # pinned: an unpinned torch pulls several GB of CUDA packages
TEST = CONVERT + ["pytest", "pytest-xdist", "transformers", "scikit-learn", "tensorflow-cpu==2.21.0"]

setup(
    name="elip_jax",
    version="0.1.0",
    description="ELIP text-guided vision-token pruning and merging for CLIP pre-training, in JAX/Flax",
    packages=find_packages(include=["elip_jax", "elip_jax.*"]),
    python_requires=">=3.11",
    install_requires=RUNTIME,
    extras_require={
        "convert": CONVERT,
        "test": TEST,
        # tfrecord datasets only; array_record datasets need no TensorFlow
        "tfrecord": ["tensorflow-cpu==2.21.0"],
        # open_clip_torch must be installed with --no-deps (see requirements/open_clip.txt)
    },
    package_data={"elip_jax": ["**/*.txt", "**/*.json", "**/*.gz"]},
)
