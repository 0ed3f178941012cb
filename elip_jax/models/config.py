"""Architecture description of a CLIP model, and the registry of named architectures."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax.numpy as jnp

VOCAB_SIZE = 49408  # OpenAI CLIP BPE: 512 byte tokens, 48894 merges, <start_of_text>, <end_of_text>
CONTEXT_LENGTH = 77
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Everything that fixes the shapes of a CLIP model. Hashable, so it can be a Flax module field."""

    embed_dim: int
    # vision tower
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    # text tower
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int = CONTEXT_LENGTH
    vocab_size: int = VOCAB_SIZE
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"  # "quick_gelu" (OpenAI) or "gelu" (open_clip's default models)
    dtype: str = "float32"  # compute dtype; parameters are always fp32
    remat: bool = False  # rematerialise each block in the backward pass
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: Optional[float] = None  # SigLIP's learned bias (open_clip's init_logit_bias); None: none
    # Learnable tokens (docs/learnable_tokens.md). Their COUNT in the vision tower is the reduction schedule's
    # `protected` (the reduction must leave exactly those tokens alone, so the schedule owns the number); these two
    # fields shape the rest of the architecture and travel with it in every folder's and workdir's model config.
    deep_visual_tokens: bool = False  # VPT-deep: a fresh learned set replaces the learnable tokens before every
    #                                   block after the first (params['visual']['deep_tokens'], [depth-1, n, D])
    text_context_tokens: int = 0  # CoOp: n learned vectors right after SOT (params['text']['context_tokens'])

    def __post_init__(self):
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if isinstance(self.text_context_tokens, bool) or not isinstance(self.text_context_tokens, int) \
                or not 0 <= self.text_context_tokens < self.context_length - 1:
            raise ValueError(f"text_context_tokens must be an int in [0, {self.context_length - 2}] (SOT and EOT "
                             f"must still fit in the context), got {self.text_context_tokens!r}")
        if not isinstance(self.deep_visual_tokens, bool):
            raise ValueError(f"deep_visual_tokens must be true or false, got {self.deep_visual_tokens!r}")
        for width, heads, tower in ((self.vision_width, self.vision_heads, "vision"),
                                    (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise ValueError(f"{tower}_width ({width}) must be divisible by {tower}_heads ({heads})")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    def replace(self, **overrides) -> "CLIPConfig":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown model option(s) {sorted(unknown)}; valid options: {valid}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _vit_b(patch_size: int, activation: str) -> CLIPConfig:
    return CLIPConfig(embed_dim=512, image_size=224, patch_size=patch_size, vision_width=768,
                      vision_layers=12, vision_heads=12, text_width=512, text_layers=12, text_heads=8,
                      activation=activation)


def _vit_l(image_size: int, activation: str) -> CLIPConfig:
    return CLIPConfig(embed_dim=768, image_size=image_size, patch_size=14, vision_width=1024,
                      vision_layers=24, vision_heads=16, text_width=768, text_layers=12, text_heads=12,
                      activation=activation)


def _tiny(vision_layers: int) -> CLIPConfig:
    return CLIPConfig(embed_dim=32, image_size=64, patch_size=8, vision_width=64, vision_layers=vision_layers,
                      vision_heads=4, text_width=64, text_layers=2, text_heads=4)


# OpenAI's released models use QuickGELU; open_clip's plain `ViT-B-32`/`ViT-B-16` use exact GELU and are
# registered here with a `-gelu` suffix (open_clip calls the OpenAI ones `...-quickgelu`).
ARCHITECTURES = {
    "ViT-B-32": _vit_b(32, "quick_gelu"),
    "ViT-B-16": _vit_b(16, "quick_gelu"),
    "ViT-L-14": _vit_l(224, "quick_gelu"),
    "ViT-L-14-336": _vit_l(336, "quick_gelu"),
    "ViT-B-32-gelu": _vit_b(32, "gelu"),
    "ViT-B-16-gelu": _vit_b(16, "gelu"),
    "ViT-L-14-gelu": _vit_l(224, "gelu"),
    # tiny towers for tests and the CPU demo; they share the real 49408-token vocabulary
    "tiny": _tiny(4),
    "tiny-12": _tiny(12),
}
ALIASES = {"ViT-B-32-quickgelu": "ViT-B-32", "ViT-B-16-quickgelu": "ViT-B-16",
           "ViT-L-14-quickgelu": "ViT-L-14", "ViT-L-14-336-quickgelu": "ViT-L-14-336"}


def list_models() -> list[str]:
    return sorted(ARCHITECTURES) + sorted(ALIASES)


def get_config(name: str, **overrides) -> CLIPConfig:
    """The named architecture, with fields replaced by `overrides` (e.g. image_size=256, dtype='bfloat16')."""
    key = ALIASES.get(name, name)
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(list_models())}")
    return ARCHITECTURES[key].replace(**overrides) if overrides else ARCHITECTURES[key]


def config_from_dict(d: dict) -> CLIPConfig:
    return CLIPConfig(**d)


def resolve_dtype(dtype: Optional[Any]) -> str:
    """Accepts 'bfloat16', jnp.bfloat16 or np.dtype('bfloat16'); returns the registry name."""
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return name
