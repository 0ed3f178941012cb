"""A plain NumPy, per-example reference of the CLIP vision tower and of ELIP (spec section 1.2).

Written from the specification, independently of the JAX code: full attention matrices, full look-ahead
blocks (the last one too), a stable sort for selection, explicit loops over the pruned tokens for merging.
Works on one example at a time, in float64.
"""
from __future__ import annotations

import numpy as np


def layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


def attention_with_probs(x, p, heads):
    """Self-attention on one example x [T, D]; returns (output [T, D], probabilities [heads, T, T])."""
    t, d = x.shape
    qkv = x @ p["in_proj_kernel"] + p["in_proj_bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    dh = d // heads
    q = q.reshape(t, heads, dh).transpose(1, 0, 2)
    k = k.reshape(t, heads, dh).transpose(1, 0, 2)
    v = v.reshape(t, heads, dh).transpose(1, 0, 2)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(1, 0, 2).reshape(t, d)
    return out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"], probs


def block(x, p, heads):
    """One pre-LN residual block; returns (output, head-averaged attention matrix [T, T])."""
    attn_out, probs = attention_with_probs(layer_norm(x, p["ln_1"]["LayerNorm_0"]), p["attn"], heads)
    x = x + attn_out
    h = layer_norm(x, p["ln_2"]["LayerNorm_0"])
    h = quick_gelu(h @ p["mlp"]["c_fc"]["kernel"] + p["mlp"]["c_fc"]["bias"])
    x = x + h @ p["mlp"]["c_proj"]["kernel"] + p["mlp"]["c_proj"]["bias"]
    return x, probs.mean(0)


def embed(image, vp, patch):
    """image [H, W, 3] -> tokens [1 + P, D] after ln_pre (patches in row-major order)."""
    h, w, _ = image.shape
    kernel = vp["conv1"]["kernel"]  # [p, p, 3, D]
    patches = []
    for r in range(0, h, patch):
        for c in range(0, w, patch):
            patches.append(np.einsum("ijc,ijcd->d", image[r:r + patch, c:c + patch], kernel))
    x = np.concatenate([vp["class_embedding"][None], np.stack(patches)], 0) + vp["positional_embedding"]
    return layer_norm(x, vp["ln_pre"]["LayerNorm_0"])


def elip_image_features(image, guide, vp, *, patch, heads, depth, begin_layers, keep, mix):
    """ELIP forward for one example. guide: the text embedding [E] (not yet normalised).

    Returns (image features [E], kept indices per stage as lists of candidate positions).
    """
    t = guide / np.linalg.norm(guide)
    t = t @ vp["proj"].T  # into the vision width through the transpose of the image projection
    blocks = [vp[f"resblocks_{i}"] for i in range(depth)]
    x = embed(image, vp, patch)
    kept_per_stage = []
    stage_of_block = {b: s for s, b in enumerate(begin_layers)}
    for i in range(depth):
        if i in stage_of_block:
            s = stage_of_block[i]
            end = begin_layers[s + 1] if s + 1 < len(begin_layers) else depth
            # look-ahead on a copy whose CLS is mixed with the text guide; every block run in full
            y = x.copy()
            y[0] = (1 - mix) * t + mix * y[0]
            for j in range(i, end):
                y, attn = block(y, blocks[j], heads)
            scores = attn[0, 1:]  # CLS row without the CLS column
            order = sorted(range(len(scores)), key=lambda n: (-scores[n], n))  # ties to the lower index
            kept = sorted(order[:keep[s]])
            pruned = sorted(order[keep[s]:])
            total = sum(scores[n] for n in pruned) + 1e-6
            merged = np.zeros(x.shape[1])
            for n in pruned:
                merged += scores[n] / total * x[1 + n]
            x = np.concatenate([x[:1], x[1:][kept], merged[None]], 0)
            kept_per_stage.append(kept)
        x, _ = block(x, blocks[i], heads)
    return layer_norm(x[0], vp["ln_post"]["LayerNorm_0"]) @ vp["proj"], kept_per_stage


def to_numpy_tree(tree):
    if isinstance(tree, dict):
        return {k: to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64)
