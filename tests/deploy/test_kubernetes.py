"""The Kubernetes manifests: valid for the stated versions, and consistent with ipv4proxy.

Offline schema validation with kubernetes-validate (strict: an unknown or misspelt field
fails). Then what a schema cannot see: the ports and probe paths match the configuration
the pod really mounts, the sidecar starts before the gateway and outlives it, the drain
fits in terminationGracePeriodSeconds, the gateway's proxy variables point at the proxy,
the egress tier is closed to strangers and its Service, HPA, PDB and NetworkPolicy all
select or name the same pods.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.deploy import (
    K8S_OLDEST,
    K8S_VERSION,
    KUBERNETES,
    Manifest,
    config_of,
    container_port,
    manifests,
    pod_spec,
    port_of,
    proxy_container,
    validation_problem,
)

ALL = manifests()
# Seconds left between the end of the proxy's drain and the kubelet's SIGKILL.
MARGIN_SECONDS = 5


def _in(directory: str) -> list[Manifest]:
    return [m for m in ALL if m.path.parent == KUBERNETES / directory]


def _one(objects: Iterable[Manifest], kind: str) -> Manifest:
    found = [m for m in objects if m.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {[m.name for m in found]}"
    return found[0]


def _proxy_config(directory: str) -> tuple[dict[str, Any], Manifest]:
    objects = _in(directory)
    deployment = _one(objects, "Deployment")
    text, _ = config_of(deployment, objects)
    config = yaml.safe_load(text)
    assert isinstance(config, dict)
    return config, deployment


def _sleep_seconds(hook: dict[str, Any]) -> int:
    command = hook["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", ALL, ids=[m.name for m in ALL])
def test_manifest_is_valid(manifest: Manifest) -> None:
    assert validation_problem(manifest.doc, K8S_VERSION) is None


OLD_CLUSTER = [m for m in ALL if m.path.parent.name in {"sidecar-classic", "egress", "examples"}]


@pytest.mark.parametrize("manifest", OLD_CLUSTER, ids=[m.name for m in OLD_CLUSTER])
def test_manifest_without_native_sidecar_is_valid_on_the_oldest_version(
    manifest: Manifest,
) -> None:
    assert validation_problem(manifest.doc, K8S_OLDEST) is None


def test_native_sidecar_is_refused_by_an_old_schema() -> None:
    """The schema check is real: an init container's restartPolicy came in 1.28 (alpha; on
    by default from 1.29, which the README names), so the 1.27 schema refuses it."""
    deployment = _one(_in("sidecar"), "Deployment").doc
    assert validation_problem(deployment, "1.29.0") is None
    problem = validation_problem(deployment, K8S_OLDEST)
    assert problem is not None
    assert "restartPolicy" in problem


def test_validation_catches_a_misspelt_field() -> None:
    deployment = _one(_in("sidecar"), "Deployment").doc
    broken = yaml.safe_load(yaml.safe_dump(deployment).replace("readinessProbe", "readynessProbe"))
    problem = validation_problem(broken, K8S_VERSION)
    assert problem is not None
    assert "readynessProbe" in problem


# --- every ipv4proxy container --------------------------------------------------------------

LAYOUTS = ["sidecar", "sidecar-classic", "egress"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ports_and_probes_match_the_config(layout: str) -> None:
    config, deployment = _proxy_config(layout)
    container, _ = proxy_container(pod_spec(deployment.doc))
    assert container_port(container, "proxy") == config["listeners"][0]["port"]
    admin_port = port_of(config["admin"]["listen"])
    assert container_port(container, "admin") == admin_port
    # The kubelet probes the pod's IP, so the admin listener must not be loopback only.
    assert config["admin"]["listen"].startswith("0.0.0.0:"), config["admin"]
    probes = {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    for probe, path in probes.items():
        if probe not in container:
            # Classic containers start without waiting for a startup probe (postStart does).
            assert probe == "startupProbe", probe
            assert layout == "sidecar-classic", layout
            continue
        http = container[probe]["httpGet"]
        assert http["path"] == path, (probe, http)
        assert container_port(container, http["port"]) == admin_port, (probe, http)
    annotations = deployment.doc["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_security_context(layout: str) -> None:
    _, deployment = _proxy_config(layout)
    spec = pod_spec(deployment.doc)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        # A read-only root still needs a writable /tmp.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, container["name"]


def test_image_user_matches_pod_user() -> None:
    containerfile = (KUBERNETES.parent / "container" / "Containerfile").read_text()
    users = re.findall(r"^USER (\d+):(\d+)$", containerfile, re.MULTILINE)
    for layout in LAYOUTS:
        spec = pod_spec(_proxy_config(layout)[1].doc)
        uid, gid = spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]
        assert users == [(str(uid), str(gid))], layout


# --- the sidecar layouts --------------------------------------------------------------------


def _gateway_env(spec: dict[str, Any]) -> dict[str, str]:
    (gateway,) = [c for c in spec["containers"] if c["name"] == "gateway"]
    return {entry["name"]: entry["value"] for entry in gateway["env"] if "value" in entry}


@pytest.mark.parametrize("layout", ["sidecar", "sidecar-classic"])
def test_gateway_environment_points_at_the_sidecar(layout: str) -> None:
    config, deployment = _proxy_config(layout)
    listener = config["listeners"][0]
    # Only the pod's own containers may use a sidecar: it listens on loopback.
    assert listener["host"] == "127.0.0.1"
    url = f"http://127.0.0.1:{listener['port']}"
    env = _gateway_env(pod_spec(deployment.doc))
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        assert env[name] == url, name
    assert env["GLOBAL_AGENT_HTTP_PROXY"] == url
    for name in ("NO_PROXY", "no_proxy"):
        entries = env[name].split(",")
        for internal in ("localhost", "127.0.0.1", ".svc", ".cluster.local"):
            assert internal in entries, (name, internal)
        assert "$(KUBERNETES_SERVICE_HOST)" in entries
    agent_entries = env["GLOBAL_AGENT_NO_PROXY"].split(",")
    for internal in ("localhost", "127.0.0.1", "*.svc", "*.cluster.local"):
        assert internal in agent_entries, internal
    (gateway,) = [c for c in pod_spec(deployment.doc)["containers"] if c["name"] == "gateway"]
    assert gateway["command"][:3] == ["node", "-r", "global-agent/bootstrap"]


def test_native_sidecar_starts_first_and_stops_last() -> None:
    config, deployment = _proxy_config("sidecar")
    spec = pod_spec(deployment.doc)
    container, is_init = proxy_container(spec)
    assert is_init
    assert container["restartPolicy"] == "Always"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert [c["name"] for c in spec["containers"]] == ["gateway"]
    # The proxy gets SIGTERM after the gateway has gone; its drain must fit in what is left.
    grace = spec["terminationGracePeriodSeconds"]
    assert config["drain"]["grace_period"] + MARGIN_SECONDS <= grace


def test_classic_sidecar_start_and_stop_order() -> None:
    config, deployment = _proxy_config("sidecar-classic")
    spec = pod_spec(deployment.doc)
    container, is_init = proxy_container(spec)
    assert not is_init
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["ipv4proxy", "gateway"]
    # postStart holds the gateway's start until the proxy is ready.
    hook = "\n".join(container["lifecycle"]["postStart"]["exec"]["command"])
    admin_port = port_of(config["admin"]["listen"])
    assert f'"127.0.0.1", {admin_port}' in hook
    assert '"/readyz"' in hook
    # preStop keeps it serving while the gateway shuts down; then the drain; then SIGKILL.
    pause = _sleep_seconds(container["lifecycle"]["preStop"])
    grace = spec["terminationGracePeriodSeconds"]
    assert pause + config["drain"]["grace_period"] + MARGIN_SECONDS <= grace
    caveat = (KUBERNETES / "sidecar-classic" / "deployment.yaml").read_text()
    assert "start-order caveat" in caveat


# --- the egress tier ------------------------------------------------------------------------


def test_egress_listener_is_closed_to_strangers() -> None:
    config, deployment = _proxy_config("egress")
    (listener,) = config["listeners"]
    assert listener["host"] == "0.0.0.0"
    assert listener["clients"], "a shared tier names its client CIDRs"
    users_file = Path(config["auth"]["users_file"])
    container, _ = proxy_container(pod_spec(deployment.doc))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment.doc)["volumes"]}
    secret_mounts = [name for name in mounts if "secret" in volumes[name]]
    assert len(secret_mounts) == 1
    (name,) = secret_mounts
    assert users_file.parent == Path(mounts[name])
    items = volumes[name]["secret"]["items"]
    assert [item["path"] for item in items] == [users_file.name]


def test_egress_drain_fits_the_grace_period() -> None:
    config, deployment = _proxy_config("egress")
    spec = pod_spec(deployment.doc)
    container, _ = proxy_container(spec)
    pause = _sleep_seconds(container["lifecycle"]["preStop"])
    grace = spec["terminationGracePeriodSeconds"]
    assert pause + config["drain"]["grace_period"] + MARGIN_SECONDS <= grace


def test_egress_objects_select_the_same_pods() -> None:
    config, deployment = _proxy_config("egress")
    objects = _in("egress")
    labels = deployment.doc["spec"]["template"]["metadata"]["labels"]
    name = deployment.doc["metadata"]["name"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    assert selects(deployment.doc["spec"]["selector"]["matchLabels"])
    service = _one(objects, "Service").doc
    assert selects(service["spec"]["selector"])
    pdb = _one(objects, "PodDisruptionBudget").doc
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    policy = _one(objects, "NetworkPolicy").doc
    assert selects(policy["spec"]["podSelector"]["matchLabels"])
    hpa = _one(objects, "HorizontalPodAutoscaler").doc
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    assert hpa["spec"]["minReplicas"] >= 2, "one replica leaves nothing during a disruption"
    container, _ = proxy_container(pod_spec(deployment.doc))
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert container_port(container, ports["proxy"]["targetPort"]) == config["listeners"][0]["port"]
    assert container_port(container, ports["admin"]["targetPort"]) == port_of(
        config["admin"]["listen"]
    )


def test_egress_network_policy() -> None:
    config, _ = _proxy_config("egress")
    policy = _one(_in("egress"), "NetworkPolicy").doc["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = {
        (p["protocol"], p["port"]) for rule in policy["ingress"] for p in rule["ports"]
    }
    assert ingress_ports == {
        ("TCP", config["listeners"][0]["port"]),
        ("TCP", port_of(config["admin"]["listen"])),
    }
    proxy_rule = next(
        rule
        for rule in policy["ingress"]
        if rule["ports"] == [{"protocol": "TCP", "port": config["listeners"][0]["port"]}]
    )
    for peer in proxy_rule["from"]:  # a namespace *and* pod selector in one peer, never open
        assert peer["namespaceSelector"]["matchLabels"]
        assert peer["podSelector"]["matchLabels"]
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 80), ("TCP", 443), ("TCP", 5222)}
    blocks = [
        peer["ipBlock"] for rule in policy["egress"] for peer in rule["to"] if "ipBlock" in peer
    ]
    assert all("169.254.0.0/16" in block.get("except", []) for block in blocks), blocks
