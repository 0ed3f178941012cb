"""Transformer building blocks shared by the CLIP vision and text towers.

Parameter layout follows OpenAI CLIP's `ResidualAttentionBlock` (fused `in_proj`, `out_proj`, `c_fc`,
`c_proj`, `ln_1`, `ln_2`) so that checkpoint conversion is a renaming, never a re-arrangement.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
LN_EPS = 1e-5


def quick_gelu(x):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x):
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": exact_gelu}


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 whatever the compute dtype (as OpenAI's fp16-safe LayerNorm)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32)(x.astype(jnp.float32))
        return y.astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Besides the usual output it can compute the head-averaged attention probabilities of the CLS query
    (row 0) from a separate query: the main attention then never has to expose its full matrix, so it can
    run as a fused kernel.
    """

    width: int
    heads: int
    dtype: Dtype = jnp.float32

    def setup(self):
        init = nn.initializers.xavier_uniform()
        self.in_proj_kernel = self.param("in_proj_kernel", init, (self.width, 3 * self.width), jnp.float32)
        self.in_proj_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * self.width,), jnp.float32)
        self.out_proj = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="out_proj")

    def _project(self, x, part: slice):
        kernel = self.in_proj_kernel[:, part].astype(self.dtype)
        return x.astype(self.dtype) @ kernel + self.in_proj_bias[part].astype(self.dtype)

    def _split_heads(self, x):
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.width // self.heads)

    def __call__(self, x, mask: Optional[jax.Array] = None, is_causal: bool = False,
                 key_bias: Optional[jax.Array] = None, return_keys: bool = False):
        """x: [B, T, D]. mask: boolean, broadcastable to [B, heads, T, T], True where a query may attend.

        key_bias: optional [B, T], added (in fp32) to every query's logit for each key; ToMe's proportional
        attention passes log(token sizes). return_keys: also return the keys averaged over heads [B, T, D/heads]
        in fp32 (ToMe's similarity). Without either the computation is the plain attention's.
        """
        qkv = self._project(x, slice(None))
        q, k, v = (self._split_heads(t) for t in jnp.split(qkv, 3, axis=-1))
        bias = None if key_bias is None else key_bias.astype(jnp.float32)[:, None, None, :]
        out = attention(q, k, v, mask=mask, is_causal=is_causal, bias=bias)
        out = self.out_proj(out.reshape(x.shape[0], x.shape[1], self.width))
        if return_keys:
            return out, k.astype(jnp.float32).mean(axis=2)
        return out

    def cls_attention(self, x, key_mask: Optional[jax.Array] = None):
        """Head-averaged softmax probabilities of query 0 over all keys: [B, T], in fp32.

        Computes one query row only: a [B, heads, T] product instead of [B, heads, T, T].
        key_mask: optional [B, T] boolean, False for keys that must get zero probability.
        """
        d = self.width
        q = self._split_heads(self._project(x[:, :1], slice(0, d)))[:, 0]  # [B, H, dh]
        k = self._split_heads(self._project(x, slice(d, 2 * d)))  # [B, T, H, dh]
        scale = (d // self.heads) ** -0.5
        logits = jnp.einsum("bhd,bthd->bht", q, k, preferred_element_type=jnp.float32) * scale
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, :], logits, jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(logits, axis=-1).mean(axis=1)


def attention(q, k, v, mask=None, is_causal=False, bias=None):
    """Scaled dot-product attention on [B, T, H, dh] with an fp32 softmax.

    Delegates to `jax.nn.dot_product_attention`, which picks a fused kernel where the backend has one.
    bias: optional fp32 additive logits, broadcastable to [B, H, T, T].
    """
    if bias is None:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal)


class MLP(nn.Module):
    width: int
    hidden: int
    activation: str = "quick_gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        x = dense(self.hidden, "c_fc")(x)
        x = ACTIVATIONS[self.activation](x)
        return dense(self.width, "c_proj")(x)


class ResidualBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    width: int
    heads: int
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"
    causal: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        self.ln_1 = LayerNorm(dtype=self.dtype)
        self.attn = MultiHeadAttention(self.width, self.heads, dtype=self.dtype)
        self.ln_2 = LayerNorm(dtype=self.dtype)
        self.mlp = MLP(self.width, int(self.width * self.mlp_ratio), self.activation, dtype=self.dtype)

    def __call__(self, x, mask=None):
        return self._forward(x, mask, return_cls_attention=False)

    def with_cls_attention(self, x, mask=None):
        """The block output and the head-averaged CLS-row attention probabilities [B, T] (fp32) of this
        block's attention, computed from the CLS query alone."""
        return self._forward(x, mask, return_cls_attention=True)

    def _forward(self, x, mask, return_cls_attention: bool):
        h = self.ln_1(x)
        x = x + self.attn(h, mask=mask, is_causal=self.causal).astype(x.dtype)
        x = x + self.mlp(self.ln_2(x)).astype(x.dtype)
        if not return_cls_attention:
            return x
        key_mask = None if mask is None else _key_mask_from(mask)
        return x, self.attn.cls_attention(h, key_mask)

    def cls_attention(self, x, key_mask=None):
        """Only the CLS-row attention probabilities this block would compute on x: [B, T]."""
        return self.attn.cls_attention(self.ln_1(x), key_mask)

    def attend(self, x, mask=None, key_bias=None):
        """The attention branch alone, x + attn(ln_1(x)), and that attention's head-averaged keys [B, T, dh]
        (fp32). key_bias [B, T]: added to the logits of each key (ToMe's proportional attention, log sizes).
        `attend` then `feed_forward` computes what `__call__` does; token merging runs between the two."""
        out, keys = self.attn(self.ln_1(x), mask=mask, is_causal=self.causal, key_bias=key_bias, return_keys=True)
        return x + out.astype(x.dtype), keys

    def feed_forward(self, x):
        """The MLP branch alone: x + mlp(ln_2(x))."""
        return x + self.mlp(self.ln_2(x)).astype(x.dtype)


def _key_mask_from(mask):
    """The CLS query's key mask [B, T] from a mask broadcastable to [B, H, T, T]."""
    mask = jnp.asarray(mask)
    return mask[:, 0, 0, :] if mask.ndim == 4 else mask
