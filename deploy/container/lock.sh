#!/bin/sh
# Regenerates deploy/container/requirements.lock, the image's pinned dependencies, with uv
# (https://docs.astral.sh/uv/, `pip install uv`). Run it from anywhere after changing
# [project] dependencies or [build-system] requires in pyproject.toml:
#
#   deploy/container/lock.sh            # keep the pins that still fit, add what is new
#   deploy/container/lock.sh --upgrade  # move every pin to the newest release
#
# The lock holds the project's dependencies and its build backend (setuptools, read from
# pyproject.toml's [build-system]), one version each, with the hash of every wheel and
# sdist, for every Python the project supports (--universal, from 3.11) and every platform.
# tests/deploy/test_lock.py checks that it is current with pyproject.toml.
#
# compile.lock is the build stage's compiler of the pure layers (mypy, for mypyc), from
# compile.in, hashed the same way; it never reaches the final image.
set -eu
cd "$(dirname "$0")/../.."
python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' |
    uv pip compile pyproject.toml - \
        --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command deploy/container/lock.sh \
        --output-file deploy/container/requirements.lock "$@"
uv pip compile deploy/container/compile.in \
    --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command deploy/container/lock.sh \
    --output-file deploy/container/compile.lock "$@"
