"""Fixtures of the deployment tests that run containers: podman with the tests' own
configuration, and the repository's image built once per session (tests/helpers/podman.py).

Making the base image and building the image take about two minutes on a machine that has
not cached them yet (CI). So that this time is not added to the suite's, the tests that
use the image run last, and the build starts in a background thread as soon as the tests
are collected: the rest of the suite runs beside it, and the first image test waits only
for what is left of it. A build that fails fails those tests with its error. The wheels of
the compiled build (tests/helpers/compiled.py, test_compiled.py) are built the same way,
in a background thread of their own.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from collections.abc import Iterator

import pytest

from helpers.compiled import Wheels, build_wheels
from helpers.fixtures import *  # noqa: F403 - the real parts every folder but unit shares
from helpers.podman import Podman, base_image, build_image, podman_or_skip

# The background build's result: (base image, image).
_PREPARED: concurrent.futures.Future[tuple[str, str]] | None = None
# How long a test waits for the background build: a cold build takes about two minutes,
# four on a busy machine; under the image tests' own timeout (900 s), to fail with a reason.
_WAIT_SECONDS = 840.0
_IMAGE_FIXTURES = ("base", "image")
# The compiled build's wheels, built in the background from the collection on.
_WHEELS: concurrent.futures.Future[Wheels] | None = None


def _uses_image(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(name in names for name in _IMAGE_FIXTURES)


def _prepare() -> tuple[str, str]:
    podman = Podman()
    base = base_image(podman)
    return base, build_image(podman, base)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image tests last, in their own order."""
    users = [item for item in items if _uses_image(item)]
    if users:
        items[:] = [item for item in items if not _uses_image(item)] + users


def pytest_collection_finish(session: pytest.Session) -> None:
    global _PREPARED, _WHEELS  # noqa: PLW0603 - one build per session, started here
    if session.config.option.collectonly or _PREPARED is not None:
        return
    if _WHEELS is None and any("wheels" in getattr(i, "fixturenames", ()) for i in session.items):
        wheels = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wheel-build")
        _WHEELS = wheels.submit(build_wheels)
        wheels.shutdown(wait=False)
    if not any(_uses_image(item) for item in session.items):
        return
    # Where podman_or_skip would skip (or fail, in CI), there is nothing to start.
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("podman", "runc", "debootstrap")):
        return
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="image-build")
    _PREPARED = executor.submit(_prepare)
    executor.shutdown(wait=False)  # the interpreter's exit still waits for the build


@pytest.fixture(scope="session")
def podman() -> Podman:
    return podman_or_skip()


@pytest.fixture(scope="session")
def prepared(podman: Podman) -> tuple[str, str]:
    if _PREPARED is not None:
        return _PREPARED.result(timeout=_WAIT_SECONDS)
    base = base_image(podman)
    return base, build_image(podman, base)


@pytest.fixture(scope="session")
def base(prepared: tuple[str, str]) -> str:
    """The base image: Debian bookworm with Python, cached between runs."""
    return prepared[0]


@pytest.fixture(scope="session")
def image(prepared: tuple[str, str]) -> str:
    """deploy/container/Containerfile built on `base` (podman's layer cache reused)."""
    return prepared[1]


@pytest.fixture(scope="session")
def wheels() -> Iterator[Wheels]:
    """The compiled and the pure wheel of this checkout (tests/helpers/compiled.py)."""
    built = _WHEELS.result(timeout=_WAIT_SECONDS) if _WHEELS is not None else build_wheels()
    yield built
    shutil.rmtree(built.directory, ignore_errors=True)
