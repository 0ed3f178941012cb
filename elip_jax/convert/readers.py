"""Read the tensors of a PyTorch CLIP checkpoint, whatever its container, without running its code.

Containers are recognised by their bytes, not their file names:
- safetensors (`.safetensors`): read with the safetensors library; torch is not needed;
- torch.save zips and legacy pickles (`.pt`, `.pth`, `.bin`): `torch.load(weights_only=True)`, whose
  restricted unpickler refuses any pickle that would import or call code;
- TorchScript archives (OpenAI's released `.pt` files): torchscript.py's own restricted reader;
- folders: Hugging Face `CLIPModel` folders (config.json + model.safetensors / pytorch_model.bin, sharded
  or not) and open_clip hub folders (open_clip_config.json + open_clip_model.safetensors / ..._pytorch_model.bin).
What tensors cannot show (heads, activation) is taken only from what the source itself states
(`SourceCheckpoint.stated`), never guessed here:
- a config next to the weights: HF config.json (`hidden_act`, `num_attention_heads`) or open_clip's
  open_clip_config.json (`quick_gelu`, whose absence means GELU in open_clip's own schema; `head_width`, `heads`);
- a TorchScript archive: the class of its activation modules (OpenAI's releases hold `QuickGELU` objects);
- an OpenAI release's state dict (`torch.jit.load(...).state_dict()` of OpenAI's archive): it carries the
  buffers `input_resolution`, `context_length`, `vocab_size` that only OpenAI's archives have, and every
  OpenAI CLIP release uses QuickGELU.
A plain open_clip state dict states none of this; the pipeline then asks for --activation or --model.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
import zipfile
from pathlib import Path

from elip_jax.checkpoints.folder import ELIP_JAX_FORMAT
from elip_jax.convert.errors import ConversionError, UnsafeCheckpointError
from elip_jax.convert.hf_layout import stated_by_hf_config
from elip_jax.convert.torchscript import is_torchscript_zip, read_torchscript, stated_activation

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
# Buffers of OpenAI's released CLIP archives (their `state_dict()` has them); open_clip's CLIP has no such keys.
OPENAI_RELEASE_BUFFERS = ("input_resolution", "context_length", "vocab_size")
OPENAI_RELEASE = ("OpenAI release (its input_resolution/context_length/vocab_size buffers exist only in OpenAI's "
                  "CLIP archives, all of which use QuickGELU)")


@dataclasses.dataclass
class SourceCheckpoint:
    tensors: dict  # name -> numpy array, names as the source spells them
    container: str  # safetensors | torch | torchscript, or a folder kind + the weights' container
    stated: dict  # {CLIPConfig field: (value, where it was stated)}
    files: list  # the files the tensors were read from


def read_checkpoint(path) -> SourceCheckpoint:
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    if path.is_dir():
        source = _read_folder(path)
    else:
        source = read_weights_file(path)
        source.stated = merge_stated(source.stated, _stated_by_neighbours(path.parent))
    return source


def read_weights_file(path: Path) -> SourceCheckpoint:
    """The tensors of one file, and what the file itself states (a TorchScript archive's activation
    modules, an OpenAI release's buffers)."""
    container, stated = sniff_container(path), {}
    if container == "safetensors":
        tensors = _read_safetensors(path)
    elif container == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                if is_torchscript_zip(archive.namelist()):
                    contents = read_torchscript(archive)
                    container, tensors = "torchscript", contents.tensors
                    activation = stated_activation(contents.classes)
                    if activation:
                        stated["activation"] = activation
                else:
                    container, tensors = "torch", _read_torch(path)
        except zipfile.BadZipFile as err:
            raise ConversionError(f"{path} starts like a zip (torch.save / TorchScript) but cannot be read "
                                  f"as one ({err}): the file is truncated or corrupt") from None
    else:
        container, tensors = "torch", _read_torch(path)
    if all(key in tensors for key in OPENAI_RELEASE_BUFFERS):
        stated = merge_stated(stated, {"activation": ("quick_gelu", OPENAI_RELEASE)})
    return SourceCheckpoint(tensors, container, stated, [str(path)])


def merge_stated(first: dict, second: dict) -> dict:
    """Both sources' statements; two that disagree are an error, not a choice."""
    merged = dict(first)
    for field, (value, where) in second.items():
        if field in merged and merged[field][0] != value:
            raise ConversionError(f"the checkpoint contradicts itself on {field}: {merged[field][1]} says "
                                  f"{merged[field][0]}, {where} says {value}")
        merged.setdefault(field, (value, where))
    return merged


def sniff_container(path: Path) -> str:
    """'safetensors', 'zip' or 'pickle' from the first bytes; anything else is refused."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 8 + header > size:
            raise ConversionError(f"{path} is a safetensors file whose header says {header} bytes but the file "
                                  f"has {size}: it is truncated")
        return "safetensors"
    if size == 0:
        raise ConversionError(f"{path} is empty")
    raise ConversionError(f"{path}: unknown format (first bytes {head[:8]!r}); expected a safetensors file, "
                          "a torch.save checkpoint (.pt/.pth/.bin), an OpenAI TorchScript archive, a Hugging "
                          "Face CLIPModel folder or an open_clip folder")


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as err:
        raise ConversionError(f"{path}: cannot read safetensors ({err}); the file is truncated or "
                              "corrupt") from None


def _read_torch(path: Path) -> dict:
    try:
        import torch  # only pickled checkpoints need torch: import it here, not at module load
    except ImportError:
        raise ConversionError(f"reading {path} (a torch.save pickle) needs PyTorch: pip install torch. "
                              "safetensors files and TorchScript archives are read without it") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then reads or refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), str(err))
        raise UnsafeCheckpointError(
            f"refused to load {path}: its pickle asks to run code that is not tensor data ({reason}). "
            "Checkpoints are read with torch.load(weights_only=True) and nothing in them is executed") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConversionError(f"{path}: torch.load could not read it ({str(err).splitlines()[0]}); the file "
                              "is truncated or corrupt, or not a checkpoint") from None
    state_dict = _unwrap(loaded, path)
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected "
                                  "a state dict (name -> tensor)")
        value = value.detach().cpu()
        out[key] = (value.float() if value.is_floating_point() else value).numpy()
    return out


def _unwrap(loaded, path):
    """The state dict inside what torch.save stored: itself, or under 'state_dict' (open_clip training
    checkpoints) or 'model'."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                return loaded[key]
        return loaded
    raise ConversionError(f"{path} holds a {type(loaded).__name__}; expected a state dict")


def _read_folder(path: Path) -> SourceCheckpoint:
    config_json = path / "config.json"
    if config_json.exists() and _load_json(config_json).get("format") == ELIP_JAX_FORMAT:
        raise ConversionError(f"{path} is already an elip_jax checkpoint; to export it pass --to hf or "
                              "--to open_clip")
    for kind, names in (("hf", HF_WEIGHTS), ("open_clip", OPEN_CLIP_WEIGHTS)):
        for name in names:
            if (path / name).exists():
                source = _read_sharded(path / name) if name.endswith(".index.json") else \
                    read_weights_file(path / name)
                source.container = f"{kind} folder ({source.container})"
                source.stated = merge_stated(source.stated, _stated_by_neighbours(path))
                return source
    found = sorted(p.name for p in path.iterdir())[:10]
    raise ConversionError(f"{path} is a folder without CLIP weights; expected one of "
                          f"{', '.join(HF_WEIGHTS + OPEN_CLIP_WEIGHTS)}; found {found}")


def _read_sharded(index: Path) -> SourceCheckpoint:
    weight_map = _load_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ConversionError(f"{index} has no 'weight_map'")
    tensors, files, container = {}, [], ""
    for shard in sorted(set(weight_map.values())):
        part = read_weights_file(index.parent / shard)
        tensors.update(part.tensors)
        files += part.files
        container = part.container
    stated = {"activation": ("quick_gelu", OPENAI_RELEASE)} if all(k in tensors for k in OPENAI_RELEASE_BUFFERS) \
        else {}
    return SourceCheckpoint(tensors, f"sharded {container}", stated, files)


def _stated_by_neighbours(folder: Path) -> dict:
    if (folder / OPEN_CLIP_CONFIG).exists():
        return stated_by_open_clip_config(_load_json(folder / OPEN_CLIP_CONFIG))
    config_json = folder / "config.json"
    if config_json.exists():
        config = _load_json(config_json)
        if config.get("model_type") == "clip" or "text_config" in config:
            return stated_by_hf_config(config)
    return {}


# open_clip options that change what the model computes, with open_clip's defaults: a config that sets one
# to anything else describes a model elip_jax does not implement, whatever its tensors look like.
_OPEN_CLIP_FIXED = {
    "vision_cfg": {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                   "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
                   "act_kwargs": None, "norm_kwargs": None, "qk_norm": False, "scaled_cosine_attn": False,
                   "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                   "timm_model_name": None},
    "text_cfg": {"hf_model_name": None, "ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                 "final_ln_after_pool": False, "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
                 "act_kwargs": None, "norm_kwargs": None, "qk_norm": False, "scaled_cosine_attn": False,
                 "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False},
}
# open_clip_config.json field -> CLIPConfig field, for what the tensors also show (compared, never trusted alone)
_OPEN_CLIP_SHAPES = {(None, "embed_dim"): "embed_dim", ("vision_cfg", "image_size"): "image_size",
                     ("vision_cfg", "patch_size"): "patch_size", ("vision_cfg", "width"): "vision_width",
                     ("vision_cfg", "layers"): "vision_layers", ("text_cfg", "width"): "text_width",
                     ("text_cfg", "layers"): "text_layers", ("text_cfg", "context_length"): "context_length",
                     ("text_cfg", "vocab_size"): "vocab_size"}


def stated_by_open_clip_config(config: dict) -> dict:
    """{CLIPConfig field: (value, 'open_clip_config.json')} from open_clip's model config (a hub folder's
    open_clip_config.json, or a bare model_cfg as in open_clip's model_configs/*.json).

    Heads and activation are taken as stated (open_clip's schema: `quick_gelu` absent means GELU, vision
    heads = width // head_width with head_width 64 by default, text `heads` 8 by default); the shape
    fields are returned too, so the tensors can be checked against them."""
    where = OPEN_CLIP_CONFIG
    model_cfg = config.get("model_cfg", config)
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg", {}), dict) \
            or not isinstance(model_cfg.get("text_cfg", {}), dict):
        raise ConversionError(f"{where} has no model_cfg with vision_cfg and text_cfg objects")
    if "multimodal_cfg" in model_cfg:
        raise ConversionError(f"{where} describes a CoCa model (multimodal_cfg); only CLIP can be converted")
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if not isinstance(vision.get("layers", 0), int):
        raise ConversionError(f"{where} describes a ResNet image tower (vision layers {vision['layers']}); only "
                              "ViT CLIP models can be converted")
    for part, fixed in _OPEN_CLIP_FIXED.items():
        cfg = model_cfg.get(part, {})
        for key, default in fixed.items():
            if cfg.get(key, default) != default:
                raise ConversionError(f"{where} sets {part}.{key} = {cfg[key]!r}; elip_jax's CLIP implements "
                                      f"only open_clip's default ({default!r})")
    stated = {"activation": ("quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu", where)}
    if "width" in vision:
        stated["vision_heads"] = (int(vision["width"]) // int(vision.get("head_width", 64)), where)
    if "heads" in text or "width" in text:
        stated["text_heads"] = (int(text.get("heads", 8)), where)
    for (part, key), field in _OPEN_CLIP_SHAPES.items():
        cfg = model_cfg if part is None else model_cfg.get(part, {})
        if key in cfg:
            value = cfg[key]
            if isinstance(value, (list, tuple)) and len(set(value)) == 1:  # image_size / patch_size as [h, w]
                value = value[0]
            stated[field] = (value, where)
    return stated


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from None


