"""Orbax checkpoints of the train state and the data iterator, with preemption saves.

A checkpoint holds the whole TrainState (parameters, optimizer state, step, RNG, non-finite counters) and
each process's data-iterator state, so a resumed run reads exactly the batches that would have come next.
Orbax writes every checkpoint to a temporary folder and renames it when complete: a run killed mid-save, or a
save that fails (full disk, unwritable folder), leaves the earlier checkpoints intact. A checkpoint damaged
later (a truncated file, a disk error) is skipped on resume for the newest one that restores, and moved to
WORKDIR/unrestorable_checkpoints/ so the resumed run can save its steps again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from elip_jax.checkpoints.workdir import checkpoint_steps, restore_newest

log = logging.getLogger(__name__)


class DataStateHandler(ocp.CheckpointHandler):
    """Saves each process's data-iterator state (a JSON-able dict) as process_<i>-of-<n>.json."""

    @staticmethod
    def _file(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "DataStateSave"):
        directory.mkdir(parents=True, exist_ok=True)
        self._file(directory).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: Optional["DataStateRestore"] = None) -> dict:
        path = self._file(directory)
        if not path.exists():
            raise ValueError(f"{path} is missing: the checkpoint was written by a different number of "
                             f"processes ({sorted(p.name for p in directory.iterdir())})")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path):
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


class PreemptionFlag:
    """Set by SIGTERM (what schedulers send before preempting); the loop saves and stops at the next step.

    Single-process runs only: with many processes jax's preemption notifier handles SIGTERM, so that every
    process agrees on the step to save at."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
        return self

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def is_set(self) -> bool:
        return self._event.is_set()


class Checkpointer:
    """Periodic asynchronous saves, keep the last N, resume from the latest."""

    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        self._last_saved_step = None
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
                                              item_names=("state", "data"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def restore(self, abstract_state, step: Optional[int] = None):
        """(state, data_state) of `step` (default: the latest), laid out like `abstract_state`'s shardings.

        abstract_state: jax.ShapeDtypeStruct leaves with the shardings of THIS run, so a checkpoint written on
        another number of devices is resharded on restore.
        """
        step = self._manager.latest_step() if step is None else step
        self._last_saved_step = step
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=DataStateRestore()))
        return restored["state"], restored["data"]

    def restore_newest(self, abstract_state, report=log.warning):
        """(state, data_state, step) of the newest checkpoint that restores, or None when there is none.

        Each one that fails is reported in one line (step and why) through `report`, then moved out of the
        way once an older one has restored; NoRestorableCheckpointError (a ValueError) names them all when
        none restores, and nothing is moved then.
        """
        steps = checkpoint_steps(self.directory)
        if not steps:
            return None
        failed = []
        (state, data_state), step = restore_newest(
            self.directory, lambda s: self.restore(abstract_state, s), steps,
            on_skip=lambda s, error: failed.append(s), report=report)
        if failed:
            moved_to = os.path.join(os.path.dirname(self.directory), "unrestorable_checkpoints")
            if jax.process_index() == 0:
                for bad in failed:
                    target = os.path.join(moved_to, str(bad))
                    while os.path.exists(target):
                        target += "-again"
                    os.makedirs(moved_to, exist_ok=True)
                    shutil.move(os.path.join(self.directory, str(bad)), target)
            multihost_utils.sync_global_devices("unrestorable checkpoints moved")
            self._manager.reload()
            report(f"resuming from step {step}: checkpoint step(s) {', '.join(map(str, failed))} could not be "
                   f"restored and were moved to {moved_to}")
        return state, data_state, step

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        """Starts a save (asynchronous); returns False and logs the error if it could not be started.

        A failed save never touches the checkpoints already written.
        """
        if (not force and step % self.every_steps) or step == self._last_saved_step:
            return False
        try:
            self._manager.check_for_errors()  # an earlier asynchronous save may have failed since
        except Exception as error:  # pylint: disable=broad-except
            log.error("an earlier checkpoint save failed: %s; earlier checkpoints are intact", error)
        try:
            started = self._manager.save(step, force=True, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=DataStateSave(data_state)))
        except Exception as error:  # pylint: disable=broad-except
            log.error("checkpoint save at step %d failed: %s; earlier checkpoints are intact", step, error)
            return False
        self._last_saved_step = step
        return started

    def wait(self) -> bool:
        """Blocks until pending saves are on disk; False (logged) if one of them failed."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
            return True
        except Exception as error:  # pylint: disable=broad-except
            log.error("checkpoint save failed: %s; earlier checkpoints are intact", error)
            return False

    def close(self):
        self.wait()
        self._manager.close()
