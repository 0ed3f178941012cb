"""What one checkpoint learned on top of a backbone, laid over another copy of that backbone.

A predictor (the parameters of a reduction method) and learnable tokens are trained with CLIP frozen, and saved as
a whole model (elip_jax.checkpoints.folder format). To use them with a model of `--pretrained`, only the
parameters that are not the backbone's are taken: the method's own (params['visual']['reduction_scorer']) and the
learnable tokens (visual, deep, text context). Which parameters those are is found by building the models, never
by name: the backbone is every parameter of the same architecture without tokens and without reduction.
"""
from __future__ import annotations

import os

from elip_jax.checkpoints.params import _abstract_params, _flatten, _unflatten, flat_shapes, without_tokens


class OverlayError(ValueError):
    """The overlay cannot be made: the source holds nothing to lay over, or it does not fit (one line)."""


def _backbone_shapes(config) -> dict:
    from elip_jax.models.clip import CLIP
    return flat_shapes(_abstract_params(CLIP(without_tokens(config))))


def _token_shapes(config, protected: int) -> dict:
    """The learnable tokens' parameters of `config` with `protected` visual tokens (no reduction method)."""
    from elip_jax.models.clip import CLIP, schedule_for
    shapes = flat_shapes(_abstract_params(CLIP(config, schedule_for(config, {"method": "none",
                                                                              "protected": protected}))))
    backbone = _backbone_shapes(config)
    return {k: v for k, v in shapes.items() if k not in backbone}


def method_parameter_names(model) -> list:
    """The parameters `model`'s reduction method owns (a scorer's), neither backbone nor learnable tokens."""
    wanted = flat_shapes(_abstract_params(model))
    backbone = _backbone_shapes(model.config)
    tokens = _token_shapes(model.config, model.reduction.protected)
    return sorted(k for k in wanted if k not in backbone and k not in tokens)


def overlay(model, variables: dict, source: str, reduction=None, *, require_method_params: bool = True,
            flag: str = "--predictor"):
    """(model, variables) with what `source` (a converted folder or a workdir) learned on top of the backbone.

    reduction: the schedule to run (a name, a dict of make_schedule options, a ReductionSchedule); None, or options
    naming only the method `source` was saved with: `source`'s own schedule. Learnable tokens come from `source` when it has them (their count, deep flag and
    text context with them), else stay `model`'s. The method's parameters come from `source`;
    require_method_params: refuse when `source` has none for the method (or the method has none at all).
    The backbone stays `variables`'. Raises OverlayError (one line, naming `flag`) when nothing fits.
    """
    import jax.numpy as jnp
    from elip_jax.checkpoints.loading import load
    from elip_jax.models.clip import CLIP, keeping_tokens, schedule_for

    if not os.path.isdir(source):
        raise OverlayError(f"{flag} {source!r} is not a directory (a folder written by train-predictor or "
                           "tune-tokens)")
    try:
        source_model, source_variables, _ = load(source)
    except ValueError as error:
        raise OverlayError(f"{flag} {source}: {str(error).splitlines()[0]}") from None
    mine, theirs = _backbone_shapes(model.config), _backbone_shapes(source_model.config)
    if mine != theirs:
        different = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise OverlayError(f"{flag} {source} was trained on another architecture: {len(different)} backbone "
                           f"parameter(s) differ, e.g. {different[0]} {theirs.get(different[0])} there, "
                           f"{mine.get(different[0])} here")
    tokens_from = source_model if source_model.reduction.protected else model
    config = model.config.replace(
        deep_visual_tokens=tokens_from.config.deep_visual_tokens,
        text_context_tokens=(source_model.config.text_context_tokens or model.config.text_context_tokens))
    if reduction is None or (isinstance(reduction, dict) and set(reduction) == {"method"}
                             and reduction["method"] == source_model.reduction.method):
        base = source_model.reduction  # the layer and keep count the predictor was trained for
    else:
        base = reduction
    try:
        schedule = schedule_for(config, keeping_tokens(base, tokens_from.reduction))
    except ValueError as error:
        raise OverlayError(f"{flag} {source}: {str(error).splitlines()[0]}") from None
    new_model = CLIP(config, schedule)
    method_params = method_parameter_names(new_model)
    if require_method_params and not method_params:
        raise OverlayError(f"{flag} gives a reduction method's learned parameters, but {schedule.method!r} has "
                           "none (use a method with a learned scorer)")
    wanted = flat_shapes(_abstract_params(new_model))
    ours, there = _flatten(variables.get("params", variables)), _flatten(source_variables["params"])
    absent = [k for k in method_params if k not in there]
    if require_method_params and absent:
        raise OverlayError(f"{flag} {source} holds no parameters of {schedule.method!r}'s scorer (missing "
                           f"{absent[0]}{f' and {len(absent) - 1} more' if len(absent) > 1 else ''}): it is not a "
                           "trained predictor for this method")
    merged = {}
    for key, shape in wanted.items():
        if key in mine:
            value = ours[key]
        elif key in there:
            value = there[key]
        elif key in ours:
            value = ours[key]
        else:
            raise OverlayError(f"neither --pretrained nor {flag} {source} holds {key} {shape}")
        if tuple(value.shape) != tuple(shape):
            raise OverlayError(f"{flag} {source}: {key} has shape {tuple(value.shape)}, the model needs "
                               f"{tuple(shape)} (trained for another patch count or token count)")
        merged[key] = jnp.asarray(value)
    return new_model, {"params": _unflatten(merged)}
