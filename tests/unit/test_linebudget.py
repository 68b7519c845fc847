"""The refusal-line budget: per cause, per one-second window, the rest counted once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.linebudget import LineBudget


def test_each_cause_has_its_own_lines_per_second() -> None:
    budget = LineBudget(2)
    taken = [budget.take(cause, 10.0) for cause in ("DENIED",) * 5 + ("ETIMEDOUT",) * 3]
    assert taken == [True, True, False, False, False, True, True, False]
    assert budget.take_suppressed() == {"DENIED": 3, "ETIMEDOUT": 1}
    assert budget.take_suppressed() == {}


def test_a_new_window_gives_lines_again() -> None:
    budget = LineBudget(1)
    assert budget.take("DENIED", 0.0)
    assert not budget.take("DENIED", 0.99)
    assert budget.take("DENIED", 1.0)
    assert budget.take_suppressed() == {"DENIED": 1}


def test_zero_logs_every_line() -> None:
    budget = LineBudget(0)
    assert all(budget.take("DENIED", 0.0) for _ in range(1000))
    assert budget.take_suppressed() == {}


@given(
    st.integers(min_value=1, max_value=20),
    st.lists(st.tuples(st.sampled_from("ABC"), st.floats(0, 0.5)), max_size=200),
)
def test_every_refusal_is_logged_or_counted_never_both(
    per_second: int, refusals: list[tuple[str, float]]
) -> None:
    """Within one window: each cause logs min(n, per_second) lines; the rest are counted."""
    budget = LineBudget(per_second)
    logged: dict[str, int] = {}
    for cause, offset in refusals:
        if budget.take(cause, 100.0 + offset):
            logged[cause] = logged.get(cause, 0) + 1
    suppressed = budget.take_suppressed()
    for cause in "ABC":
        total = sum(1 for c, _ in refusals if c == cause)
        assert logged.get(cause, 0) == min(total, per_second)
        assert suppressed.get(cause, 0) == total - logged.get(cause, 0)
