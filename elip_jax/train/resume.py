"""What a run finds in its workdir: whether it may resume there, and the records it keeps of what it trained.

A workdir holds one training run. Resuming it with another architecture, loss, batch size or token reduction
would mix two experiments (or fail inside Orbax after the records were overwritten), so that is refused before
anything is written, naming the fields. Other keys (num_steps, lr, eval or logging settings, data_dir) may
change on a resume: config.json keeps the settings the run started with and config_history.jsonl one line per
resume that changed any, so the record of what earlier steps were trained with is never rewritten.
"""
from __future__ import annotations

import json
import os
import tempfile

from elip_jax.checkpoints.workdir import (CHECKPOINTS_DIR, CONFIG_FILE, CONFIG_HISTORY_FILE, MODEL_CONFIG_FILE,
                                          checkpoint_steps)
from elip_jax.fileio import atomic_write_json

# Training-config keys that define the experiment; with the architecture's fields (model_config.json), a
# resume must not change them.
IDENTITY_KEYS = ("model.name", "loss", "batch_size", "reduction.method", "reduction.begin_layers",
                 "reduction.keep_ratios", "reduction.mix")
RUNTIME_MODEL_FIELDS = ("dtype", "remat")  # how the architecture runs, not what it is


def as_json(document):
    """The document as it reads back from JSON (tuples become lists), for comparing against the files."""
    return json.loads(json.dumps(document, default=float))


def flatten(document: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_writable(workdir: str) -> None:
    """Creates the workdir if needed; OSError naming it if it cannot hold files."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise OSError(f"--workdir {workdir!r} is not a writable directory ({error.strerror or error})") from None


def has_checkpoints(workdir: str) -> bool:
    return bool(checkpoint_steps(os.path.join(workdir, CHECKPOINTS_DIR)))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def current_config(workdir: str) -> dict:
    """The training config of the latest start: config.json updated by config_history.jsonl."""
    config = read_json(os.path.join(workdir, CONFIG_FILE))
    history = os.path.join(workdir, CONFIG_HISTORY_FILE)
    if os.path.exists(history):
        with open(history) as f:
            for line in f:
                if line.strip():
                    config = json.loads(line)["config"]
    return config


def resume_differences(workdir: str, config: dict, model_config: dict) -> list[str]:
    """'field (was X, now Y)' for every experiment-defining field that differs from the workdir's records."""
    differences = []
    model_path = os.path.join(workdir, MODEL_CONFIG_FILE)
    if os.path.exists(model_path):
        recorded, new = read_json(model_path), as_json(model_config)
        for field in sorted(set(recorded) | set(new)):
            if field not in RUNTIME_MODEL_FIELDS and recorded.get(field) != new.get(field):
                differences.append(f"model {field} (was {recorded.get(field)!r}, now {new.get(field)!r})")
    if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        recorded, new = flatten(current_config(workdir)), flatten(as_json(config))
        for key in IDENTITY_KEYS:
            if recorded.get(key) != new.get(key):
                differences.append(f"{key} (was {recorded.get(key)!r}, now {new.get(key)!r})")
    return differences


def check_resumable(workdir: str, config: dict, model_config: dict) -> None:
    """ValueError naming the differing fields when the workdir's checkpoints were trained as another
    experiment; reads only, so a refused resume leaves the workdir as it was."""
    if not has_checkpoints(workdir):
        return
    differences = resume_differences(workdir, config, model_config)
    if differences:
        raise ValueError(f"cannot resume {workdir}: its checkpoints were trained with a different "
                         f"{'; '.join(differences)}. Nothing was written: use a new --workdir, or the workdir's "
                         f"own settings (its {CONFIG_FILE} and {MODEL_CONFIG_FILE})")


def write_records(workdir: str, config: dict, model_config: dict, start_step: int) -> None:
    """A fresh run writes config.json and model_config.json; a resumed one appends what changed, if anything,
    to config_history.jsonl. Call after check_resumable and a successful restore."""
    config, model_config = as_json(config), as_json(model_config)
    config_path = os.path.join(workdir, CONFIG_FILE)
    if start_step == 0 or not os.path.exists(config_path):  # nothing trained yet is kept: a fresh record
        atomic_write_json(config_path, config)
        atomic_write_json(os.path.join(workdir, MODEL_CONFIG_FILE), model_config)
        history = os.path.join(workdir, CONFIG_HISTORY_FILE)
        if os.path.exists(history):
            os.remove(history)
        return
    if not os.path.exists(os.path.join(workdir, MODEL_CONFIG_FILE)):
        atomic_write_json(os.path.join(workdir, MODEL_CONFIG_FILE), model_config)
    before, after = flatten(current_config(workdir)), flatten(config)
    changed = {key: [before.get(key), after.get(key)] for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)}
    if changed:
        with open(os.path.join(workdir, CONFIG_HISTORY_FILE), "a") as f:
            f.write(json.dumps({"resumed_from_step": start_step, "changed": changed, "config": config}) + "\n")
