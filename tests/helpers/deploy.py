"""The files under deploy/, loaded for the tests in tests/deploy/.

Manifests are read as YAML documents; the ipv4proxy configuration each deployment uses is
found the way the kubelet would find it (the ``--config`` argument, the volume mounted at
its directory, the ConfigMap behind that volume), so a test checks what would really run.
`check_config` runs the real ``python3 -m ipv4proxy check-config`` on a configuration.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from helpers.programs import run_ipv4proxy

__all__ = [
    "DEPLOY",
    "K8S_OLDEST",
    "K8S_VERSION",
    "KUBERNETES",
    "REPO_ROOT",
    "Manifest",
    "check_config",
    "config_of",
    "container_port",
    "kustomization_dirs",
    "load_yaml",
    "manifests",
    "pod_spec",
    "port_of",
    "proxy_container",
    "validation_problem",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# Every manifest is validated against this version's schemas (kubernetes-validate ships
# them, so no network is needed); the layouts that do not need native sidecars also
# against the oldest version docs/deployment.md claims for them.
K8S_VERSION = "1.31.0"
K8S_OLDEST = "1.27.0"


@dataclass(frozen=True)
class Manifest:
    """One YAML document of a manifest file."""

    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}#{self.index}"

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def manifests(root: Path = KUBERNETES) -> list[Manifest]:
    """Every Kubernetes object under ``root`` (kustomization files aside), in path order."""
    found: list[Manifest] = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for index, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}#{index}: not a mapping"
                found.append(Manifest(path, index, doc))
    return found


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in KUBERNETES.rglob("kustomization.yaml"))


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _all_containers(spec: dict[str, Any]) -> Iterator[tuple[dict[str, Any], bool]]:
    for container in spec.get("initContainers", []):
        yield container, True
    for container in spec.get("containers", []):
        yield container, False


def proxy_container(spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The ipv4proxy container of a pod spec, and whether it is an init container."""
    found = [(c, init) for c, init in _all_containers(spec) if c["name"] == "ipv4proxy"]
    assert len(found) == 1, f"expected one container named ipv4proxy, got {len(found)}"
    return found[0]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe's or Service's port (a number or a container port's name)."""
    if isinstance(port, int):
        return port
    for entry in container.get("ports", []):
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def port_of(hostport: str) -> int:
    return int(hostport.rpartition(":")[2])


def config_of(deployment: Manifest, objects: Sequence[Manifest]) -> tuple[str, str]:
    """The ipv4proxy config text a Deployment runs with, and the path it is read from.

    Follows ``--config PATH`` to the volume mounted at PATH's directory and to the
    ConfigMap behind it, among ``objects`` (the manifests of the same kustomization).
    """
    spec = pod_spec(deployment.doc)
    container, _ = proxy_container(spec)
    args = list(container.get("args", []))
    assert "--config" in args, f"{deployment.name}: ipv4proxy has no --config argument"
    path = PurePosixPath(args[args.index("--config") + 1])
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == str(path.parent)]
    assert len(mounts) == 1, f"{deployment.name}: nothing mounted at {path.parent}"
    volumes = [v for v in spec.get("volumes", []) if v["name"] == mounts[0]["name"]]
    assert len(volumes) == 1, f"{deployment.name}: no volume {mounts[0]['name']}"
    assert "configMap" in volumes[0], f"{deployment.name}: {path.parent} is not a ConfigMap"
    name = volumes[0]["configMap"]["name"]
    maps = [m for m in objects if m.kind == "ConfigMap" and m.doc["metadata"]["name"] == name]
    assert len(maps) == 1, f"{deployment.name}: ConfigMap {name} is not beside it"
    data = maps[0].doc.get("data", {})
    assert path.name in data, f"ConfigMap {name} has no key {path.name}"
    return str(data[path.name]), str(path)


def check_config(
    text: str, directory: Path, extra_args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``python3 -m ipv4proxy check-config --config FILE [extra_args]`` on ``text``.

    ``IPV4PROXY_*`` variables of the test run are removed, so only the file speaks.
    """
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return run_ipv4proxy(["check-config", "--config", str(path), *extra_args])


def validation_problem(doc: dict[str, Any], version: str) -> str | None:
    """Why ``doc`` is not a valid object for Kubernetes ``version`` (strict), or None."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        return f"{where}: {exc.message}"
    return None
