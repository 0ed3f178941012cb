"""The two conversions end to end: PyTorch checkpoint -> elip_jax folder, and an elip_jax converted folder or
training workdir -> PyTorch (an HF CLIPModel folder or an open_clip hub folder). --output is checked first."""
from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from elip_jax.convert import hf_layout, openai_layout
from elip_jax.convert.outputs import check_output
from elip_jax.checkpoints.folder import FILES as ELIP_JAX_FILES, save_pretrained
from elip_jax.checkpoints.params import check_param_shapes
from elip_jax.convert.errors import ConversionError
from elip_jax.convert.exporters import EXPORTERS, OPEN_CLIP_FILES
from elip_jax.convert.infer import UNSTATED, confirm_model, infer_config
from elip_jax.convert.pos_embed import resize_positional_embedding
from elip_jax.convert.readers import read_checkpoint
from elip_jax.models.config import CLIPConfig, get_config

HF_FILES = ("config.json", "model.safetensors")

ACTIVATIONS = ("quick_gelu", "gelu")


def params_from_checkpoint(path, model: Optional[str] = None, image_size: Optional[int] = None,
                           activation: Optional[str] = None) -> tuple[dict, CLIPConfig, dict]:
    """(param tree, config, provenance) from any supported PyTorch CLIP checkpoint; writes nothing."""
    if image_size is not None and image_size <= 0:
        raise ConversionError(f"--image-size must be a positive multiple of the patch size; got {image_size}")
    if model is not None:
        try:
            get_config(model)  # an unknown name fails before the checkpoint is read
        except ValueError as err:
            raise ConversionError(str(err)) from None
    source = read_checkpoint(path)
    state_dict = openai_layout.normalise_keys(source.tensors)
    layout = "openai"
    if hf_layout.is_hf_layout(state_dict):
        state_dict, layout = hf_layout.hf_to_openai(state_dict), "hf"
    stated = dict(source.stated)
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
    check_param_shapes(params, config, error=ConversionError)
    if sources["activation"] == UNSTATED:
        raise ConversionError(
            f"{path} does not state its activation (it has no open_clip_config.json or HF config.json beside it, "
            "and it is not an OpenAI release), and QuickGELU and GELU give different features from the same "
            "weights: pass --activation quick_gelu or --activation gelu, or --model NAME (e.g. ViT-B-16 for "
            "OpenAI's QuickGELU models, ViT-B-16-gelu for open_clip's GELU ones)")
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
    check_output(output, overwrite, writes=ELIP_JAX_FILES, source=path)
    params, config, provenance = params_from_checkpoint(path, model, image_size, activation)
    save_pretrained(output, params, config, provenance, overwrite=overwrite)
    return config


def check_export_output(to: str, output, overwrite: bool = False, source=None) -> Path:
    """Refuses a bad --to / --output pair before anything is read (see `export_checkpoint`)."""
    if to not in EXPORTERS:
        raise ConversionError(f"--to must be one of {sorted(EXPORTERS)}, got {to!r}")
    if to == "open_clip":
        if Path(output).suffix in (".safetensors", ".bin", ".pt", ".pth") and not Path(output).is_dir():
            raise ConversionError(
                f"--to open_clip writes an open_clip folder ({' + '.join(OPEN_CLIP_FILES)}, the layout of "
                f"open_clip's hub repositories), so --output names that folder, not a weights file: got {output}")
        return check_output(output, overwrite, inside=OPEN_CLIP_FILES, source=source)
    return check_output(output, overwrite, writes=HF_FILES, source=source)


def export_checkpoint(source, to: str, output, overwrite: bool = False) -> Path:
    """An elip_jax converted folder or training workdir (its newest restorable checkpoint) -> 'hf' (a
    transformers CLIPModel folder) or 'open_clip' (an open_clip hub folder: weights + open_clip_config.json;
    an existing folder receives the two files). Returns the path written."""
    check_export_output(to, output, overwrite, source)
    params, config = _read_elip_jax(source)
    check_param_shapes(params, config, error=ConversionError)
    return EXPORTERS[to](params, config, output, overwrite=overwrite)


def _read_elip_jax(source) -> tuple[dict, CLIPConfig]:
    """(float32 numpy param tree, config) of a converted folder or a training workdir, through the one loader
    (elip_jax.checkpoints.load); a model name is refused: exporting random weights is never meant."""
    from elip_jax.checkpoints import load
    if not Path(source).is_dir():
        state = "does not exist" if not Path(source).exists() else "is a file"
        raise ConversionError(f"--input {source} {state}; with --to it names an elip_jax checkpoint: a converted "
                              "folder (config.json + params/) or a training workdir (model_config.json + "
                              "checkpoints/)")
    model, variables, _ = load(str(source), reduction="none")  # PyTorch CLIP has no place for a scorer's params
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), variables["params"]), model.config


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
