"""Reading a training workdir back: the model it trains and the parameters of its newest good checkpoint.

    WORKDIR/model_config.json     the architecture (CLIPConfig fields), written once by the first run
    WORKDIR/reduction.json        the token-reduction schedule it trains with (make_schedule options: method,
                                  begin_layers, exact keep counts, r, protected, mix); absent: unpruned
    WORKDIR/config.json           the training config the first run started with (never rewritten)
    WORKDIR/config_history.jsonl  one line per resume that changed keys: the step it resumed from and what changed
    WORKDIR/checkpoints/STEP/     Orbax: 'state' (parameters, Adam moments, step, RNG) and 'data' (iterator)

Evaluation and export need only the parameters: they are restored alone (Orbax partial restore), so the Adam
moments, twice the parameters' size, are never read. A checkpoint that cannot be restored (a truncated file,
a disk error) is skipped for the newest one that can, with one line saying which step failed and why.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable, Optional, TypeVar

import numpy as np

log = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "model_config.json"
REDUCTION_FILE = "reduction.json"
CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
CHECKPOINTS_DIR = "checkpoints"

T = TypeVar("T")


class NoRestorableCheckpointError(ValueError):
    """A workdir has checkpoints, but none of them can be restored."""


def is_workdir(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE))
            and os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)))


def checkpoint_steps(checkpoints_dir: str) -> list[int]:
    """The finished checkpoints' steps, newest first (Orbax renames a checkpoint into place when complete)."""
    if not os.path.isdir(checkpoints_dir):
        return []
    from orbax.checkpoint.path import step as step_lib
    return sorted(step_lib.checkpoint_steps(os.path.abspath(checkpoints_dir)), reverse=True)


def short_reason(error: BaseException) -> str:
    """The first line of an error's root cause (Orbax's errors can run to pages), for a one-line report."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:  # the innermost says what broke
        error = error.__cause__
        seen.add(id(error))
    text = str(error).split(" See full TensorStore details")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def quiet_reads_of_failed_restores() -> None:
    """When a restore fails, the reads it had started still finish, on TensorStore's threads, and try to hand
    their results to the asyncio loop Orbax has closed by then: `RuntimeError: Event loop is closed`, reported
    through sys.unraisablehook, often hundreds of times and seconds later. A failed restore is reported in one
    line already, so those are dropped; every other unraisable exception reaches the previous hook. Dropping
    them early matters beyond the noise: a hook written in Python (pytest's, IPython's) formats each traceback
    on TensorStore's thread, and Python 3.11's traceback formatting parses source with `ast`, whose state is
    shared by all threads, so a `compile`/`ast.parse` running meanwhile on the main thread fails with
    "SystemError: AST constructor recursion depth mismatch"."""
    previous = sys.unraisablehook
    if getattr(previous, "quiet_closed_loop", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.quiet_closed_loop = True
    sys.unraisablehook = hook


def restore_newest(checkpoints_dir: str, restore: Callable[[int], T], steps: Optional[list[int]] = None,
                   on_skip: Optional[Callable[[int, BaseException], None]] = None,
                   report: Optional[Callable[[str], None]] = None) -> tuple[T, int]:
    """(restore(step), step) for the newest step whose restore succeeds; one line per failed step, through
    `report` (default: a logged warning).

    Raises NoRestorableCheckpointError naming the folders when none restores (ValueError when there is none).
    """
    steps = checkpoint_steps(checkpoints_dir) if steps is None else steps
    if not steps:
        raise ValueError(f"{checkpoints_dir} holds no finished checkpoint yet")
    failures = []
    quiet_reads_of_failed_restores()  # before the first attempt: late reads may arrive as soon as one fails
    for step in steps:
        try:
            return restore(step), step
        except Exception as error:  # pylint: disable=broad-except  # any way a checkpoint can be broken
            failures.append((step, error))
            older = [s for s in steps if s < step]
            (report or log.warning)(
                f"checkpoint step {step} in {checkpoints_dir} could not be restored ({short_reason(error)}); "
                + (f"trying step {older[0]}" if older else "no older checkpoint"))
            if on_skip is not None:
                on_skip(step, error)
    folders = ", ".join(os.path.join(checkpoints_dir, str(step)) for step, _ in failures)
    raise NoRestorableCheckpointError(
        f"no checkpoint in {checkpoints_dir} can be restored: {folders} "
        f"(newest: {short_reason(failures[0][1])})")


def read_model_config(workdir: str):
    from elip_jax.models.config import config_from_dict
    with open(os.path.join(workdir, MODEL_CONFIG_FILE)) as f:
        return config_from_dict(json.load(f))


def write_reduction(workdir: str, schedule) -> None:
    """Saves the schedule a run trains with (a ReductionSchedule, or None for none), atomically."""
    from elip_jax.checkpoints.params import schedule_options
    from elip_jax.fileio import atomic_write_json
    atomic_write_json(os.path.join(workdir, REDUCTION_FILE), schedule_options(schedule))


def read_reduction(workdir: str):
    """The saved schedule's make_schedule options, or None (saved without reduction, or an older workdir)."""
    path = os.path.join(workdir, REDUCTION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        options = json.load(f)
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"{path} must hold a JSON object of schedule options (or null); got {options!r}")
    return options


