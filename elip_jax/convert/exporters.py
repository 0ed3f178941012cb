"""elip_jax params -> PyTorch-loadable safetensors: a Hugging Face CLIPModel folder or an open_clip state dict."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from elip_jax.convert import hf_layout, openai_layout
from elip_jax.convert.atomic import atomic_directory, atomic_file
from elip_jax.convert.errors import ConversionError
from elip_jax.models.config import CLIPConfig

# transformers refuses safetensors files whose metadata does not name a framework
SAFETENSORS_METADATA = {"format": "pt"}


def _save_safetensors(tensors: dict, path: Path):
    from safetensors.numpy import save_file
    save_file({k: np.array(v, dtype=np.float32, order="C") for k, v in tensors.items()}, str(path),
              metadata=SAFETENSORS_METADATA)


def export_open_clip(params: dict, config: CLIPConfig, output, overwrite: bool = False) -> Path:
    """A .safetensors state dict in the OpenAI/open_clip layout, for
    `open_clip.create_model(name).load_state_dict(safetensors.torch.load_file(output))`."""
    state_dict = openai_layout.from_params(params, config)
    with atomic_file(output, overwrite) as tmp:
        _save_safetensors(state_dict, tmp)
    return Path(output)


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
