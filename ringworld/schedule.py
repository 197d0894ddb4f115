"""Learning-rate schedules under a step count and an optional time budget.

A run ends at whichever comes first, its steps or its seconds, so its progress is the larger of
the two fractions: a time-boxed run then reaches the end of its schedule (a low learning rate)
whatever the machine's speed. Both trainers (the model's and the vision tokenizer's) use this rule.
"""

from __future__ import annotations

import math


def progress(done: float, total: float, seconds: float = 0.0, max_seconds: float | None = None) -> float:
    """How far along a run is, in [0, 1]: done / total, or seconds / max_seconds if that is further."""
    p = done / max(total, 1)
    if max_seconds:
        p = max(p, seconds / max_seconds)
    return min(1.0, p)


def cosine(p: float, floor: float = 0.0) -> float:
    """A factor falling from 1 at p = 0 to ``floor`` at p = 1 along half a cosine."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(
    step: int, *, warmup: int, steps: int, seconds: float = 0.0, max_seconds: float | None = None, floor: float = 0.0
) -> float:
    """The factor of the peak learning rate at ``step`` (0-based): linear over ``warmup`` steps, then
    a cosine to ``floor``, reached on the last step or at the end of the time budget."""
    if step < warmup:
        return (step + 1) / warmup
    return cosine(progress(step + 1 - warmup, steps - warmup, seconds, max_seconds), floor)