def restore_params(step_dir: str) -> dict:
    """The parameters of one checkpoint as host float32 numpy arrays, whatever devices wrote it; nothing else
    of the train state is read."""
    import jax
    import orbax.checkpoint as ocp
    from etils import epath
    state_dir = os.path.abspath(os.path.join(step_dir, "state"))
    handler = ocp.PyTreeCheckpointHandler()  # the item's handler: the step's own metadata lives a level up
    try:
        metadata = handler.metadata(epath.Path(state_dir))
        tree = getattr(metadata, "tree", metadata)
        if not isinstance(tree, dict) or "params" not in tree:
            raise ValueError(f"{state_dir} holds no 'params' (top-level keys: "
                             f"{sorted(tree) if isinstance(tree, dict) else type(tree).__name__})")
        params_metadata = {"params": tree["params"]}
        as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_metadata)
        restored = handler.restore(epath.Path(state_dir), args=ocp.args.PyTreeRestore(
            item=params_metadata, restore_args=as_numpy, partial_restore=True))
    finally:
        handler.close()
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), restored["params"])


def load_workdir(workdir: str, step: Optional[int] = None, reduction=None, seed: int = 0, **overrides):
    """(model, {'params': ...}, step) from a workdir's newest restorable (or given) checkpoint; only the
    parameters are read.

    reduction: None restores the schedule the workdir trained with (reduction.json; unpruned when absent);
    else as in `create_model`: the backbone is kept, parameters the new schedule's method owns come from the
    checkpoint when it has them, else are initialised with `seed`. overrides: CLIPConfig runtime fields such as
    dtype='bfloat16'.
    """
    from elip_jax.checkpoints.params import fit_variables
    from elip_jax.models.clip import CLIP, keeping_tokens, schedule_for
    if not is_workdir(workdir):
        raise ValueError(f"{workdir!r} is not a training workdir: expected {MODEL_CONFIG_FILE} and "
                         f"{CHECKPOINTS_DIR}/ as written by `python -m elip_jax.train`")
    config = read_model_config(workdir)
    if overrides:
        if "dtype" in overrides:
            from elip_jax.models.config import resolve_dtype
            overrides["dtype"] = resolve_dtype(overrides["dtype"])
        config = config.replace(**overrides)
    checkpoints_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    steps = checkpoint_steps(checkpoints_dir)
    if step is not None:
        if step not in steps:
            raise ValueError(f"{workdir!r} has no checkpoint of step {step} (it has {sorted(steps) or 'none'})")
        steps = [step]
    elif not steps:
        raise ValueError(f"{workdir!r} has no finished checkpoint yet")
    params, step = restore_newest(checkpoints_dir, lambda s: restore_params(os.path.join(checkpoints_dir, str(s))),
                                  steps)
    saved = schedule_for(config, read_reduction(workdir))
    model = CLIP(config, saved if reduction is None else schedule_for(config, keeping_tokens(reduction, saved)))
    return model, fit_variables(model, {"params": params}, seed), step
