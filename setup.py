"""The optional compiled build: ``IPV4PROXY_MYPYC=1 pip wheel .`` compiles the typed pure
layers with mypyc (docs/development.md, "The compiled build").

Without the variable this is a plain setuptools build of the pure-Python package (what
``pip install .`` and the editable install of the tests get, on any machine, with no
compiler). With it, the modules of `COMPILED` become C extensions beside the other
modules' ``.py`` files in the wheel; it fails loudly (no silent pure-Python fallback) when
mypy or a C compiler is missing, so an image that should ship compiled code never ships
the other. An editable or in-place build is refused: ``.so`` files in the source tree would
shadow the ``.py`` files being edited.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The typed pure layers on the tunnel set-up path: the parsers, the session and the rules.
# Left in Python: errors.py (mypyc's native classes cannot subclass builtin exceptions the
# way its errors do); config.py (read once at start); policy.py (tests subclass Policy,
# which a compiled class forbids, and it is ~1% of a tunnel's CPU); protocols/forward.py
# (the plain-HTTP forward path, not a tunnel's set-up: h11 hands it bytearrays where its
# types say bytes, which compiled code refuses).
COMPILED = (
    "ipv4proxy/protocols/__init__.py",
    "ipv4proxy/protocols/dnsrewrite.py",
    "ipv4proxy/protocols/dnsshape.py",
    "ipv4proxy/protocols/events.py",
    "ipv4proxy/protocols/handshake.py",
    "ipv4proxy/protocols/host.py",
    "ipv4proxy/protocols/http.py",
    "ipv4proxy/protocols/session.py",
    "ipv4proxy/protocols/sniff.py",
    "ipv4proxy/protocols/socks.py",
    "ipv4proxy/rules.py",
)
# What compiles them; pip installs it in an isolated build (``setup_requires`` is what
# setuptools' get_requires_for_build_wheel reports). deploy/container/compile.in says the same.
MYPY = "mypy>=1.10"

_IN_PLACE = (
    "IPV4PROXY_MYPYC=1: an editable or in-place build would leave compiled modules in the "
    "source tree, shadowing the .py files; build a wheel (pip wheel .) or install one "
    "(pip install .) instead"
)


def _compiled() -> dict[str, object]:
    """setup() arguments of the mypyc build (IPV4PROXY_MYPYC=1), or none."""
    if os.environ.get("IPV4PROXY_MYPYC", "") not in {"1", "yes", "true"}:
        return {}
    if {"develop", "editable_wheel", "--inplace", "-i"} & set(sys.argv):
        sys.exit(_IN_PLACE)
    if {"egg_info", "dist_info"} & set(sys.argv):
        # pip asking what the build needs (mypy) or for the metadata: nothing to compile yet.
        return {"setup_requires": [MYPY]}
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only this build needs mypy
    except ImportError:
        sys.exit(f"IPV4PROXY_MYPYC=1 needs {MYPY} and a C compiler")

    class BuildExt(build_ext):
        def run(self) -> None:
            if self.inplace or getattr(self, "editable_mode", False):
                sys.exit(_IN_PLACE)
            super().run()

    return {
        "ext_modules": mypycify(list(COMPILED), opt_level="3", debug_level="0"),
        "cmdclass": {"build_ext": BuildExt},
        "setup_requires": [MYPY],
    }


setup(**_compiled())
