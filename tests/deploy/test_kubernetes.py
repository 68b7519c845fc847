"""The Kubernetes manifests: valid for the stated versions, and consistent with ipv4proxy.

Offline schema validation with kubernetes-validate (strict: an unknown or misspelt field
fails). Then what a schema cannot see: the ports and probe paths match the configuration
the pod really mounts, the sidecar starts before the gateway and outlives it, the drain
fits in terminationGracePeriodSeconds, the gateway's proxy variables point at the proxy,
the egress tier is closed to strangers and its Service, HPA, PDB and NetworkPolicy all
select or name the same pods.
"""

from __future__ import annotations

import ipaddress
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


@pytest.mark.parametrize("layout", ["sidecar", "sidecar-dns"])
def test_native_sidecar_is_refused_by_an_old_schema(layout: str) -> None:
    """The schema check is real: an init container's restartPolicy came in 1.28 (alpha; on
    by default from 1.29, which docs/deployment.md names), so the 1.27 schema refuses it."""
    deployment = _one(_in(layout), "Deployment").doc
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

LAYOUTS = ["sidecar", "sidecar-classic", "sidecar-dns", "egress"]


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
        if layout == "sidecar-dns" and probe == "startupProbe":
            continue  # it asks the DNS listener (test_dns_sidecar_waits_for_dns_answers)
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


@pytest.mark.parametrize("layout", ["sidecar", "sidecar-dns"])
def test_native_sidecar_starts_first_and_stops_last(layout: str) -> None:
    config, deployment = _proxy_config(layout)
    spec = pod_spec(deployment.doc)
    container, is_init = proxy_container(spec)
    assert is_init
    assert container["restartPolicy"] == "Always"
    assert "startupProbe" in container
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


# --- the DNS-mode sidecar -------------------------------------------------------------------

DNS_READY = KUBERNETES.parent / "systemd" / "dns-ready.py"


def test_dns_sidecar_gateway_has_no_proxy_setting() -> None:
    """The point of DNS mode: the gateway runs unchanged, with no proxy variable or preload."""
    _, deployment = _proxy_config("sidecar-dns")
    (gateway,) = [c for c in pod_spec(deployment.doc)["containers"] if c["name"] == "gateway"]
    names = {entry["name"].upper() for entry in gateway.get("env", [])}
    assert not names & {"HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "GLOBAL_AGENT_HTTP_PROXY"}
    assert not [name for name in names if "PROXY" in name], names
    assert gateway["command"] == ["node", "app.js"]


def test_dns_sidecar_pod_resolves_through_the_listener() -> None:
    config, deployment = _proxy_config("sidecar-dns")
    spec = pod_spec(deployment.doc)
    (listen,) = config["dns"]["listen"]
    host, port = listen.rpartition(":")[0], port_of(listen)
    # resolv.conf has no port: the listener must be on 53, at the nameserver's address.
    assert port == 53
    assert spec["dnsPolicy"] == "None"
    dns_config = spec["dnsConfig"]
    assert dns_config["nameservers"] == [host] == ["127.0.0.1"]
    # What ClusterFirst gives a pod (the namespace's own domain first; kustomize fills it).
    assert dns_config["searches"][1:] == ["svc.cluster.local", "cluster.local"]
    assert dns_config["searches"][0].endswith(".svc.cluster.local")
    assert dns_config["options"] == [{"name": "ndots", "value": "5"}]
    # Loopback only (no dns.clients): never a resolver for anything outside the pod.
    assert not config["dns"].get("clients")


def test_dns_sidecar_upstream_is_the_cluster_dns_not_itself() -> None:
    """Explicit upstreams, or the proxy would find 127.0.0.1 in resolv.conf and refuse (a loop);
    its own lookups go to the same server rather than through its listener."""
    config, _ = _proxy_config("sidecar-dns")
    upstreams = config["dns"]["upstreams"]
    assert upstreams
    for upstream in upstreams:
        address = ipaddress.IPv4Address(upstream.partition(":")[0])
        assert not address.is_loopback, upstream
    assert config["resolver"]["nameservers"] == upstreams


def test_dns_sidecar_binds_53_without_root_or_capability() -> None:
    """The pod sysctl opens 53 to non-root users of this pod's network namespace only; no
    capability is added (for a non-root process it would not be effective anyway)."""
    config, deployment = _proxy_config("sidecar-dns")
    spec = pod_spec(deployment.doc)
    sysctls = {s["name"]: int(s["value"]) for s in spec["securityContext"]["sysctls"]}
    lowest = min(port_of(listen) for listen in config["dns"]["listen"])
    assert sysctls == {"net.ipv4.ip_unprivileged_port_start": lowest}
    container, _ = proxy_container(spec)
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["runAsNonRoot"] is True
    assert spec.get("hostNetwork") is not True  # a net.* sysctl needs the pod's own netns


def test_dns_sidecar_waits_for_dns_answers() -> None:
    """The gateway starts once the probe got an answer from the DNS listener, run inside the
    pod (an exec probe: the kubelet's tcpSocket/httpGet go to the pod IP, not 127.0.0.1)."""
    config, deployment = _proxy_config("sidecar-dns")
    objects = _in("sidecar-dns")
    spec = pod_spec(deployment.doc)
    container, _ = proxy_container(spec)
    probe = container["startupProbe"]
    python, script, address = probe["exec"]["command"]
    assert python == "python3"  # the image's interpreter (deploy/container/Containerfile)
    assert address == config["dns"]["listen"][0]
    # The script comes from the ConfigMap mounted beside the config, and is the shipped one.
    _, config_path = config_of(deployment, objects)
    assert Path(script).parent == Path(config_path).parent
    configmap = _one(objects, "ConfigMap").doc
    assert configmap["data"][Path(script).name] == DNS_READY.read_text()
    # One try waits up to 2 s for its answer (dns-ready.py TRY_SECONDS).
    assert probe["timeoutSeconds"] > 2
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30
