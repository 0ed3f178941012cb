"""The elip_jax converted-checkpoint folder: an Orbax param tree, the architecture and the reduction schedule.

    DIR/config.json   {"format": "elip_jax-clip", "format_version": 2, "config": {CLIPConfig fields},
                       "reduction": {make_schedule options: method, begin_layers, keep, r, protected, mix},
                       "provenance": {where the weights came from and how they were converted}}
    DIR/params/       Orbax checkpoint of the param tree {'visual': ..., 'text': ..., 'logit_scale': ...}, the
                      parameters of the schedule's method included (a scorer's, learnable tokens)

Written by `python -m elip_jax.convert` (and by anyone through `save_pretrained`), read by the one loader
(elip_jax.checkpoints.load). Version 1 folders (no "reduction") load as unpruned.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from elip_jax.checkpoints.params import check_param_shapes, schedule_options
from elip_jax.fileio import atomic_directory

ELIP_JAX_FORMAT = "elip_jax-clip"
FORMAT_VERSION = 2
CONFIG_JSON = "config.json"
PARAMS_DIR = "params"
FILES = (CONFIG_JSON, PARAMS_DIR)  # what a converted folder holds
RUNTIME_OPTIONS = ("dtype", "remat")  # what may differ at load time without touching any shape


class CheckpointError(ValueError):
    """A checkpoint folder cannot be read (not one, a newer format, truncated) or its parameters do not fit."""


def save_pretrained(directory, params: dict, config, provenance: Optional[dict] = None, overwrite: bool = False,
                    reduction=None):
    """Writes DIR atomically (folders 0755, files 0644). params: the param tree (with or without the
    {'params': ...} wrapper), checked against CLIP(config) with `reduction` (a method name, a dict of
    make_schedule options or a ReductionSchedule; None: no reduction), which is saved with it."""
    import jax
    import orbax.checkpoint as ocp
    from elip_jax.models.clip import schedule_for
    params = params.get("params", params)
    schedule = schedule_for(config, reduction)
    check_param_shapes(params, config, schedule, error=CheckpointError)
    document = {"format": ELIP_JAX_FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
                "reduction": schedule_options(schedule), "provenance": provenance or {}}
    with atomic_directory(directory, overwrite) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, jax.tree.map(np.asarray, params))
        checkpointer.wait_until_finished()
        (tmp / CONFIG_JSON).write_text(json.dumps(document, indent=2) + "\n")
    return Path(directory)


def read_document(directory) -> dict:
    """config.json of a converted folder, checked to be one this elip_jax reads."""
    path = Path(directory) / CONFIG_JSON
    if not path.exists():
        raise CheckpointError(f"{directory} is not an elip_jax checkpoint: it has no {CONFIG_JSON}")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path} is not an elip_jax checkpoint config (a JSON {type(document).__name__})")
    if document.get("format") != ELIP_JAX_FORMAT:
        raise CheckpointError(f"{path} is not an elip_jax checkpoint config (format "
                              f"{document.get('format')!r}, expected {ELIP_JAX_FORMAT!r}); convert the "
                              "checkpoint first with python -m elip_jax.convert")
    if document.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {document['format_version']}; this elip_jax "
                              f"reads up to {FORMAT_VERSION}")
    return document


def read_config(directory):
    """(CLIPConfig, provenance) of a converted checkpoint folder."""
    from elip_jax.models.config import config_from_dict
    document = read_document(directory)
    try:
        return config_from_dict(document["config"]), document.get("provenance", {})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{Path(directory) / CONFIG_JSON} holds no valid model config "
                              f"({type(err).__name__}: {err})") from None


def read_reduction(directory) -> Optional[dict]:
    """The saved schedule's make_schedule options (None: saved without reduction, or a version 1 folder)."""
    reduction = read_document(directory).get("reduction")
    if reduction is not None and not isinstance(reduction, dict):
        raise CheckpointError(f"{Path(directory) / CONFIG_JSON}: 'reduction' must be a JSON object of schedule "
                              f"options; got {reduction!r}")
    return reduction


def load_params(directory) -> dict:
    """The param tree (no 'params' wrapper), float32 numpy arrays, restored without a target."""
    import jax
    import orbax.checkpoint as ocp
    path = (Path(directory) / PARAMS_DIR).absolute()
    if not path.exists():
        raise CheckpointError(f"{directory} has no {PARAMS_DIR}/ Orbax checkpoint")
    try:
        restored = ocp.StandardCheckpointer().restore(path)
    except Exception as err:  # pylint: disable=broad-except  # Orbax and tensorstore raise many kinds
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:240]
        raise CheckpointError(f"{path} cannot be restored ({type(err).__name__}: {reason}); the checkpoint is "
                              "truncated or corrupt") from None
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), restored)


def load_pretrained(directory, reduction=None, seed: int = 0, **options):
    """(model, variables) from a converted checkpoint folder.

    variables is {'params': tree} of float32 jax arrays, ready for `model.apply(variables, ...)`.
    reduction: None restores the saved schedule; else as in `create_model` ('none', 'elip', a dict or a
    ReductionSchedule): the backbone is kept, parameters the new schedule's method owns are taken from the
    folder when it has them, else initialised with `seed`; learnable visual tokens are kept unless the new
    options name their own count (`keeping_tokens`). options: the runtime options dtype ('bfloat16', ...)
    and remat. Shape fields cannot change here: re-convert with --image-size to change the resolution.
    """
    import jax
    import jax.numpy as jnp
    from elip_jax.checkpoints.params import fit_variables
    from elip_jax.models.clip import CLIP, keeping_tokens, schedule_for
    from elip_jax.models.config import resolve_dtype
    config, _ = read_config(directory)
    unknown = set(options) - set(RUNTIME_OPTIONS)
    if unknown:
        raise ValueError(f"load_pretrained accepts only {RUNTIME_OPTIONS} as options, got {sorted(unknown)}; "
                         "shapes are fixed by the checkpoint (use --image-size when converting)")
    if "dtype" in options:
        options["dtype"] = resolve_dtype(options["dtype"])
    config = config.replace(**options) if options else config
    saved = schedule_for(config, read_reduction(directory))
    params = load_params(directory)
    check_param_shapes(params, config, saved, error=CheckpointError)
    model = CLIP(config, saved if reduction is None else schedule_for(config, keeping_tokens(reduction, saved)))
    variables = fit_variables(model, {"params": params}, seed)
    return model, jax.tree.map(jnp.asarray, variables)
