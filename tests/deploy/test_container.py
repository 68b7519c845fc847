"""The container recipe, read instruction by instruction (tests/deploy/test_image.py builds
the image and runs it; these checks need no container engine and run everywhere).

What is checked: the final stage runs as a numeric non-root user, writes no bytecode,
bakes in the default config where IPV4PROXY_CONFIG points, validates it at build time,
exposes the proxy and admin ports of that config, and has a HEALTHCHECK that runs
`ipv4proxy healthcheck` (Python: the image has no curl); the dependencies come from the
hash-checked lock; the build context (.dockerignore) lets in exactly what the COPY
instructions need.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

import yaml

from helpers.deploy import DEPLOY, REPO_ROOT, port_of

CONTAINERFILE = DEPLOY / "container" / "Containerfile"
BAKED = DEPLOY / "container" / "config.yaml"


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == name]

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                found[key] = value
        return found


def _stages(text: str) -> list[Stage]:
    joined = re.sub(r"\\\n", " ", text)
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append(Stage(base=args.split()[0]))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


STAGES = _stages(CONTAINERFILE.read_text())
FINAL = STAGES[-1]
CONFIG = yaml.safe_load(BAKED.read_text())


def test_two_stages_on_a_slim_python() -> None:
    assert len(STAGES) == 2
    assert "slim" in CONTAINERFILE.read_text().split("ARG PYTHON_IMAGE=")[1].split()[0]
    assert FINAL.all("COPY")[0].startswith("--from=build /opt/ipv4proxy ")


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = FINAL.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so runAsNonRoot can check it without /etc/passwd"
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0


def test_read_only_root_friendly() -> None:
    env = FINAL.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert FINAL.all("WORKDIR") == ["/tmp"]
    build = STAGES[0]
    assert any("compileall" in run for run in build.all("RUN")), "bytecode made at build time"


def test_default_config_is_baked_in_and_checked() -> None:
    env = FINAL.env()
    assert f"deploy/container/config.yaml {env['IPV4PROXY_CONFIG']}" in FINAL.all("COPY")
    runs = FINAL.all("RUN")
    assert any(f"check-config --config {env['IPV4PROXY_CONFIG']}" in run for run in runs)
    assert FINAL.all("ENTRYPOINT") == ['["ipv4proxy"]']


def test_exposes_the_ports_of_the_baked_config() -> None:
    (expose,) = FINAL.all("EXPOSE")
    ports = {int(port) for port in expose.split()}
    assert ports == {CONFIG["listeners"][0]["port"], port_of(CONFIG["admin"]["listen"])}


def test_healthcheck_runs_the_healthcheck_command() -> None:
    (healthcheck,) = FINAL.all("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    # Not a fixed port: the command finds the admin listener in the running proxy's own
    # configuration (tests/deploy/test_healthcheck.py, and test_image.py with a flag).
    assert json.loads(command) == ["ipv4proxy", "healthcheck"]
    assert "curl" not in CONTAINERFILE.read_text().replace("no curl", "")


def test_dependencies_come_from_the_hash_checked_lock() -> None:
    build = STAGES[0]
    assert "deploy/container/requirements.lock deploy/container/compile.lock ./" in build.all(
        "COPY"
    )
    runs = build.all("RUN")
    locked = [run for run in runs if "-r requirements.lock" in run]
    assert len(locked) == 1
    for lock in ("requirements.lock", "compile.lock"):
        command = locked[0].split(f"-r {lock}")[0].rsplit("pip install", 1)[1]
        assert "--require-hashes" in command, lock
        assert "--only-binary :all:" in command, f"{lock}: wheels only, no sdist compiled"
    project = [run for run in runs if "install" in run and " ." in run]
    assert len(project) == 1
    assert "--no-deps" in project[0], "nothing but the lock's pins"
    assert "--no-index" in project[0]
    assert "pip check" in project[0]


def test_the_build_stage_compiles_the_pure_layers_and_leaves_the_compiler_behind() -> None:
    """mypy goes to /opt/compile (outside the venv the final image copies), the package is
    built with IPV4PROXY_MYPYC=1 (which fails rather than fall back to pure Python), and
    the final stage installs no compiler."""
    build = STAGES[0]
    runs = build.all("RUN")
    (compile_tools,) = [run for run in runs if "-r compile.lock" in run]
    assert "--target /opt/compile" in compile_tools
    (project,) = [run for run in runs if "install" in run and " ." in run]
    assert "IPV4PROXY_MYPYC=1 PYTHONPATH=/opt/compile" in project
    assert "rm -rf /opt/compile" in project
    assert any("apt-get install" in run and "gcc" in run for run in runs)
    assert not any("apt-get" in run for run in FINAL.all("RUN")), "no compiler in the image"


def test_build_context_lets_in_what_copy_needs() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    copied: set[str] = set()
    for stage in STAGES:
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            copied.update(args.split()[:-1])
    for source in copied:
        assert any(source == a or source.startswith(a + "/") for a in allowed), source
        assert (REPO_ROOT / source).exists(), source


def test_baked_listener_is_not_open_to_everyone() -> None:
    (listener,) = CONFIG["listeners"]
    assert listener["host"] == "0.0.0.0"
    assert listener["clients"], "a non-loopback listener names its clients"
    assert "0.0.0.0/0" not in listener["clients"]


def test_deployment_docs_build_this_containerfile() -> None:
    docs = (REPO_ROOT / "docs" / "deployment.md").read_text()
    assert f"-f {CONTAINERFILE.relative_to(REPO_ROOT)} " in docs
