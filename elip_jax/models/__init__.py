"""Flax linen CLIP: layers, towers, the two-tower model and the registry of named architectures."""
from elip_jax.models.clip import CLIP, create_model, keeping_tokens, l2_normalize, schedule_for
from elip_jax.models.config import ARCHITECTURES, CLIPConfig, config_from_dict, get_config, list_models

__all__ = ["ARCHITECTURES", "CLIP", "CLIPConfig", "config_from_dict", "create_model", "get_config",
           "keeping_tokens", "l2_normalize", "list_models", "schedule_for"]
