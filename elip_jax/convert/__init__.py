"""PyTorch CLIP checkpoints (OpenAI, open_clip, Hugging Face) <-> elip_jax, without running checkpoint code.

Modules, one job each: readers (containers) and torchscript (OpenAI's archives), openai_layout and
hf_layout (the key mappings), infer (architecture from tensors), pos_embed (resolution change),
exporters (back to PyTorch: an HF folder or an open_clip hub folder), outputs (--output checked first),
pipeline, cli. The elip_jax folder it writes is elip_jax.checkpoints' format (written whole, readable by others,
through elip_jax.fileio); load_params, load_pretrained, read_config and save_pretrained are re-exported from there.
"""
from elip_jax.checkpoints.folder import load_params, load_pretrained, read_config, save_pretrained
from elip_jax.convert.errors import ConversionError, UnsafeCheckpointError
from elip_jax.convert.exporters import export_hf, export_open_clip
from elip_jax.convert.pipeline import convert_checkpoint, export_checkpoint, params_from_checkpoint
from elip_jax.convert.pos_embed import resize_positional_embedding
from elip_jax.convert.readers import read_checkpoint

__all__ = ["ConversionError", "UnsafeCheckpointError", "convert_checkpoint", "export_checkpoint", "export_hf",
           "export_open_clip", "load_params", "load_pretrained", "params_from_checkpoint", "read_checkpoint",
           "read_config", "resize_positional_embedding", "save_pretrained"]
