"""The one retry policy (tenacity): attempt cap, equal-jitter waits, a budget no wait may overrun."""

from __future__ import annotations

import pytest
from tenacity import RetryError, retry_if_exception_type, retry_if_result

from lenscope.client.core.retry import RetryPolicy


class Flaky:
    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"down ({self.calls})")
        return "ok"


def test_retries_until_success_with_capped_jittered_waits() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=6, base_delay_s=0.5, max_delay_s=2.0)
    fn = Flaky(failures=4)
    assert policy.retrying(retry_if_exception_type(ConnectionError), sleep=waits.append)(fn) == "ok"
    assert fn.calls == 5 and len(waits) == 4
    for n, w in enumerate(waits, start=1):
        nominal = min(2.0, 0.5 * 2 ** (n - 1))
        assert nominal / 2 <= w <= nominal, (n, w)


def test_attempt_cap_reraises_the_last_error() -> None:
    fn = Flaky(failures=10)
    with pytest.raises(ConnectionError, match=r"down \(3\)"):
        RetryPolicy(attempts=3, base_delay_s=0).retrying(retry_if_exception_type(ConnectionError), sleep=lambda s: None)(fn)
    assert fn.calls == 3


def test_no_wait_starts_that_would_end_past_the_budget() -> None:
    fn, waits = Flaky(failures=10), []
    policy = RetryPolicy(attempts=10, base_delay_s=4.0, max_delay_s=8.0)
    with pytest.raises(ConnectionError):
        policy.retrying(retry_if_exception_type(ConnectionError), budget_s=1.0, sleep=waits.append)(fn)
    assert fn.calls == 1 and waits == []  # the first wait (>= 2 s) would overrun the 1 s deadline


def test_result_based_polling_until_the_budget() -> None:
    policy = RetryPolicy(attempts=None, base_delay_s=0.0, max_delay_s=0.0, budget_s=0.0)
    with pytest.raises(RetryError):
        policy.retrying(retry_if_result(bool))(lambda: True)
    assert policy.retrying(retry_if_result(bool))(lambda: False) is False


def test_a_policy_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="attempts, a budget"):
        RetryPolicy(attempts=None)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
