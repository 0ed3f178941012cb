"""OpenAI / open_clip state-dict layout <-> elip_jax parameter tree: the one place that knows this mapping.

OpenAI's CLIP and open_clip's `CLIP` use the same names (`visual.transformer.resblocks.0.attn.in_proj_weight`
...), and elip_jax's parameters were named after them, so the mapping is a renaming plus a transpose of
torch's [out, in] matrices into Flax's [in, out] kernels (and OIHW -> HWIO for the patch convolution).
Both directions come from the same table, so they are inverses by construction.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from elip_jax.convert.errors import ConversionError
from elip_jax.models.config import CLIPConfig

# Tensors some sources carry that are not weights: OpenAI's TorchScript buffers describing the model,
# and causal-mask / position-id buffers. They are dropped on reading.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
NON_WEIGHT_SUFFIXES = ("attn_mask", "position_ids")


class Transform(NamedTuple):
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Transform(lambda x: x, lambda x: x)
LINEAR = Transform(lambda w: w.T, lambda k: k.T)  # torch [out, in] <-> flax [in, out]
CONV = Transform(lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))  # OIHW <-> HWIO


def _layer_norm(torch_name: str, jax_path: str):
    return [(f"{torch_name}.weight", f"{jax_path}/LayerNorm_0/scale", SAME),
            (f"{torch_name}.bias", f"{jax_path}/LayerNorm_0/bias", SAME)]


def _blocks(torch_prefix: str, jax_prefix: str, layers: int):
    rows = []
    for i in range(layers):
        t, j = f"{torch_prefix}.resblocks.{i}", f"{jax_prefix}/resblocks_{i}"
        rows += _layer_norm(f"{t}.ln_1", f"{j}/ln_1") + _layer_norm(f"{t}.ln_2", f"{j}/ln_2")
        rows += [(f"{t}.attn.in_proj_weight", f"{j}/attn/in_proj_kernel", LINEAR),
                 (f"{t}.attn.in_proj_bias", f"{j}/attn/in_proj_bias", SAME),
                 (f"{t}.attn.out_proj.weight", f"{j}/attn/out_proj/kernel", LINEAR),
                 (f"{t}.attn.out_proj.bias", f"{j}/attn/out_proj/bias", SAME)]
        for fc in ("c_fc", "c_proj"):
            rows += [(f"{t}.mlp.{fc}.weight", f"{j}/mlp/{fc}/kernel", LINEAR),
                     (f"{t}.mlp.{fc}.bias", f"{j}/mlp/{fc}/bias", SAME)]
    return rows


def mapping(config: CLIPConfig) -> list[tuple[str, str, Transform]]:
    """(state-dict key, '/'-joined elip_jax param path under 'params', transform) for every weight."""
    rows = [("visual.conv1.weight", "visual/conv1/kernel", CONV),
            ("visual.class_embedding", "visual/class_embedding", SAME),
            ("visual.positional_embedding", "visual/positional_embedding", SAME),
            ("visual.proj", "visual/proj", SAME),  # OpenAI multiplies x @ proj: already [in, out]
            *_layer_norm("visual.ln_pre", "visual/ln_pre"),
            *_layer_norm("visual.ln_post", "visual/ln_post"),
            *_blocks("visual.transformer", "visual", config.vision_layers),
            ("token_embedding.weight", "text/token_embedding/embedding", SAME),
            ("positional_embedding", "text/positional_embedding", SAME),
            ("text_projection", "text/text_projection", SAME),
            *_layer_norm("ln_final", "text/ln_final"),
            *_blocks("transformer", "text", config.text_layers),
            ("logit_scale", "logit_scale", SAME)]
    if getattr(config, "init_logit_bias", None) is not None:  # open_clip CLIP trained with a SigLIP loss
        rows.append(("logit_bias", "logit_bias", SAME))
    return rows


def is_non_weight(key: str) -> bool:
    return key in NON_WEIGHT_KEYS or key.endswith(NON_WEIGHT_SUFFIXES)


def normalise_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo the wrappers open_clip training checkpoints add: DDP's `module.` prefix and custom-text `text.`."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if "text.token_embedding.weight" in state_dict:  # open_clip CustomTextCLIP with the built-in tower
        state_dict = {k[len("text."):] if k.startswith("text.") else k: v for k, v in state_dict.items()}
    return state_dict


def to_params(state_dict: dict[str, np.ndarray], config: CLIPConfig) -> dict:
    """A nested {'visual': ..., 'text': ..., 'logit_scale': ...} float32 param tree (no 'params' wrapper).

    Raises ConversionError listing every missing key, unexpected key and shape mismatch at once.
    """
    rows = mapping(config)
    missing = [key for key, _, _ in rows if key not in state_dict]
    used = {key for key, _, _ in rows}
    extra = sorted(k for k in state_dict if k not in used and not is_non_weight(k))
    if missing or extra:
        raise ConversionError(_key_report(missing, extra, config))
    params: dict = {}
    for key, path, transform in rows:
        value = np.asarray(transform.to_jax(np.asarray(state_dict[key], dtype=np.float32)))
        if key in ("logit_scale", "logit_bias"):
            value = value.reshape(())  # some open_clip checkpoints store these as shape [1]
        _set(params, path, np.array(value, order="C"))
    return params


def from_params(params: dict, config: CLIPConfig) -> dict[str, np.ndarray]:
    """The inverse of `to_params`: an OpenAI/open_clip state dict of float32 numpy arrays."""
    return {key: np.array(transform.to_torch(np.asarray(_get(params, path), dtype=np.float32)), order="C")
            for key, path, transform in mapping(config)}


def _key_report(missing, extra, config) -> str:
    def sample(keys):
        return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
    lines = [f"the checkpoint's keys do not match an OpenAI/open_clip ViT CLIP with {config.vision_layers} "
             f"vision and {config.text_layers} text blocks:"]
    if missing:
        lines.append(f"  missing: {sample(missing)}")
    if extra:
        lines.append(f"  unexpected: {sample(extra)}")
    return "\n".join(lines)


def _set(tree: dict, path: str, value):
    *parents, leaf = path.split("/")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for name in path.split("/"):
        if not isinstance(tree, dict) or name not in tree:
            raise ConversionError(f"the parameter tree has no {path!r}")
        tree = tree[name]
    return tree
