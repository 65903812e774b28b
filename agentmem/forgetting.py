"""Forgetting curves as pure functions of strength and elapsed time.

The default is MemoryBank's exponential curve `R = exp(-t / S)`: `t` is the time since
the note was last recalled (in configurable units), `S` its strength, which starts at 1
and grows with every recall. MemoryBank's public code writes `exp(-t / 5*S)`, which
Python reads as `exp(-t * S / 5)`: the more a note was recalled, the *faster* it would
fade. Here a larger S always means slower forgetting.

ACT-R's base-level activation is the second curve: every past recall contributes
`age ** -d`, so many spaced recalls keep a note alive longer than one recent burst.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from .notes import MAX_STRENGTH


def exponential_retention(elapsed: float, strength: float) -> float:
    """R = exp(-t / S), with t clamped at 0 (a recall in the future counts as now)."""
    if strength <= 0:
        raise ValueError("strength must be positive")
    return math.exp(-max(elapsed, 0.0) / strength)


def reinforced_strength(strength: float, gain: float) -> float:
    """Strength after one more recall (capped where a stored note's strength must stay)."""
    return min(strength + gain, MAX_STRENGTH)


def actr_activation(ages: Sequence[float], decay: float = 0.5) -> float:
    """Base-level activation B = ln(sum_j age_j ** -d) over past presentations.

    Ages are in time units; an age below a hundredth of a unit is taken as that, so a
    presentation happening now does not divide by zero.
    """
    if not ages:
        return -math.inf
    return math.log(sum(max(age, 0.01) ** -decay for age in ages))


def actr_retention(ages: Sequence[float], decay: float = 0.5) -> float:
    """Activation mapped to (0, 1) by a logistic: 0.5 at B = 0, i.e. one presentation one unit ago."""
    activation = actr_activation(ages, decay)
    if activation == -math.inf:
        return 0.0
    return 1.0 / (1.0 + math.exp(-activation))
