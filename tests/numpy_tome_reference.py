"""A plain NumPy, per-example reference of ToMe (Bolya et al., ICLR 2023; docs/other_methods.md).

Written from the paper, independently of the JAX code (and never from ToMe's own code): one example at a
time, float64, explicit loops over tokens, Python lists of positions, numpy's stable argsort.

Conventions it shares with `elip_jax.reduction.tome` (they are the specification, not the implementation):
tokens are [CLS, mergeable, protected trailing]; A = mergeable tokens at even sequence positions, B = at odd
ones; CLS and protected tokens are in neither set; r is clamped to half of the mergeable tokens; ties go to the
lower position; the new order is [CLS, unmerged A ascending, B ascending, protected].
"""
from __future__ import annotations

import numpy as np

from tests.numpy_reference import embed, layer_norm, quick_gelu


def matching(keys, r, protected=0):
    """keys [T, dk] for one example -> (r, kept A positions, merged A positions, partner B position of each)."""
    r, kept, merged, partners, _ = matching_with_margin(keys, r, protected)
    return r, kept, merged, partners


def matching_with_margin(keys, r, protected=0):
    """`matching`, plus the smallest similarity gap any decision rests on (between the r-th and (r+1)-th edge,
    and between each merged A token's best and second-best B token): inf when nothing is decided."""
    t = keys.shape[0]
    mergeable = list(range(1, t - protected))
    a_positions = [p for p in mergeable if p % 2 == 0]
    b_positions = [p for p in mergeable if p % 2 == 1]
    r = min(r, len(mergeable) // 2)
    if r == 0:
        return 0, a_positions, [], [], np.inf
    unit = keys / np.maximum(np.sqrt((keys ** 2).sum(-1, keepdims=True)), 1e-12)
    edges, partners, partner_gaps = [], [], []
    for p in a_positions:
        similarities = [float(unit[p] @ unit[q]) for q in b_positions]
        best = int(np.argmax(similarities))  # the first maximum
        edges.append(similarities[best])
        partners.append(b_positions[best])
        ranked = sorted(similarities, reverse=True)
        partner_gaps.append(ranked[0] - ranked[1] if len(ranked) > 1 else np.inf)
    order = np.argsort(-np.asarray(edges), kind="stable")
    merged = [a_positions[i] for i in order[:r]]
    kept = sorted(a_positions[i] for i in order[r:])
    margin = min(partner_gaps[i] for i in order[:r])
    if r < len(a_positions):
        margin = min(margin, edges[order[r - 1]] - edges[order[r]])
    return r, kept, merged, [partners[i] for i in order[:r]], margin


def merge(x, sizes, keys, r, protected=0):
    """One ToMe merge of x [T, D] with sizes [T]; returns (x, sizes, (kept, merged, partners, margin))."""
    t = x.shape[0]
    r, kept, merged, partners, margin = matching_with_margin(keys, r, protected)
    if r == 0:
        return x, sizes, (kept, merged, partners, margin)
    b_positions = [p for p in range(1, t - protected) if p % 2 == 1]
    new_x, new_sizes = [x[0]], [sizes[0]]
    for p in kept:
        new_x.append(x[p])
        new_sizes.append(sizes[p])
    for q in b_positions:
        total = sizes[q] * x[q]
        size = sizes[q]
        for a, b in zip(merged, partners):
            if b == q:
                total = total + sizes[a] * x[a]
                size = size + sizes[a]
        new_x.append(total / size)
        new_sizes.append(size)
    for p in range(t - protected, t):
        new_x.append(x[p])
        new_sizes.append(sizes[p])
    return np.stack(new_x), np.asarray(new_sizes), (kept, merged, partners, margin)


def attention_with_keys(x, p, heads, sizes):
    """Proportional self-attention on one example: logits + log(size of the key). Returns (output, keys
    averaged over heads [T, dh])."""
    t, d = x.shape
    dh = d // heads
    qkv = x @ p["in_proj_kernel"] + p["in_proj_bias"]
    q, k, v = (m.reshape(t, heads, dh).transpose(1, 0, 2) for m in np.split(qkv, 3, axis=-1))
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(dh) + np.log(sizes)[None, None, :]
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(1, 0, 2).reshape(t, d)
    return out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"], k.mean(0)


def tome_block(x, sizes, p, heads, r, protected=0):
    attn_out, keys = attention_with_keys(layer_norm(x, p["ln_1"]["LayerNorm_0"]), p["attn"], heads, sizes)
    x = x + attn_out
    x, sizes, decision = merge(x, sizes, keys, r, protected)
    h = layer_norm(x, p["ln_2"]["LayerNorm_0"])
    h = quick_gelu(h @ p["mlp"]["c_fc"]["kernel"] + p["mlp"]["c_fc"]["bias"])
    return x + h @ p["mlp"]["c_proj"]["kernel"] + p["mlp"]["c_proj"]["bias"], sizes, decision


def tome_image_features(image, vp, *, patch, heads, depth, r_per_block, extra_tokens=None):
    """ToMe forward of the vision tower for one example; extra_tokens [n, D] are appended after ln_pre as
    protected (learnable) tokens. Returns (features [E], tokens entering each block, final sizes, decisions)."""
    x = embed(image, vp, patch)
    protected = 0
    if extra_tokens is not None:
        x = np.concatenate([x, extra_tokens], 0)
        protected = len(extra_tokens)
    sizes = np.ones(x.shape[0])
    counts, decisions = [], []
    for i in range(depth):
        counts.append(x.shape[0])
        x, sizes, decision = tome_block(x, sizes, vp[f"resblocks_{i}"], heads, r_per_block[i], protected)
        decisions.append(decision)
    return layer_norm(x[0], vp["ln_post"]["LayerNorm_0"]) @ vp["proj"], counts, sizes, decisions
