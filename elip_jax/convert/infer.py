"""Read a CLIP architecture off an OpenAI-layout state dict, and confirm it against a named model.

Tensor shapes fix widths, depths, patch size, resolution, context length, vocabulary and embedding size.
Two things they cannot show: the number of attention heads and the activation. Both come from what the
source states (its HF config.json or open_clip_config.json, a TorchScript archive's activation modules, an
OpenAI release's buffers: see readers.py), from `--activation`, or from `--model`. Heads otherwise follow
OpenAI's rule width // 64 (true of every released OpenAI and open_clip ViT-B/L model, and open_clip's own
default head_width), recorded as a default; the activation is never defaulted: QuickGELU and GELU give
different features from the same weights, so a source that states neither is refused (see the pipeline).
The config records where each came from.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

from elip_jax.convert.errors import ConversionError
from elip_jax.models.config import CLIPConfig, get_config

HEAD_WIDTH = 64
# fields the user may not have meant to change by naming a model: never compared
_NOT_COMPARED = {"dtype", "remat", "init_logit_scale", "init_logit_bias"}
_GUESSABLE = ("vision_heads", "text_heads", "activation")
UNSTATED = "unstated"  # sources[activation] when nothing said it; the pipeline refuses such a config


def _shape(state_dict, key):
    if key not in state_dict:
        if any(k.startswith("visual.layer1.") for k in state_dict):
            raise ConversionError("this is a ResNet CLIP (modified ResNet image tower); only ViT CLIP "
                                  "models can be converted")
        raise ConversionError(f"the checkpoint has no {key!r}; expected an OpenAI/open_clip or Hugging Face "
                              f"ViT CLIP. First keys found: {sorted(state_dict)[:8]}")
    return tuple(state_dict[key].shape)


def _count_blocks(state_dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if not indices:
        raise ConversionError(f"no transformer blocks found under {prefix}.resblocks.*")
    if indices != set(range(len(indices))):
        raise ConversionError(f"{prefix}.resblocks indices are not 0..n-1: found {sorted(indices)}")
    return len(indices)


def _mlp_ratio(state_dict, prefix: str, width: int) -> float:
    hidden = _shape(state_dict, f"{prefix}.resblocks.0.mlp.c_fc.weight")[0]
    return hidden / width


def infer_config(state_dict: dict, stated: Optional[dict] = None) -> tuple[CLIPConfig, dict]:
    """(config, sources). stated: {field: (value, where it was stated)} for what the source's own config
    or the user says (heads, activation); sources records where heads and activation came from."""
    conv = _shape(state_dict, "visual.conv1.weight")
    if len(conv) != 4 or conv[1] != 3 or conv[2] != conv[3]:
        raise ConversionError(f"visual.conv1.weight has shape {conv}; expected [width, 3, patch, patch]")
    vision_width, patch = conv[0], conv[3]
    pos = _shape(state_dict, "visual.positional_embedding")
    grid = math.isqrt(pos[0] - 1) if len(pos) == 2 and pos[0] > 1 else 0
    if grid * grid != pos[0] - 1 or pos[1] != vision_width:
        raise ConversionError(f"visual.positional_embedding has shape {pos}; expected [1 + grid**2, "
                              f"{vision_width}] (a CLS row and a square patch grid)")
    token = _shape(state_dict, "token_embedding.weight")
    text_pos = _shape(state_dict, "positional_embedding")
    text_width = _shape(state_dict, "ln_final.weight")[0]
    text_proj = _shape(state_dict, "text_projection")
    visual_proj = _shape(state_dict, "visual.proj")
    if len(text_proj) != 2 or text_proj[0] != text_width:
        raise ConversionError(f"text_projection has shape {text_proj}; expected [{text_width}, embed_dim]")
    embed_dim = text_proj[1]
    if visual_proj != (vision_width, embed_dim):
        raise ConversionError(f"visual.proj has shape {visual_proj}; expected [{vision_width}, {embed_dim}] "
                              "(vision width x the text projection's embed dim)")
    vision_ratio = _mlp_ratio(state_dict, "visual.transformer", vision_width)
    text_ratio = _mlp_ratio(state_dict, "transformer", text_width)
    if vision_ratio != text_ratio:
        raise ConversionError(f"MLP ratios differ between the towers (vision {vision_ratio}, text {text_ratio}); "
                              "elip_jax's CLIP uses one mlp_ratio")

    fields, sources = {}, {}
    shape_claims = {}  # what a config says about fields the tensors show: checked below, never taken as is
    for field, (value, source) in (stated or {}).items():
        if field in _GUESSABLE:
            fields[field], sources[field] = value, source
        else:
            shape_claims[field] = (value, source)
    for field, width in (("vision_heads", vision_width), ("text_heads", text_width)):
        if field not in fields:
            if width % HEAD_WIDTH:
                raise ConversionError(f"cannot guess {field}: width {width} is not a multiple of {HEAD_WIDTH}; "
                                      "name the architecture with --model")
            fields[field], sources[field] = width // HEAD_WIDTH, f"default (width // {HEAD_WIDTH})"
    if "activation" not in fields:  # a placeholder so a config can be built; confirm_model or the pipeline decide
        fields["activation"], sources["activation"] = "quick_gelu", UNSTATED
    if "logit_bias" in state_dict:  # only its presence matters to the shapes; the value is the weight
        fields["init_logit_bias"] = float(state_dict["logit_bias"].reshape(-1)[0])
    try:
        config = CLIPConfig(
            embed_dim=embed_dim, image_size=patch * grid, patch_size=patch, vision_width=vision_width,
            vision_layers=_count_blocks(state_dict, "visual.transformer"), text_width=text_width,
            text_layers=_count_blocks(state_dict, "transformer"), context_length=text_pos[0],
            vocab_size=token[0], mlp_ratio=vision_ratio, **fields)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"the tensors describe no valid CLIP architecture: {err}") from None
    contradictions = [f"{source} says {field} {value!r}, the tensors have {getattr(config, field)!r}"
                      for field, (value, source) in shape_claims.items()
                      if hasattr(config, field) and value != getattr(config, field)]
    if contradictions:
        raise ConversionError("the checkpoint's config does not describe its tensors: " + "; ".join(contradictions))
    return config, sources


def confirm_model(config: CLIPConfig, sources: dict, name: str, ignore: tuple = ()) -> tuple[CLIPConfig, dict]:
    """Checks the inferred architecture against the named one; fields that were only guessed (heads,
    activation by default) take the named model's values. Raises on any other difference."""
    try:
        named = get_config(name)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    guessed = {f for f in _GUESSABLE if sources.get(f, "").startswith("default") or sources.get(f) == UNSTATED}
    diffs = [f"{f.name}: checkpoint {getattr(config, f.name)!r} ({sources.get(f.name, 'tensors')}), "
             f"{name} {getattr(named, f.name)!r}"
             for f in dataclasses.fields(CLIPConfig)
             if f.name not in _NOT_COMPARED | guessed | set(ignore)
             and getattr(config, f.name) != getattr(named, f.name)]
    if diffs:
        raise ConversionError(f"the checkpoint is not a {name}:\n  " + "\n  ".join(diffs))
    # only now, with the widths known to agree, can the named model's heads be adopted
    sources = {**sources, **{f: f"--model {name}" for f in guessed}}
    return config.replace(**{f: getattr(named, f) for f in guessed}), sources
