"""Backoff with full jitter, for every loop that tries again (storage-free).

The delay before retry `attempt` (0 for the first) is drawn uniformly from
[0, min(cap, base * 2**attempt)], so that callers who failed together do not
come back together (AWS's "full jitter").
"""

from __future__ import annotations

import random
from collections.abc import Callable

# 2**60 seconds is past any cap; bigger exponents only risk float overflow.
_MAX_EXPONENT = 60


def backoff(
    attempt: int, base: float = 0.02, cap: float = 1.0, *,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with full jitter."""
    return rng() * min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))
