"""Hugging Face `CLIPModel` layout <-> OpenAI/open_clip layout, for both weights and config.json.

HF splits the fused QKV projection into q/k/v and stores both projections as bias-free Linear layers
([embed, width]); everything else is a renaming. Conversion to and from elip_jax goes through the OpenAI
layout (openai_layout.py), so this module only knows HF's names.
"""
from __future__ import annotations

import re

import numpy as np

from elip_jax.convert.errors import ConversionError
from elip_jax.convert.openai_layout import is_non_weight
from elip_jax.models.config import CLIPConfig

HF_PREFIXES = ("vision_model.", "text_model.", "visual_projection.", "text_projection.weight")
_TOWERS = {"vision_model": "visual.transformer", "text_model": "transformer"}
# (HF name inside an encoder layer, OpenAI name inside a resblock); q/k/v are handled apart.
_BLOCK_NAMES = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
_LAYER_NORMS = {"vision_model.pre_layrnorm": "visual.ln_pre", "vision_model.post_layernorm": "visual.ln_post",
                "text_model.final_layer_norm": "ln_final"}  # 'layrnorm' is HF's spelling
_PLAIN = {"vision_model.embeddings.class_embedding": "visual.class_embedding",
          "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
          "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
          "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
          "text_model.embeddings.position_embedding.weight": "positional_embedding",
          "logit_scale": "logit_scale"}
_PROJECTIONS = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}


def is_hf_layout(state_dict: dict) -> bool:
    return any(k.startswith(HF_PREFIXES) for k in state_dict)


def _renames() -> dict[str, str]:
    names = dict(_PLAIN)
    for hf, oa in _LAYER_NORMS.items():
        names[f"{hf}.weight"], names[f"{hf}.bias"] = f"{oa}.weight", f"{oa}.bias"
    return names


def hf_to_openai(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF CLIPModel weights -> OpenAI layout. Unknown HF keys are kept under their HF name, so the
    OpenAI-layout check reports them as unexpected."""
    out, qkv = {}, {}
    renames = _renames()
    layer = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state_dict.items():
        if is_non_weight(key):
            continue
        if key in renames:
            out[renames[key]] = value
        elif key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = np.asarray(value).T  # HF Linear [embed, width] -> OpenAI [width, embed]
        elif match := layer.match(key):
            tower, index, name, kind = match.groups()
            block = f"{_TOWERS[tower]}.resblocks.{index}"
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((block, kind), {})[name[len("self_attn.")]] = value
            else:
                oa = dict(_BLOCK_NAMES).get(name)
                out[f"{block}.{oa}.{kind}" if oa else key] = value
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"{block}: HF attention {kind} has only {sorted(parts)} of q, k, v projections")
        out[f"{block}.attn.in_proj_{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def openai_to_hf(state_dict: dict[str, np.ndarray], config: CLIPConfig) -> dict[str, np.ndarray]:
    """OpenAI layout -> HF CLIPModel weights (the exact inverse of `hf_to_openai`)."""
    out = {hf: state_dict[oa] for hf, oa in _renames().items()}
    for hf, oa in _PROJECTIONS.items():
        out[hf] = np.array(state_dict[oa].T, order="C")
    for tower, layers in (("vision_model", config.vision_layers), ("text_model", config.text_layers)):
        for i in range(layers):
            hf_block, oa_block = f"{tower}.encoder.layers.{i}", f"{_TOWERS[tower]}.resblocks.{i}"
            for hf, oa in _BLOCK_NAMES:
                for kind in ("weight", "bias"):
                    out[f"{hf_block}.{hf}.{kind}"] = state_dict[f"{oa_block}.{oa}.{kind}"]
            for kind in ("weight", "bias"):
                q, k, v = np.split(state_dict[f"{oa_block}.attn.in_proj_{kind}"], 3, axis=0)
                for name, part in zip("qkv", (q, k, v)):
                    out[f"{hf_block}.self_attn.{name}_proj.{kind}"] = np.array(part, order="C")
    return out


def stated_by_hf_config(hf_config: dict) -> dict:
    """{field: (value, 'HF config.json')} for what tensors cannot show (heads, activation)."""
    if hf_config.get("model_type") not in (None, "clip"):
        raise ConversionError(f"config.json has model_type {hf_config.get('model_type')!r}; only 'clip' "
                              "(transformers.CLIPModel) is supported")
    text, vision = hf_config.get("text_config") or {}, hf_config.get("vision_config") or {}
    hints = {}
    if "num_attention_heads" in vision:
        hints["vision_heads"] = int(vision["num_attention_heads"])
    if "num_attention_heads" in text:
        hints["text_heads"] = int(text["num_attention_heads"])
    acts = {cfg.get("hidden_act", "quick_gelu") for cfg in (text, vision)}
    if len(acts) != 1:
        raise ConversionError(f"the HF config uses different activations in the two towers ({sorted(acts)}); "
                              "elip_jax uses one activation for both")
    act = acts.pop()
    if act not in ("quick_gelu", "gelu"):
        raise ConversionError(f"HF hidden_act {act!r} is not supported; expected 'quick_gelu' or 'gelu'")
    hints["activation"] = act
    hints = {field: (value, "HF config.json") for field, value in hints.items()}
    for cfg, tower in ((text, "text"), (vision, "vision")):
        eps = cfg.get("layer_norm_eps", 1e-5)
        if abs(eps - 1e-5) > 1e-12:
            raise ConversionError(f"HF {tower} layer_norm_eps is {eps}; elip_jax's CLIP uses 1e-5")
    return hints


def hf_config_for(config: CLIPConfig, logit_scale: float) -> dict:
    """A transformers `CLIPConfig` dict for this architecture (written as config.json)."""
    common = {"hidden_act": config.activation, "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
              "initializer_range": 0.02, "initializer_factor": 1.0, "projection_dim": config.embed_dim}
    text = {**common, "model_type": "clip_text_model", "hidden_size": config.text_width,
            "intermediate_size": int(config.text_width * config.mlp_ratio),
            "num_hidden_layers": config.text_layers, "num_attention_heads": config.text_heads,
            "max_position_embeddings": config.context_length, "vocab_size": config.vocab_size,
            # eos 49407 (not the legacy 2) makes HF pool at the first EOT, which is open_clip's argmax
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
    vision = {**common, "model_type": "clip_vision_model", "hidden_size": config.vision_width,
              "intermediate_size": int(config.vision_width * config.mlp_ratio),
              "num_hidden_layers": config.vision_layers, "num_attention_heads": config.vision_heads,
              "image_size": config.image_size, "patch_size": config.patch_size, "num_channels": 3}
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
            "logit_scale_init_value": float(logit_scale), "initializer_factor": 1.0,
            "text_config": text, "vision_config": vision, "torch_dtype": "float32"}
