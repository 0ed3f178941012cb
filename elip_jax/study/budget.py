"""The largest batch that fits a memory budget, by bisection over a memory function (compiled memory, no run).

`memory(batch)` is assumed non-decreasing in the batch (activations grow with it; the state does not shrink).
Two secant guesses from the probes taken so far usually land on the answer (memory is close to affine in the
batch), and bisection between the largest batch known to fit and the smallest known not to guarantees the
result whatever the shape: at most about log2(limit / multiple) probes, each one compilation.
"""
from __future__ import annotations

from typing import Callable, Optional


def round_down(value: float, multiple: int) -> int:
    return int(value // multiple) * multiple


def secant_guess(probes: dict, budget: float, multiple: int) -> Optional[int]:
    """The batch where the line through the two probes nearest the budget reaches it (rounded down)."""
    if len(probes) < 2:
        return None
    nearest = sorted(probes, key=lambda b: abs(probes[b] - budget))[:2]
    (b1, m1), (b2, m2) = sorted((b, probes[b]) for b in nearest)
    if m2 <= m1:
        return None
    return round_down(b1 + (budget - m1) * (b2 - b1) / (m2 - m1), multiple)


def largest_batch(memory: Callable[[int], float], budget: float, *, start: int, multiple: int, limit: int,
                  secant_steps: int = 2, known: Optional[dict] = None) -> tuple[int, dict]:
    """(largest multiple of `multiple` in [multiple, limit] with memory(batch) <= budget, or 0 when even
    `multiple` does not fit; {batch: memory} of every probe). start: the first probe (a multiple); known:
    {batch: memory} measured already (not measured again)."""
    if multiple < 1 or start % multiple or limit < multiple or start > limit:
        raise ValueError(f"need 1 <= multiple <= start <= limit with start a multiple; got multiple={multiple}, "
                         f"start={start}, limit={limit}")
    limit = round_down(limit, multiple)
    probes: dict = dict(known or {})
    lo, hi = 0, None  # lo: the largest batch known to fit (0: none yet); hi: the smallest known not to
    batch, secants = start, 0
    while True:
        if batch not in probes:
            probes[batch] = memory(batch)
        if probes[batch] <= budget:
            lo = max(lo, batch)
        else:
            hi = batch if hi is None else min(hi, batch)
        if lo >= limit or (hi is not None and hi - lo <= multiple):
            return lo, probes
        guess = secant_guess(probes, budget, multiple) if secants < secant_steps else None
        if guess is not None:
            secants += 1
            guess = min(max(guess, lo + multiple), limit)
            if hi is not None and guess >= hi:
                guess = hi - multiple
            if guess > lo and guess not in probes:
                batch = guess
                continue
        if hi is None:  # nothing too large seen yet: double
            batch = min(limit, 2 * lo)
        else:  # bisect (lo may be 0: nothing fits yet)
            batch = lo + max(1, (hi - lo) // multiple // 2) * multiple
