"""elip_jax params -> PyTorch: a Hugging Face CLIPModel folder, or an open_clip hub folder.

Both are folders that carry the architecture beside the weights, so they load (in PyTorch, and back here)
with no flags: HF's config.json + model.safetensors, and open_clip's open_clip_config.json +
open_clip_model.safetensors, the layout of open_clip's Hugging Face hub repositories, which
`open_clip.create_model('local-dir:DIR')` (or 'hf-hub:ORG/REPO' once pushed) builds and loads.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from elip_jax.convert import hf_layout, openai_layout
from elip_jax.fileio import atomic_directory, atomic_files
from elip_jax.convert.errors import ConversionError
from elip_jax.convert.readers import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from elip_jax.models.config import CLIPConfig

# transformers refuses safetensors files whose metadata does not name a framework
SAFETENSORS_METADATA = {"format": "pt"}
OPEN_CLIP_FILES = (OPEN_CLIP_WEIGHTS[0], OPEN_CLIP_CONFIG)  # open_clip_model.safetensors, open_clip_config.json


def _save_safetensors(tensors: dict, path: Path):
    from safetensors.numpy import save_file
    save_file({k: np.array(v, dtype=np.float32, order="C") for k, v in tensors.items()}, str(path),
              metadata=SAFETENSORS_METADATA)


def open_clip_config_for(config: CLIPConfig) -> dict:
    """open_clip's open_clip_config.json for this architecture: {'model_cfg': ...} in the layout of open_clip's
    model_configs/*.json. preprocess_cfg is left to open_clip's defaults, which are CLIP's (OpenAI mean/std,
    bicubic resize of the shorter side), as elip_jax's."""
    model_cfg = {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.activation == "quick_gelu",  # written even when False: the activation is stated
        "vision_cfg": {"image_size": config.image_size, "layers": config.vision_layers,
                       "width": config.vision_width, "head_width": config.vision_width // config.vision_heads,
                       "mlp_ratio": config.mlp_ratio, "patch_size": config.patch_size},
        "text_cfg": {"context_length": config.context_length, "vocab_size": config.vocab_size,
                     "width": config.text_width, "heads": config.text_heads, "layers": config.text_layers,
                     "mlp_ratio": config.mlp_ratio},
    }
    if config.init_logit_bias is not None:  # gives open_clip's CLIP its logit_bias parameter
        model_cfg["init_logit_bias"] = config.init_logit_bias
    return {"model_cfg": model_cfg}


def export_open_clip(params: dict, config: CLIPConfig, output, overwrite: bool = False) -> Path:
    """An open_clip hub folder: output/open_clip_model.safetensors + output/open_clip_config.json.

    output may be an existing folder: the two files are written into it (refused if either exists, unless
    overwrite). Load it with `open_clip.create_model('local-dir:' + output)`, or the weights alone with
    `open_clip.create_model(name, pretrained=output + '/open_clip_model.safetensors')`."""
    state_dict = openai_layout.from_params(params, config)
    document = json.dumps(open_clip_config_for(config), indent=2) + "\n"
    output = Path(output)
    weights, config_json = OPEN_CLIP_FILES
    if output.is_dir():
        with atomic_files(output, OPEN_CLIP_FILES, overwrite) as tmp:
            _save_safetensors(state_dict, tmp[weights])
            tmp[config_json].write_text(document)
    else:
        with atomic_directory(output, overwrite) as tmp:
            _save_safetensors(state_dict, tmp / weights)
            (tmp / config_json).write_text(document)
    return output


def export_hf(params: dict, config: CLIPConfig, output, overwrite: bool = False) -> Path:
    """A folder with config.json + model.safetensors for `transformers.CLIPModel.from_pretrained(output)`."""
    if "logit_bias" in params:
        raise ConversionError("this model has a logit_bias (SigLIP-style loss); transformers.CLIPModel has no "
                              "such parameter. Export it with --to open_clip instead")
    state_dict = hf_layout.openai_to_hf(openai_layout.from_params(params, config), config)
    hf_config = hf_layout.hf_config_for(config, float(np.asarray(params["logit_scale"])))
    with atomic_directory(output, overwrite) as tmp:
        _save_safetensors(state_dict, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return Path(output)


EXPORTERS = {"hf": export_hf, "open_clip": export_open_clip}
