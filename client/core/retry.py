"""The one retry policy of the project, on tenacity: capped exponential backoff with jitter, a
number of attempts, and a time budget tied to the caller's deadline.

Every retry in ``lenscope.client`` (a Triton call answering UNAVAILABLE, an indexing chunk whose
inputs failed transiently, waiting for Milvus to finish an index) is a ``RetryPolicy`` turned into
a ``tenacity.Retrying``; nobody writes a sleep loop. The budget is a hard promise: no sleep is
started that would end past it (``stop_before_delay``), so a retry never extends a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    Retrying,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
    wait_exponential,
    wait_random_exponential,
)

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all (None: until the budget runs out), waiting about
    ``base_delay_s * 2**(n-1)`` (capped at ``max_delay_s``) between them, half of it random
    ("equal jitter": concurrent clients spread out, yet every wait is at least half the nominal one)."""

    attempts: int | None = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    budget_s: float | None = None  # default time budget; a call's own deadline overrides it

    def __post_init__(self) -> None:
        if self.attempts is None and self.budget_s is None:
            raise ValueError("a retry policy needs attempts, a budget, or both")
        if (self.attempts is not None and self.attempts < 1) or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("attempts must be >= 1 and delays >= 0")

    def retrying(self, retry: Any, *, budget_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep, reraise: bool = True) -> Retrying:
        """A tenacity ``Retrying`` for ``retry`` (a tenacity retry condition), stopping at the attempt
        cap or before a wait would end past ``budget_s`` (default ``self.budget_s``) from the first try."""
        budget = self.budget_s if budget_s is None else budget_s
        stop = stop_after_attempt(self.attempts) if self.attempts is not None else stop_never
        if budget is not None:
            stop = stop | stop_before_delay(budget)
        half_base, half_max = self.base_delay_s / 2, self.max_delay_s / 2
        wait = (wait_exponential(multiplier=half_base, max=half_max)
                + wait_random_exponential(multiplier=half_base, max=half_max))
        return Retrying(retry=retry, stop=stop, wait=wait, sleep=sleep, reraise=reraise)
