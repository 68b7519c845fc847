"""The kustomize packaging: each kustomization.yaml is whole, and renders to valid objects.

Without any tool: every resource a kustomization lists exists, every manifest beside it
is listed (so no file is silently left out of ``kubectl apply -k``), and its ``images``
entry names the image the manifests use. With kubectl (its built-in kustomize), the
rendered output is validated too, and carries the image and namespace it should.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.ci import unavailable
from helpers.deploy import (
    K8S_VERSION,
    REPO_ROOT,
    kustomization_dirs,
    load_yaml,
    manifests,
    pod_spec,
    validation_problem,
)

DIRS = kustomization_dirs()
IDS = [str(path.relative_to(REPO_ROOT)) for path in DIRS]
# The kustomization fields these packages use; anything else needs a test of its own here.
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "replacements"}
_KUBECTL_SECONDS = 60.0


def _images(docs: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for doc in docs:
        if doc.get("kind") == "Deployment":
            spec = pod_spec(doc)
            for container in spec.get("initContainers", []) + spec["containers"]:
                found.add(container["image"])
    return found


def test_layouts_are_packaged() -> None:
    assert IDS == [
        "deploy/kubernetes/egress",
        "deploy/kubernetes/sidecar",
        "deploy/kubernetes/sidecar-classic",
        "deploy/kubernetes/sidecar-dns",
    ]


@pytest.mark.parametrize("directory", DIRS, ids=IDS)
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    kustomization = load_yaml(directory / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= KNOWN_FIELDS, set(kustomization) - KNOWN_FIELDS
    listed = kustomization["resources"]
    for resource in listed:
        assert (directory / resource).is_file(), resource
    beside = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == beside


@pytest.mark.parametrize("directory", DIRS, ids=IDS)
def test_kustomization_images_name_the_proxy_image(directory: Path) -> None:
    kustomization = load_yaml(directory / "kustomization.yaml")
    docs = [m.doc for m in manifests(directory) if m.path.parent == directory]
    used = {image.rpartition(":")[0] for image in _images(docs)}
    for entry in kustomization["images"]:
        assert entry["name"] in used, entry
        assert "ipv4proxy" in entry["name"]


def _kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed (its built-in kustomize renders the packages)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=_KUBECTL_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.mark.parametrize("directory", DIRS, ids=IDS)
def test_rendered_package_is_valid(directory: Path) -> None:
    rendered = _kubectl_kustomize(directory)
    files = [m.doc for m in manifests(directory) if m.path.parent == directory]

    def names(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(doc["kind"], doc["metadata"]["name"]) for doc in docs}

    assert names(rendered) == names(files)
    for doc in rendered:
        assert validation_problem(doc, K8S_VERSION) is None, doc["metadata"]["name"]
    kustomization = load_yaml(directory / "kustomization.yaml")
    wanted = {f"{e['newName']}:{e['newTag']}" for e in kustomization["images"]}
    assert wanted <= _images(rendered)
    namespace = kustomization.get("namespace")
    if namespace is not None:
        for doc in rendered:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


@pytest.mark.parametrize("namespace", [None, "whatsapp-prod"])
def test_dns_sidecar_search_domain_follows_the_namespace(
    tmp_path: Path, namespace: str | None
) -> None:
    """`replacements` (the one package that uses it): the pod's first search domain is its
    own namespace's, as ClusterFirst would give, whatever `namespace:` the operator sets."""
    source = REPO_ROOT / "deploy" / "kubernetes" / "sidecar-dns"
    kustomization = load_yaml(source / "kustomization.yaml")
    for path in source.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    if namespace is not None:
        kustomization["namespace"] = namespace
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    wanted = namespace or kustomization["namespace"]
    (deployment,) = [d for d in _kubectl_kustomize(tmp_path) if d["kind"] == "Deployment"]
    assert deployment["metadata"]["namespace"] == wanted
    searches = pod_spec(deployment)["dnsConfig"]["searches"]
    assert searches == [f"{wanted}.svc.cluster.local", "svc.cluster.local", "cluster.local"]
