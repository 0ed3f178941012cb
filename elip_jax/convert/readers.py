"""Read the tensors of a PyTorch CLIP checkpoint, whatever its container, without running its code.

Containers are recognised by their bytes, not their file names:
- safetensors (`.safetensors`): read with the safetensors library; torch is not needed;
- torch.save zips and legacy pickles (`.pt`, `.pth`, `.bin`): `torch.load(weights_only=True)`, whose
  restricted unpickler refuses any pickle that would import or call code;
- TorchScript archives (OpenAI's released `.pt` files): torchscript.py's own restricted reader;
- folders: Hugging Face `CLIPModel` folders (config.json + model.safetensors / pytorch_model.bin, sharded
  or not) and open_clip hub folders (open_clip_config.json + open_clip_model.safetensors / ..._pytorch_model.bin).
A config found next to a weights file (HF config.json or open_clip_config.json) is read for what tensors
cannot show: heads and activation.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path

from elip_jax.convert.errors import ConversionError, UnsafeCheckpointError
from elip_jax.convert.hf_layout import stated_by_hf_config
from elip_jax.convert.torchscript import is_torchscript_zip, read_torchscript

ELIP_JAX_FORMAT = "elip_jax-clip"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


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
        return _read_folder(path)
    source = read_weights_file(path)
    source.stated = _stated_by_neighbours(path.parent)
    return source


def read_weights_file(path: Path) -> SourceCheckpoint:
    container = sniff_container(path)
    if container == "safetensors":
        tensors = _read_safetensors(path)
    elif container == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                if is_torchscript_zip(archive.namelist()):
                    container, tensors = "torchscript", read_torchscript(archive)
                else:
                    container, tensors = "torch", _read_torch(path)
        except zipfile.BadZipFile as err:
            raise ConversionError(f"{path} starts like a zip (torch.save / TorchScript) but cannot be read "
                                  f"as one ({err}): the file is truncated or corrupt") from None
    else:
        container, tensors = "torch", _read_torch(path)
    return SourceCheckpoint(tensors, container, {}, [str(path)])


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
                source.stated = _stated_by_neighbours(path)
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
    return SourceCheckpoint(tensors, f"sharded {container}", {}, files)


def _stated_by_neighbours(folder: Path) -> dict:
    if (folder / "open_clip_config.json").exists():
        return stated_by_open_clip_config(_load_json(folder / "open_clip_config.json"))
    config_json = folder / "config.json"
    if config_json.exists():
        config = _load_json(config_json)
        if config.get("model_type") == "clip" or "text_config" in config:
            return stated_by_hf_config(config)
    return {}


def stated_by_open_clip_config(config: dict) -> dict:
    """Heads and activation from open_clip's model config (its QuickGELU flag defaults to False)."""
    model_cfg = config.get("model_cfg", config)
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    where = "open_clip_config.json"
    stated = {"activation": ("quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu", where)}
    if "width" in vision:
        stated["vision_heads"] = (int(vision["width"]) // int(vision.get("head_width", 64)), where)
    if "heads" in text or "width" in text:
        stated["text_heads"] = (int(text.get("heads", 8)), where)
    return stated


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from None


