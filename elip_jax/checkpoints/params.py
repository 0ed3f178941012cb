"""Parameter trees against architectures: the shapes a model expects, and variables fitted to a new schedule.

A token-reduction method may own parameters (a scorer's, learnable tokens that are never pruned): they live in
the model's tree wherever the model built with that schedule creates them. So every shape check builds the model
WITH its schedule, and changing the schedule of loaded weights keeps the backbone and deals only with the
parameters the schedules add: "any params under the model's tree that the new model's init creates".
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class ParamShapeError(ValueError):
    """Parameters do not fit an architecture (missing, unexpected or wrongly shaped entries)."""


def flat_shapes(tree: dict) -> dict:
    """{'a/b/c': shape} of a param tree (no 'params' wrapper)."""
    import jax
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf)) for path, leaf in leaves}


def _abstract_params(model) -> dict:
    import jax
    import jax.numpy as jnp
    c = model.config
    images = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, c.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]


def expected_param_shapes(config, reduction=None) -> dict:
    """{'a/b/c': shape} of the params of CLIP(config) with `reduction` (None: no reduction; a method name, a dict
    of make_schedule options or a ReductionSchedule), from an abstract init (no memory, no compute). A method
    with parameters adds them."""
    from elip_jax.models.clip import CLIP, schedule_for
    return flat_shapes(_abstract_params(CLIP(config, schedule_for(config, reduction))))


def shape_problems(expected: dict, found: dict) -> list[str]:
    problems = [f"missing {k} {v}" for k, v in expected.items() if k not in found]
    problems += [f"unexpected {k} {v}" for k, v in found.items() if k not in expected]
    problems += [f"{k}: found {found[k]}, expected {v}" for k, v in expected.items()
                 if k in found and found[k] != v]
    return problems


def check_param_shapes(params: dict, config, reduction=None, error: type = ParamShapeError) -> None:
    """Raises `error` naming every param that is missing, extra or of the wrong shape for CLIP(config) with
    `reduction` (its schedule's own parameters included)."""
    problems = shape_problems(expected_param_shapes(config, reduction), flat_shapes(params.get("params", params)))
    if problems:
        more = f" ... ({len(problems)} in all)" if len(problems) > 8 else ""
        raise error("the parameters do not fit the architecture "
                    f"{config.to_dict()} with reduction {_describe(config, reduction)}:\n  "
                    + "\n  ".join(problems[:8]) + more)


def _describe(config, reduction) -> str:
    from elip_jax.models.clip import schedule_for
    return repr(schedule_for(config, reduction).options())


def without_tokens(config):
    """The architecture without its learnable tokens (text context, deep visual sets): the backbone's. (The
    visual tokens' count is the schedule's, so a model without reduction has none.)"""
    return config.replace(deep_visual_tokens=False, text_context_tokens=0)


def fit_variables(model, variables: dict, seed: int = 0) -> dict:
    """`variables` fitted to `model` (the same architecture, perhaps another reduction schedule).

    The backbone (every param of the model without reduction and without learnable tokens) must be there with its
    shapes: it is kept as is. Params the model's schedule or its token options add (a scorer's, learnable
    tokens) are taken from `variables` where present with the right shape, else freshly initialised with `seed`;
    params only another schedule had are dropped.
    Raises ParamShapeError when the backbone does not fit.
    """
    import jax
    import jax.numpy as jnp
    from elip_jax.models.clip import CLIP
    params = variables.get("params", variables)
    backbone = flat_shapes(_abstract_params(CLIP(without_tokens(model.config))))
    wanted = flat_shapes(_abstract_params(model))
    found = flat_shapes(params)
    problems = shape_problems(backbone, {k: v for k, v in found.items() if k in backbone})
    if problems:
        raise ParamShapeError("the parameters do not fit the model's backbone:\n  " + "\n  ".join(problems[:8]))
    own = {k for k in wanted if k not in backbone}
    if set(found) == set(wanted) and all(found[k] == wanted[k] for k in own):
        return variables if "params" in variables else {"params": params}
    missing = [k for k in own if found.get(k) != wanted[k]]
    fresh = {}
    if missing:
        c = model.config
        images = jnp.zeros((1, c.image_size, c.image_size, 3), jnp.float32)
        tokens = jnp.zeros((1, c.context_length), jnp.int32)
        fresh = _flatten(jax.jit(model.init)(jax.random.PRNGKey(seed), images, tokens)["params"])
    old = _flatten(params)
    merged = {k: (old[k] if k in old and found[k] == wanted[k] else fresh[k]) for k in wanted}
    return {"params": _unflatten(merged)}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) or hasattr(value, "items"):
            flat.update(_flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def schedule_options(schedule) -> Optional[dict]:
    """The JSON form of a ReductionSchedule saved beside weights: the make_schedule options that rebuild it
    exactly (method, begin layers, exact keep counts, r, protected tokens, mix); None for no reduction."""
    if schedule is None:
        return None
    options = schedule.options()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
