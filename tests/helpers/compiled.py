"""The compiled build (setup.py, IPV4PROXY_MYPYC=1), built from a copy of the sources.

The wheels are built from a copy in a temporary directory, never in the repository (an
in-place compile would leave ``.so`` files that shadow the ``.py`` files). pip's build is
isolated: it fetches setuptools and mypy from the package index (pip's cache keeps them).
The compile is batch work at the lowest CPU priority: tests/deploy/conftest.py starts it
in the background as soon as the tests are collected, as it does the image build.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from helpers.deploy import REPO_ROOT

__all__ = ["SOURCES", "Wheels", "build_wheels", "compiled_modules"]

# What a build needs of the repository (the image's build context says the same).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "ipv4proxy")
# Bounds: the mypyc compile of the pure layers takes about 70 s of CPU (2 cores, idle),
# several minutes at the lowest priority beside the rest of the suite.
BUILD_SECONDS = 600.0
NICE = ("nice", "-n", "19")


@dataclass(frozen=True)
class Wheels:
    compiled: Path
    pure: Path
    directory: Path


def compiled_modules() -> list[str]:
    """The dotted names setup.py's COMPILED lists."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED":
            paths = ast.literal_eval(node.value)
            return [str(path).removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no COMPILED")


def copy_sources(into: Path) -> Path:
    source = into / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    return source


def _wheel(source: Path, out: Path, compiled: bool) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "IPV4PROXY_MYPYC"}
    if compiled:
        env["IPV4PROXY_MYPYC"] = "1"
    command = [*NICE, sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
    command += ["--disable-pip-version-check", "-w", str(out), str(source)]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    (wheel,) = out.glob("ipv4proxy-*.whl")
    return wheel


def build_wheels() -> Wheels:
    """The compiled and the pure wheel, each from its own copy of the sources (a build leaves
    build/ and *.egg-info in its source directory)."""
    directory = Path(tempfile.mkdtemp(prefix="ipv4proxy-compiled-"))
    compiled_dir, pure_dir = directory / "compiled", directory / "pure"
    compiled_dir.mkdir()
    pure_dir.mkdir()
    compiled = _wheel(copy_sources(compiled_dir), compiled_dir / "dist", compiled=True)
    pure = _wheel(copy_sources(pure_dir), pure_dir / "dist", compiled=False)
    return Wheels(compiled, pure, directory)


def extension_files(wheel: Path) -> list[str]:
    """The compiled modules (``.so``) a wheel holds."""
    with zipfile.ZipFile(wheel) as archive:
        return [name for name in archive.namelist() if name.endswith(".so")]
