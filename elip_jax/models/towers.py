"""The CLIP vision and text towers (OpenAI CLIP / open_clip architecture)."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from elip_jax.models.config import CLIPConfig
from elip_jax.models.layers import LayerNorm, ResidualBlock
from elip_jax.reduction import ReductionSchedule, StageInputs, prune_tokens, tome
from elip_jax.reduction.registry import INSIDE_BLOCKS

normal = nn.initializers.normal


def make_blocks(config: CLIPConfig, width: int, heads: int, layers: int, causal: bool = False):
    block_cls = ResidualBlock
    if config.remat:  # the cheap `cls_attention` runs without gradient and needs no remat
        block_cls = nn.remat(ResidualBlock, methods=["__call__", "with_cls_attention", "attend", "feed_forward"])
    return [block_cls(width, heads, config.mlp_ratio, config.activation, causal, dtype=config.compute_dtype,
                      name=f"resblocks_{i}") for i in range(layers)]


class VisionTransformer(nn.Module):
    """ViT image encoder with token reduction between blocks (stages) or inside them (ToMe-style merging).

    The method is the schedule's registered `ReductionMethod`; this tower asks it, never its name. Its scorer, a
    Flax module, is `reduction_scorer` here, so a scorer's parameters live at params['visual']['reduction_scorer'].
    A schedule with `protected` tokens gives the tower that many learnable tokens (params['visual']
    ['learnable_tokens'], [protected, D]) appended after the patches, never pruned or merged. With
    `config.deep_visual_tokens` (VPT-deep) the tail of `protected` tokens is replaced before every block i >= 1
    by a fresh learned set (params['visual']['deep_tokens'][i - 1]): every reduction keeps those tokens last, so
    the replacement is a slice whatever the method did to the tokens before them.

    Decisions are sown into the 'intermediates' collection, for tests and pictures: between blocks, one entry per
    active stage of `kept_indices` (kept candidate positions) and `scores` (the candidates' scores); inside blocks,
    one `tome_matchings` entry (a `tome.Matching`) per block that merges.
    """

    config: CLIPConfig
    reduction: ReductionSchedule = ReductionSchedule()

    def setup(self):
        c = self.config
        scale = c.vision_width ** -0.5
        self.conv1 = nn.Conv(c.vision_width, (c.patch_size, c.patch_size), strides=c.patch_size,
                             padding="VALID", use_bias=False, dtype=c.compute_dtype, param_dtype=jnp.float32)
        self.class_embedding = self.param("class_embedding", normal(scale), (c.vision_width,))
        self.positional_embedding = self.param("positional_embedding", normal(scale),
                                               (c.num_patches + 1, c.vision_width))
        if self.reduction.protected:
            self.learnable_tokens = self.param("learnable_tokens", normal(scale),
                                               (self.reduction.protected, c.vision_width))
            if c.deep_visual_tokens and c.vision_layers > 1:
                self.deep_tokens = self.param("deep_tokens", normal(scale),
                                              (c.vision_layers - 1, self.reduction.protected, c.vision_width))
        self.ln_pre = LayerNorm(dtype=c.compute_dtype)
        self.blocks = make_blocks(c, c.vision_width, c.vision_heads, c.vision_layers)
        self.ln_post = LayerNorm(dtype=c.compute_dtype)
        self.proj = self.param("proj", normal(scale), (c.vision_width, c.embed_dim))
        scorer = self.reduction.spec.scorer
        if scorer is not None:
            self.reduction_scorer = scorer(name="reduction_scorer")

    def embed(self, images):
        """[B, H, W, 3] -> [B, 1 + P (+ protected), D] tokens after ln_pre; learnable tokens come after the
        patches (after the positional embedding, before ln_pre)."""
        c = self.config
        x = self.conv1(images.astype(c.compute_dtype))
        x = x.reshape(x.shape[0], -1, c.vision_width)
        cls = jnp.broadcast_to(self.class_embedding.astype(x.dtype), (x.shape[0], 1, c.vision_width))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding.astype(x.dtype)
        if self.reduction.protected:
            extra = jnp.broadcast_to(self.learnable_tokens.astype(x.dtype),
                                     (x.shape[0],) + self.learnable_tokens.shape)
            x = jnp.concatenate([x, extra], axis=1)
        return self.ln_pre(x)

    def guide_to_width(self, guide):
        """Text embedding [B, E] -> guidance in the vision width [B, D]: L2-normalised, times proj^T."""
        guide = guide.astype(jnp.float32)
        guide = guide / jnp.linalg.norm(guide, axis=-1, keepdims=True)
        return jax.lax.stop_gradient(guide @ self.proj.T)

    def __call__(self, images, guide: Optional[jax.Array] = None, rng: Optional[jax.Array] = None):
        """Image features [B, E] (not normalised).

        guide: the paired caption's text embedding [B, E]; text-guided methods prune only when given it.
        rng: the random key for `random` masking, which prunes only when given one: one key for the batch
            (training) or a batch of keys, one per image (evaluation).
        """
        x = self.embed(images)
        schedule = self.reduction
        method = schedule.spec
        if schedule.prunes and method.prunes_with(guide is not None, rng is not None):
            if method.placement == INSIDE_BLOCKS:
                x = self._merge_inside_blocks(x)
            else:
                x = self._prune_between_blocks(x, guide, rng)
        else:
            for i, block in enumerate(self.blocks):
                x = block(self.enter_block(x, i))
        return self.ln_post(x[:, 0]).astype(jnp.float32) @ self.proj

    @property
    def deep(self) -> bool:
        return bool(self.reduction.protected) and self.config.deep_visual_tokens and self.config.vision_layers > 1

    def enter_block(self, x, i: int):
        """The tokens entering block i: VPT-deep swaps the protected tail for block i's learned set (i >= 1);
        otherwise x itself (no op is traced, so a model without deep tokens computes exactly what it did)."""
        if not self.deep or i == 0:
            return x
        protected = self.reduction.protected
        fresh = jnp.broadcast_to(self.deep_tokens[i - 1].astype(x.dtype), (x.shape[0], protected, x.shape[2]))
        return jnp.concatenate([x[:, :-protected], fresh], axis=1)

    def _prune_between_blocks(self, x, guide, rng):
        schedule = self.reduction
        method = schedule.spec
        begin = {schedule.begin_layers[s]: s for s in schedule.active_stages()}
        guide_vec = self.guide_to_width(guide) if guide is not None and method.text_guided else None
        cls_attention = None
        for i, block in enumerate(self.blocks):
            x = self.enter_block(x, i)
            if i in begin:
                s = begin[i]
                inputs = StageInputs(x, self.blocks[i:schedule.group_end(s)], schedule.mix, guide_vec, cls_attention,
                                     rng, schedule.protected, s, schedule.keep[s])
                scores = self.reduction_scorer(inputs)
                x, kept = prune_tokens(x, scores, schedule.keep[s], schedule.merge, schedule.protected)
                self.sow("intermediates", "kept_indices", kept)
                self.sow("intermediates", "scores", scores)
            if method.needs_previous_cls_attention and i + 1 in begin:
                x, cls_attention = block.with_cls_attention(x)
            else:
                x = block(x)
        return x

    def _merge_inside_blocks(self, x):
        """ToMe: merge r[i] tokens in block i between its attention and MLP branches (elip_jax.reduction.tome)."""
        schedule = self.reduction
        sizes = None
        for i, (block, r) in enumerate(zip(self.blocks, schedule.r)):
            x = self.enter_block(x, i)  # protected tokens stay last with size 1: the sizes still line up
            x, sizes, matching = tome.tome_block(block, x, sizes, r, schedule.protected)
            if matching is not None:
                self.sow("intermediates", "tome_matchings", matching)
        return x


class TextTransformer(nn.Module):
    """Causal text encoder pooled at the EOT token (the highest id in each row).

    With `config.text_context_tokens` = n (CoOp), n learned vectors (params['text']['context_tokens'], [n, W])
    sit right after SOT: [SOT, ctx_1..ctx_n, the rest], cut to the context length, positional embeddings added
    to the new positions, pooled at the EOT's new position. Where the cut would drop the EOT (a caption that
    filled the context) the last position holds the EOT, as the tokenizer truncates.
    """

    config: CLIPConfig

    def setup(self):
        c = self.config
        self.token_embedding = nn.Embed(c.vocab_size, c.text_width, embedding_init=normal(0.02),
                                        dtype=c.compute_dtype, param_dtype=jnp.float32)
        self.positional_embedding = self.param("positional_embedding", normal(0.01),
                                               (c.context_length, c.text_width))
        if c.text_context_tokens:
            self.context_tokens = self.param("context_tokens", normal(0.02), (c.text_context_tokens, c.text_width))
        self.blocks = make_blocks(c, c.text_width, c.text_heads, c.text_layers, causal=True)
        self.ln_final = LayerNorm(dtype=c.compute_dtype)
        self.text_projection = self.param("text_projection", normal(c.text_width ** -0.5),
                                          (c.text_width, c.embed_dim))

    def __call__(self, tokens):
        """tokens [B, L] int, L <= context_length -> text features [B, E] (not normalised)."""
        eot_index = jnp.argmax(tokens, axis=-1)
        x = self.token_embedding(tokens)
        if self.config.text_context_tokens:
            x, eot_index = self.insert_context(x, eot_index)
        length = x.shape[1]
        x = x + self.positional_embedding[:length].astype(self.config.compute_dtype)
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        eot = x[jnp.arange(x.shape[0]), eot_index]
        return eot.astype(jnp.float32) @ self.text_projection

    def insert_context(self, embedded, eot_index):
        """[B, L, W] token embeddings -> ([B, min(L + n, context), W] with the context after SOT, the EOT's
        position there)."""
        n = self.config.text_context_tokens
        batch, length, _ = embedded.shape
        rows = jnp.arange(batch)
        context = jnp.broadcast_to(self.context_tokens.astype(embedded.dtype), (batch, n, embedded.shape[2]))
        x = jnp.concatenate([embedded[:, :1], context, embedded[:, 1:]], axis=1)
        new_length = min(length + n, self.config.context_length)
        x = x[:, :new_length]
        eot_after = jnp.minimum(eot_index + n, new_length - 1)
        x = x.at[rows, eot_after].set(embedded[rows, eot_index])  # the same value unless the cut dropped it
        return x, eot_after
