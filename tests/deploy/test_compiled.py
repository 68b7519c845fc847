"""The compiled build (setup.py, IPV4PROXY_MYPYC=1; docs/development.md): the wheel holds
every module setup.py compiles as a C extension, an install of it imports those (not their
``.py`` files) and passes the pure layers' unit tests; the default build is pure Python; an
in-place compiled build is refused, so no ``.so`` lands in a source tree.

Cost: the two wheels are built in the background from the start of the session (about
70 s of CPU at the lowest priority, tests/deploy/conftest.py); then about 60 s here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.compiled import Wheels, compiled_modules, copy_sources, extension_files
from helpers.deploy import REPO_ROOT

pytestmark = pytest.mark.timeout(900)

# The unit tests of the compiled modules (parsers, session, rules via the policy).
UNIT_TESTS = (
    "test_http.py",
    "test_socks.py",
    "test_sniff.py",
    "test_host.py",
    "test_session.py",
    "test_protocols_pure.py",
    "test_policy.py",
    "test_dns_shape.py",
    "test_dns_rewrite.py",
)


def _install(wheel: Path, target: Path) -> dict[str, str]:
    """``wheel`` installed (without its dependencies, which are this environment's) into
    ``target``; the environment in which ``python -P`` imports ipv4proxy from there."""
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"),
            *("--disable-pip-version-check", "--target", str(target), str(wheel)),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    # -P (no script or working directory on sys.path) and PYTHONPATH first: the installed
    # package, not the checkout's and not the editable install's.
    return {**os.environ, "PYTHONPATH": str(target)}


def _module_files(env: dict[str, str], modules: list[str]) -> dict[str, str]:
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code, *modules],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(zip(modules, done.stdout.split(), strict=True))


def test_compiled_wheel_runs_compiled_code_and_passes_the_unit_tests(
    wheels: Wheels, tmp_path: Path
) -> None:
    modules = compiled_modules()
    assert len(extension_files(wheels.compiled)) > len(modules)  # plus mypyc's shared library
    env = _install(wheels.compiled, tmp_path / "site")
    files = _module_files(env, [*modules, "ipv4proxy.server", "ipv4proxy.errors"])
    for name in modules:
        assert files[name].startswith(str(tmp_path / "site")), files[name]
        assert files[name].endswith(".so"), f"{name} is not compiled: {files[name]}"
    assert files["ipv4proxy.server"].endswith(".py")  # the asyncio glue stays Python
    done = subprocess.run(
        [
            *(sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            "--noconftest",
            *(f"tests/unit/{name}" for name in UNIT_TESTS),
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1], done.stdout[-500:]


def test_default_build_is_pure_python(wheels: Wheels, tmp_path: Path) -> None:
    assert extension_files(wheels.pure) == []
    env = _install(wheels.pure, tmp_path / "site")
    files = _module_files(env, compiled_modules())
    assert all(path.endswith(".py") for path in files.values()), files


def test_in_place_compiled_build_is_refused(tmp_path: Path) -> None:
    """``.so`` files in a source tree would shadow the ``.py`` files being edited."""
    source = copy_sources(tmp_path)
    for command in (["build_ext", "--inplace"], ["develop"], ["editable_wheel"]):
        done = subprocess.run(
            [sys.executable, "setup.py", *command],
            cwd=source,
            env={**os.environ, "IPV4PROXY_MYPYC": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode != 0, command
        assert "would leave compiled modules in the source tree" in done.stderr, done.stderr
    assert not list(source.rglob("*.so"))
