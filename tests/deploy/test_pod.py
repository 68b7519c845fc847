"""The sidecars of deploy/kubernetes/ played as pods: `podman kube play`.

The repository's ConfigMap and Deployment are played with what a test must change, and
nothing else:

- the images: the proxy is the image built from the Containerfile (tests/deploy/
  test_image.py); the gateway is a stand-in from the same base (tests/helpers/containers/
  gateway.py) that keeps the manifest's environment and security context, waits for
  /readyz as docs/deployment.md asks of a gateway, resolves and fetches its URLs and
  records the results; a stand-in destination (origin.py) is another container;
- what keeps a played pod to itself (`_isolate`): no `ports` (podman 4.3 publishes every
  containerPort on the host's 0.0.0.0), prefixed emptyDir volume names.

**Classic** (sidecar-classic/): a hostAliases entry points origin.test at the pod's
loopback, and IPV4PROXY_POLICY_OPEN_CIDRS=127.0.0.0/8 in the proxy's environment lets it
reach a loopback destination (refused by default); the ConfigMap applies unchanged.
Checked: the proxy runs the ConfigMap's configuration (listening on 127.0.0.1:3128, not
the image's baked 0.0.0.0), the gateway's HTTPS (CONNECT) and HTTP (forwarding) requests
went through it (its access log names both), every probe's port exists and answers on the
pod's IP as the kubelet would ask it, the proxy listener is not reachable there (loopback
only), and the proxy exits 0 when the pod stops.

**DNS mode** (sidecar-dns/): the cluster DNS is a stand-in in the pod (dnsorigin.py, on
127.0.0.1:5353, with an A and an AAAA record for origin.test), named in the ConfigMap's
dns.upstreams and resolver.nameservers; the native sidecar becomes the first ordinary
container; the pod's sysctl is written by the privileged stand-in destination (podman 4.3
does not apply a pod's sysctls). Checked: the gateway's resolv.conf names only 127.0.0.1
(the pod's dnsConfig), the proxy binds 127.0.0.1:53 as uid 10001, the gateway's
getaddrinfo sees only 127.0.0.1 (no ::1: the sidecar drops AAAA answers) and its direct
request, with no proxy setting, reaches the destination.

What podman 4.3 cannot show, so this test does not cover it (the schema and wiring tests in
test_kubernetes.py do): lifecycle hooks (podman runs neither postStart, which holds the
classic gateway's start until the proxy is ready, nor preStop; the gateway's own wait for
/readyz is what is tested), the stop order, the kubelet's probes (podman turns an httpGet
probe with a named port into `curl http://localhost:0/...`, and the image has no curl; the
probes' paths and ports are asked here directly), and native sidecars (podman rejects
probes on init containers and ignores their `restartPolicy: Always`): the DNS sidecar's
startupProbe gate and its start and stop order.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from helpers.deploy import KUBERNETES, container_port
from helpers.podman import Podman

pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]

CONTAINERS = Path(__file__).resolve().parents[1] / "helpers" / "containers"
CLASSIC = KUBERNETES / "sidecar-classic"
ORIGIN_NAME = "origin.test"
URLS = (f"https://{ORIGIN_NAME}/tls", f"http://{ORIGIN_NAME}/plain")
# Bounds: the gateway's records (its own wait for /readyz is at most 60 s), the pod's stop.
RECORDS_SECONDS = 90.0
STOP_SECONDS = 60


def _container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    assert isinstance(found, dict)
    return found


def _played(image: str, base: str, srv: Path, name: str) -> list[dict[str, Any]]:
    """The classic sidecar's ConfigMap and Deployment, with the test's stand-ins."""
    configmap = yaml.safe_load((CLASSIC / "configmap.yaml").read_text())
    deployment = yaml.safe_load((CLASSIC / "deployment.yaml").read_text())
    deployment["metadata"]["name"] = name
    spec = deployment["spec"]["template"]["spec"]
    proxy = _container(spec, "ipv4proxy")
    proxy["image"] = image
    proxy.setdefault("env", []).append(
        {"name": "IPV4PROXY_POLICY_OPEN_CIDRS", "value": "127.0.0.0/8"}
    )
    gateway = _container(spec, "gateway")
    gateway["image"] = base
    gateway["command"] = ["python3", "/srv/gateway.py", *URLS]
    gateway["env"].append({"name": "SSL_CERT_FILE", "value": "/srv/ca.pem"})
    srv_mount = {"name": "test-srv", "mountPath": "/srv", "readOnly": True}
    gateway["volumeMounts"].append(srv_mount)
    origin = {
        "name": "origin",
        "image": base,
        "command": [
            *("python3", "/srv/origin.py", "--http", "80", "--https", "443"),
            *("--cert", "/srv/origin.pem", "--key", "/srv/origin.key"),
        ],
        # Ports 80 and 443: root in its own container (a stand-in, not part of the manifest).
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
        "volumeMounts": [srv_mount],
    }
    spec["containers"].append(origin)
    spec["volumes"].append(
        {"name": "test-srv", "hostPath": {"path": str(srv), "type": "Directory"}}
    )
    spec["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": [ORIGIN_NAME]}]
    return [configmap, deployment]


def _play(podman: Podman, docs: list[dict[str, Any]], srv: Path) -> PlayedPod:
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    name = deployment["metadata"]["name"]
    volumes = _isolate(deployment["spec"]["template"]["spec"], name)
    manifest = srv / "played.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    pod = PlayedPod(podman, name, manifest, volumes)
    pod.remove()  # a pod left over by a killed run of this PID
    try:
        podman.run(["kube", "play", str(manifest)], timeout=STOP_SECONDS)
    except BaseException:
        pod.remove()
        raise
    return pod


def _isolate(spec: dict[str, Any], name: str) -> list[str]:
    """What keeps a played pod to itself; returns the names of the volumes it will make.

    Podman 4.3 publishes every containerPort on the host's 0.0.0.0 (a kubelet publishes
    nothing without hostPort), so the played copy lists no ports (the probes' named ports
    are resolved from the repository's manifest); and it makes each emptyDir a named
    volume, shared with any other pod that uses the name, so they are prefixed."""
    renamed: dict[str, str] = {}
    made: list[str] = []
    for volume in spec["volumes"]:
        if "emptyDir" in volume:
            renamed[volume["name"]] = volume["name"] = f"{name}-{volume['name']}"
            made.append(volume["name"])
        elif "configMap" in volume:
            # A volume named after the ConfigMap, kept after the pod; a later play would
            # find the old content in it: removed before and after each play.
            made.append(volume["configMap"]["name"])
    for container in spec["containers"] + spec.get("initContainers", []):
        container.pop("ports", None)
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    return made


class PlayedPod:
    def __init__(self, podman: Podman, name: str, manifest: Path, volumes: list[str]) -> None:
        self.podman = podman
        # A Deployment's pod: podman names it after its replica.
        self.name = f"{name}-pod-0"
        self.manifest = manifest
        self.volumes = volumes

    def remove(self) -> None:
        self.podman.run(["pod", "rm", "--force", "--time", "0", self.name], check=False)
        if self.volumes:
            self.podman.run(["volume", "rm", "--force", *self.volumes], check=False)

    def container(self, name: str) -> str:
        return f"{self.name}-{name}"

    def records(self) -> list[dict[str, Any]]:
        lines = self.podman.logs(self.container("gateway"))
        return [json.loads(line) for line in lines if line.startswith("{")]

    def ip(self) -> str:
        infra = self.podman.run(["pod", "inspect", self.name, "--format", "{{.InfraContainerID}}"])
        done = self.podman.run(
            ["inspect", infra.stdout.strip(), "--format", "{{json .NetworkSettings.Networks}}"]
        )
        networks = json.loads(done.stdout)
        (address,) = {network["IPAddress"] for network in networks.values()}
        return str(address)


@pytest.fixture(scope="module")
def played(
    podman: Podman, image: str, base: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlayedPod]:
    srv = tmp_path_factory.mktemp("pod-srv")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(srv / "ca.pem"))
    leaf = ca.issue_cert(ORIGIN_NAME)
    leaf.private_key_pem.write_to_path(str(srv / "origin.key"))
    leaf.cert_chain_pems[0].write_to_path(str(srv / "origin.pem"))
    _serve(srv, ("gateway.py", "origin.py"))
    name = f"ipv4proxy-classic-{os.getpid()}"
    pod = _play(podman, _played(image, base, srv, name), srv)
    try:
        yield pod
    finally:
        pod.remove()


def _serve(srv: Path, scripts: Sequence[str]) -> None:
    """Put ``scripts`` (tests/helpers/containers) into ``srv``, the directory the pod's
    containers mount, and make all of it readable: the containers run as uid 10001."""
    for script in scripts:
        (srv / script).write_text((CONTAINERS / script).read_text())
    for path in srv.iterdir():
        path.chmod(0o644)
    srv.chmod(0o755)


def _wait_for_records(pod: PlayedPod) -> list[dict[str, Any]]:
    deadline = time.monotonic() + RECORDS_SECONDS
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = pod.records()
        if any(record["event"] in ("done", "never-ready") for record in records):
            return records
        time.sleep(0.5)
    raise AssertionError(f"the gateway did not finish in {RECORDS_SECONDS} s: {records}")


def test_gateway_traffic_goes_through_the_sidecar(played: PlayedPod) -> None:
    records = _wait_for_records(played)
    assert records[0]["event"] == "ready", records
    fetched = {r["url"]: r for r in records if r["event"] in ("fetched", "failed")}
    assert fetched[URLS[0]].get("body") == "origin https 443 /tls\n", fetched
    assert fetched[URLS[1]].get("body") == "origin http 80 /plain\n", fetched

    logs = played.podman.logs(played.container("ipv4proxy"))
    # The ConfigMap's configuration, not the one baked into the image (0.0.0.0:3128).
    assert any('"address":"127.0.0.1:3128"' in line for line in logs), logs[:5]
    access = [json.loads(line) for line in logs if '"event":"tunnel"' in line]
    destinations = {(str(a.get("protocol")), str(a.get("target"))) for a in access}
    assert ("http-connect", f"{ORIGIN_NAME}:443") in destinations, access
    assert ("http-forward", f"{ORIGIN_NAME}:80") in destinations, access


def _get(host: str, port: int, path: str) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_probes_ask_ports_that_exist(played: PlayedPod) -> None:
    _wait_for_records(played)
    deployment = yaml.safe_load((CLASSIC / "deployment.yaml").read_text())
    proxy = _container(deployment["spec"]["template"]["spec"], "ipv4proxy")
    ip = played.ip()
    probes = [
        proxy[kind] for kind in ("readinessProbe", "livenessProbe", "startupProbe") if kind in proxy
    ]
    assert probes
    for probe in probes:
        port = probe["httpGet"]["port"]
        number = port if isinstance(port, int) else container_port(proxy, port)
        # As the kubelet asks: the pod's IP, the probe's port and path.
        assert _get(ip, number, probe["httpGet"]["path"]) == 200, probe
    # The proxy listener is the pod's own: loopback only.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, container_port(proxy, "proxy")), timeout=5).close()


def test_proxy_exits_cleanly_when_the_pod_stops(played: PlayedPod) -> None:
    _wait_for_records(played)
    played.podman.run(
        ["pod", "stop", "--time", str(STOP_SECONDS), played.name], timeout=STOP_SECONDS + 30
    )
    proxy = played.container("ipv4proxy")
    exit_code = played.podman.run(["inspect", proxy, "--format", "{{.State.ExitCode}}"])
    assert exit_code.stdout.strip() == "0"
    assert any('"event":"stopped"' in line for line in played.podman.logs(proxy))


# --- DNS mode -----------------------------------------------------------------------------

DNS = KUBERNETES / "sidecar-dns"
DNS_URL = f"http://{ORIGIN_NAME}/dns"
UPSTREAM = "127.0.0.1:5353"


def _played_dns(image: str, base: str, srv: Path, name: str) -> list[dict[str, Any]]:
    """The DNS-mode sidecar's ConfigMap and Deployment, with the test's stand-ins."""
    configmap = yaml.safe_load((DNS / "configmap.yaml").read_text())
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    # The cluster DNS Service is a stand-in in the pod (dnsorigin.py), which knows an A and
    # an AAAA record for origin.test.
    config["dns"]["upstreams"] = [UPSTREAM]
    config["resolver"]["nameservers"] = [UPSTREAM]
    configmap["data"]["config.yaml"] = yaml.safe_dump(config)
    deployment = yaml.safe_load((DNS / "deployment.yaml").read_text())
    deployment["metadata"]["name"] = name
    spec = deployment["spec"]["template"]["spec"]
    # Podman 4.3 cannot run a native sidecar: it becomes the first ordinary container.
    (proxy,) = spec.pop("initContainers")
    del proxy["restartPolicy"]
    proxy["image"] = image
    spec["containers"].insert(0, proxy)
    gateway = _container(spec, "gateway")
    gateway["image"] = base
    gateway["command"] = ["python3", "/srv/gateway.py", DNS_URL]
    srv_mount = {"name": "test-srv", "mountPath": "/srv", "readOnly": True}
    gateway["volumeMounts"].append(srv_mount)
    upstream_port = UPSTREAM.rpartition(":")[2]
    # Podman 4.3 does not apply the pod's sysctls; the kubelet would. The origin, listed
    # first, sets them in the pod's network namespace (the proxy restarts until it can
    # bind port 53, as the pod's restartPolicy says).
    sysctls = [f"{s['name']}={s['value']}" for s in spec["securityContext"]["sysctls"]]
    spec["containers"].insert(
        0,
        {
            "name": "origin",
            "image": base,
            "command": [
                *("python3", "/srv/origin.py", "--http", "80"),
                *(part for sysctl in sysctls for part in ("--sysctl", sysctl)),
            ],
            "securityContext": {"runAsUser": 0, "runAsNonRoot": False, "privileged": True},
            "volumeMounts": [srv_mount],
        },
    )
    spec["containers"] += [
        {
            "name": "upstream",
            "image": image,  # its venv has dnspython
            "command": [
                *("python3", "/srv/dnsorigin.py", upstream_port),
                *(f"{ORIGIN_NAME}=127.0.0.1", f"{ORIGIN_NAME}=::1"),
            ],
            "volumeMounts": [srv_mount],
        },
    ]
    spec["volumes"].append(
        {"name": "test-srv", "hostPath": {"path": str(srv), "type": "Directory"}}
    )
    return [configmap, deployment]


@pytest.fixture(scope="module")
def played_dns(
    podman: Podman, image: str, base: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlayedPod]:
    srv = tmp_path_factory.mktemp("pod-dns-srv")
    _serve(srv, ("gateway.py", "origin.py", "dnsorigin.py"))
    name = f"ipv4proxy-dns-{os.getpid()}"
    pod = _play(podman, _played_dns(image, base, srv, name), srv)
    try:
        yield pod
    finally:
        pod.remove()


def test_dns_mode_gateway_resolves_through_the_sidecar_and_gets_no_aaaa(
    played_dns: PlayedPod,
) -> None:
    records = _wait_for_records(played_dns)
    assert records[0]["event"] == "ready", records
    (resolved,) = [r for r in records if r["event"] in ("resolved", "unresolved")]
    # The upstream knows ::1 too; the sidecar's listener answers AAAA with no records.
    assert resolved.get("addresses") == [["AF_INET", "127.0.0.1"]], resolved
    (fetched,) = [r for r in records if r["event"] in ("fetched", "failed")]
    assert fetched.get("body") == "origin http 80 /dns\n", fetched  # direct: no proxy setting

    gateway = played_dns.container("gateway")
    resolv = played_dns.podman.run(["exec", gateway, "cat", "/etc/resolv.conf"]).stdout
    nameservers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    assert nameservers == ["127.0.0.1"], resolv
    logs = played_dns.podman.logs(played_dns.container("ipv4proxy"))
    # Port 53 bound as uid 10001: the pod's ip_unprivileged_port_start sysctl applied.
    assert any("dns listening on 127.0.0.1:53" in line for line in logs), logs[:8]
    asked = played_dns.podman.logs(played_dns.container("upstream"))
    assert f"dnsorigin asked {ORIGIN_NAME}. A" in asked, asked
