"""Where tests run: a developer's machine may lack a tool (skip, saying how); CI may not."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "unavailable"]


def in_ci() -> bool:
    """True when the CI variable says so (CI sets CI=true)."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine; fail in CI, where every test must run."""
    if in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
