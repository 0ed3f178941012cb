"""elip_jax: ELIP text-guided vision-token pruning and merging for CLIP pre-training, in JAX/Flax."""
from elip_jax.models import CLIP, CLIPConfig, create_model, get_config, list_models
from elip_jax.reduction import ReductionSchedule, make_schedule
from elip_jax.checkpoints import load_pretrained  # converted folders and training workdirs

__version__ = "0.1.0"


def tokenize(texts, context_length: int = 77, vocab_path=None):
    """CLIP BPE token ids [N, context_length] int32, identical to OpenAI CLIP's tokenizer (see tokenizer.py)."""
    from elip_jax.tokenizer import tokenize as _tokenize
    return _tokenize(texts, context_length=context_length, vocab_path=vocab_path)


__all__ = ["CLIP", "CLIPConfig", "ReductionSchedule", "create_model", "get_config", "list_models",
           "load_pretrained", "make_schedule", "tokenize"]
