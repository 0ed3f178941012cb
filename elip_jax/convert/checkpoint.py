"""elip_jax's converted-checkpoint folder: an Orbax param tree plus config.json.

    DIR/config.json   {"format": "elip_jax-clip", "format_version": 1, "config": {CLIPConfig fields},
                       "provenance": {where the weights came from and how they were converted}}
    DIR/params/       Orbax checkpoint of the param tree {'visual': ..., 'text': ..., 'logit_scale': ...}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from elip_jax.convert.atomic import atomic_directory
from elip_jax.convert.errors import ConversionError
from elip_jax.convert.readers import ELIP_JAX_FORMAT
from elip_jax.models.clip import CLIP, schedule_for
from elip_jax.models.config import CLIPConfig, config_from_dict, resolve_dtype

FORMAT_VERSION = 1
PARAMS_DIR = "params"
RUNTIME_OPTIONS = ("dtype", "remat")  # what may differ at load time without touching any shape


def save_pretrained(directory, params: dict, config: CLIPConfig, provenance: Optional[dict] = None,
                    overwrite: bool = False) -> Path:
    """Writes DIR atomically. params: the param tree (with or without the {'params': ...} wrapper)."""
    import orbax.checkpoint as ocp
    params = params.get("params", params)
    check_param_shapes(params, config)
    document = {"format": ELIP_JAX_FORMAT, "format_version": FORMAT_VERSION,
                "config": config.to_dict(), "provenance": provenance or {}}
    with atomic_directory(directory, overwrite) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, jax.tree.map(np.asarray, params))
        checkpointer.wait_until_finished()
        (tmp / "config.json").write_text(json.dumps(document, indent=2) + "\n")
    return Path(directory)


def read_config(directory) -> tuple[CLIPConfig, dict]:
    """(config, provenance) of a converted checkpoint folder."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise ConversionError(f"{directory} is not an elip_jax checkpoint: it has no config.json")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise ConversionError(f"{path} is not an elip_jax checkpoint config (a JSON {type(document).__name__})")
    if document.get("format") != ELIP_JAX_FORMAT:
        raise ConversionError(f"{path} is not an elip_jax checkpoint config (format "
                              f"{document.get('format')!r}, expected {ELIP_JAX_FORMAT!r}); convert the "
                              "checkpoint first with python -m elip_jax.convert")
    if document.get("format_version", 0) > FORMAT_VERSION:
        raise ConversionError(f"{path} has format_version {document['format_version']}; this elip_jax "
                              f"reads up to {FORMAT_VERSION}")
    try:
        return config_from_dict(document["config"]), document.get("provenance", {})
    except (KeyError, TypeError, ValueError) as err:
        raise ConversionError(f"{path} holds no valid model config ({type(err).__name__}: {err})") from None


def load_params(directory) -> dict:
    """The param tree (no 'params' wrapper), float32 numpy arrays, restored without a target."""
    import orbax.checkpoint as ocp
    path = (Path(directory) / PARAMS_DIR).absolute()
    if not path.exists():
        raise ConversionError(f"{directory} has no {PARAMS_DIR}/ Orbax checkpoint")
    try:
        restored = ocp.StandardCheckpointer().restore(path)
    except Exception as err:  # pylint: disable=broad-except  # Orbax and tensorstore raise many kinds
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:240]
        raise ConversionError(f"{path} cannot be restored ({type(err).__name__}: {reason}); the checkpoint is "
                              "truncated or corrupt") from None
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), restored)


def load_pretrained(directory, reduction=None, **options) -> tuple[CLIP, dict]:
    """(model, variables) from a converted checkpoint folder.

    variables is {'params': tree} of float32 jax arrays, ready for `model.apply(variables, ...)`.
    reduction: as in `create_model` ('elip', 'evit', a dict or a ReductionSchedule); options: the runtime
    options dtype ('bfloat16', ...) and remat. Shape fields cannot change here: re-convert with
    --image-size to change the resolution.
    """
    config, _ = read_config(directory)
    unknown = set(options) - set(RUNTIME_OPTIONS)
    if unknown:
        raise ValueError(f"load_pretrained accepts only {RUNTIME_OPTIONS} as options, got {sorted(unknown)}; "
                         "shapes are fixed by the checkpoint (use --image-size when converting)")
    if "dtype" in options:
        options["dtype"] = resolve_dtype(options["dtype"])
    config = config.replace(**options) if options else config
    params = load_params(directory)
    check_param_shapes(params, config)
    model = CLIP(config, schedule_for(config, reduction))
    return model, {"params": jax.tree.map(jnp.asarray, params)}


def expected_param_shapes(config: CLIPConfig) -> dict:
    """{'a/b/c': shape} of the model's params, from an abstract init (no memory, no compute)."""
    model = CLIP(config)
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, config.context_length), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
    return flat_shapes(abstract)


def flat_shapes(tree: dict) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf)) for path, leaf in leaves}


def check_param_shapes(params: dict, config: CLIPConfig):
    """Raises ConversionError naming every param that is missing, extra or of the wrong shape."""
    expected, found = expected_param_shapes(config), flat_shapes(params)
    problems = [f"missing {k} {v}" for k, v in expected.items() if k not in found]
    problems += [f"unexpected {k} {v}" for k, v in found.items() if k not in expected]
    problems += [f"{k}: found {found[k]}, expected {v}" for k, v in expected.items()
                 if k in found and found[k] != v]
    if problems:
        more = f" ... ({len(problems)} in all)" if len(problems) > 8 else ""
        raise ConversionError("the parameters do not fit the architecture "
                              f"{config.to_dict()}:\n  " + "\n  ".join(problems[:8]) + more)
