"""One loader for the three things a user may name as a model: a converted folder, a training workdir, a name."""
from __future__ import annotations

import os

from elip_jax.checkpoints.folder import CONFIG_JSON, PARAMS_DIR, RUNTIME_OPTIONS
from elip_jax.checkpoints.folder import load_pretrained as load_converted
from elip_jax.checkpoints.workdir import CHECKPOINTS_DIR, MODEL_CONFIG_FILE, is_workdir, load_workdir

EXPECTED = (f"a converted folder ({CONFIG_JSON} and {PARAMS_DIR}/, from `python -m elip_jax.convert`), a "
            f"training workdir ({MODEL_CONFIG_FILE} and {CHECKPOINTS_DIR}/, from `python -m elip_jax.train`) or a "
            "model name")


def is_converted_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_JSON)) and not is_workdir(path)


def _check_runtime_options(source: str, overrides: dict):
    unknown = sorted(set(overrides) - set(RUNTIME_OPTIONS))
    if unknown:
        raise ValueError(f"{source!r} fixes the architecture: only {RUNTIME_OPTIONS} may be given as options, "
                         f"got {unknown}")


def load(source: str, *, reduction=None, seed: int = 0, **overrides):
    """(model, variables, name) from `source`:

    - a converted folder: its weights; name = the folder's name;
    - a training workdir: the newest checkpoint that restores (parameters only); name = 'DIRNAME@stepN';
    - a model name from `elip_jax.list_models()`: random weights drawn with `seed`; name = the model name.

    reduction: None restores the schedule saved with a folder or workdir (unpruned for a name); else as in
    `create_model` ('none', 'elip', 'evit', a dict or a ReductionSchedule). Parameters a method owns (a scorer's,
    learnable tokens) come from the checkpoint when it has them, else are initialised with `seed`.
    overrides: runtime options (dtype='bfloat16', remat=True) for folders; any CLIPConfig field for names.
    Anything else raises ValueError naming the three expected kinds.
    """
    from elip_jax.models.config import list_models
    source = os.fspath(source)
    name = os.path.basename(os.path.normpath(source))
    if os.path.isdir(source):
        if is_workdir(source):
            _check_runtime_options(source, overrides)
            model, variables, step = load_workdir(source, reduction=reduction, seed=seed, **overrides)
            return model, as_device_arrays(variables), f"{name}@step{step}"
        if is_converted_folder(source):
            _check_runtime_options(source, overrides)
            model, variables = load_converted(source, reduction, seed, **overrides)
            return model, variables, name
        raise ValueError(f"{source!r} is a directory but neither kind of checkpoint: expected {EXPECTED}")
    if source in list_models():
        from elip_jax.models.clip import create_model
        model = create_model(source, reduction, **overrides)
        return model, random_variables(model, seed), source
    if os.path.exists(source):
        raise ValueError(f"{source!r} is a file: expected {EXPECTED}")
    raise ValueError(f"{source!r} does not exist and is not a model name: expected {EXPECTED} "
                     f"(one of {', '.join(list_models())})")


def load_pretrained(path, reduction=None, seed: int = 0, **overrides):
    """(model, variables) from a converted folder or a training workdir (its newest restorable checkpoint).

    variables is {'params': tree}, ready for `model.apply(variables, ...)`; overrides: dtype, remat.
    For random weights use `elip_jax.create_model(name)` (or `elip_jax.checkpoints.load(name)`).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"load_pretrained needs a directory: a converted folder or a training workdir; "
                         f"{path!r} is not one" + (" (for random weights: elip_jax.create_model(name))"
                                                   if not os.path.exists(path) else ""))
    model, variables, _ = load(path, reduction=reduction, seed=seed, **overrides)
    return model, variables


def as_device_arrays(variables: dict) -> dict:
    import jax
    import jax.numpy as jnp
    return jax.tree_util.tree_map(jnp.asarray, variables)


def random_variables(model, seed: int = 0) -> dict:
    """Randomly initialised variables (smoke tests, throughput benchmarks, pipelines checked end to end)."""
    import jax
    import jax.numpy as jnp
    size = model.config.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, model.config.context_length), jnp.int32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), images, tokens)
