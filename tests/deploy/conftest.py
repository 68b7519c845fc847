"""Fixtures of the deployment tests that run containers: podman with the tests' own
configuration, and the repository's image built once per session (tests/helpers/podman.py)."""

from __future__ import annotations

import pytest

from helpers.podman import Podman, base_image, build_image, podman_or_skip


@pytest.fixture(scope="session")
def podman() -> Podman:
    return podman_or_skip()


@pytest.fixture(scope="session")
def base(podman: Podman) -> str:
    """The base image: Debian bookworm with Python, cached between runs."""
    return base_image(podman)


@pytest.fixture(scope="session")
def image(podman: Podman, base: str) -> str:
    """deploy/container/Containerfile built on `base` (podman's layer cache reused)."""
    return build_image(podman, base)
