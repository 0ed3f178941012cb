"""The two conversions end to end: PyTorch checkpoint -> elip_jax folder, and elip_jax folder -> PyTorch."""
from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Optional

from elip_jax.convert import hf_layout, openai_layout
from elip_jax.convert.checkpoint import check_param_shapes, load_params, read_config, save_pretrained
from elip_jax.convert.errors import ConversionError
from elip_jax.convert.exporters import EXPORTERS
from elip_jax.convert.infer import confirm_model, infer_config
from elip_jax.convert.pos_embed import resize_positional_embedding
from elip_jax.convert.readers import read_checkpoint
from elip_jax.models.config import CLIPConfig

ACTIVATIONS = ("quick_gelu", "gelu")


def params_from_checkpoint(path, model: Optional[str] = None, image_size: Optional[int] = None,
                           activation: Optional[str] = None) -> tuple[dict, CLIPConfig, dict]:
    """(param tree, config, provenance) from any supported PyTorch CLIP checkpoint; writes nothing."""
    source = read_checkpoint(path)
    state_dict = openai_layout.normalise_keys(source.tensors)
    layout = "openai"
    if hf_layout.is_hf_layout(state_dict):
        state_dict, layout = hf_layout.hf_to_openai(state_dict), "hf"
    stated = dict(source.stated)
    if source.container == "torchscript" and "activation" not in stated:
        stated["activation"] = ("quick_gelu", "OpenAI TorchScript release (all use QuickGELU)")
    if activation is not None:
        if activation not in ACTIVATIONS:
            raise ConversionError(f"--activation must be one of {ACTIVATIONS}, got {activation!r}")
        if "activation" in stated and stated["activation"][0] != activation:
            value, where = stated["activation"]
            raise ConversionError(f"--activation {activation} contradicts the checkpoint: {where} says {value}")
        stated["activation"] = (activation, "--activation")
    config, sources = infer_config(state_dict, stated)
    if model is not None:
        config, sources = confirm_model(config, sources, model, ignore=("image_size",) if image_size else ())
    params = openai_layout.to_params(state_dict, config)
    provenance = {"source": str(Path(path).absolute()), "container": source.container, "layout": layout,
                  "files_sha256": {f: _sha256(f) for f in source.files}, "inferred_from": sources,
                  "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if image_size is not None and image_size != config.image_size:
        provenance["positional_embedding_resized"] = {
            "from_image_size": config.image_size, "to_image_size": image_size,
            "method": "bicubic, antialias, align_corners=False, CLS row kept (open_clip resize_pos_embed)"}
        params, config = _resize(params, config, image_size)
    check_param_shapes(params, config)
    return params, config, provenance


def _resize(params: dict, config: CLIPConfig, image_size: int):
    if image_size <= 0 or image_size % config.patch_size:
        raise ConversionError(f"--image-size must be a positive multiple of the patch size {config.patch_size}; "
                              f"got {image_size}")
    config = config.replace(image_size=image_size)
    visual = dict(params["visual"])
    visual["positional_embedding"] = resize_positional_embedding(visual["positional_embedding"], config.grid_size)
    return {**params, "visual": visual}, config


def convert_checkpoint(path, output, model: Optional[str] = None, image_size: Optional[int] = None,
                       activation: Optional[str] = None, overwrite: bool = False) -> CLIPConfig:
    """PyTorch CLIP checkpoint -> elip_jax folder (Orbax params + config.json). Returns the config."""
    params, config, provenance = params_from_checkpoint(path, model, image_size, activation)
    save_pretrained(output, params, config, provenance, overwrite=overwrite)
    return config


def export_checkpoint(directory, to: str, output, overwrite: bool = False) -> Path:
    """elip_jax folder -> 'hf' (a CLIPModel folder) or 'open_clip' (a .safetensors state dict)."""
    if to not in EXPORTERS:
        raise ConversionError(f"--to must be one of {sorted(EXPORTERS)}, got {to!r}")
    config, _ = read_config(directory)
    params = load_params(directory)
    check_param_shapes(params, config)
    return EXPORTERS[to](params, config, output, overwrite=overwrite)


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
