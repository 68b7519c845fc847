"""Podman for the image and pod tests: its own configuration, a base image made without any
registry, and the repository's image built from deploy/container/Containerfile.

Rules kept here:

- /etc/containers is never edited. Podman reads files this module writes under `STATE`
  (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, CONTAINERS_REGISTRIES_CONF), with what the
  test machines need: runc (crun refuses their hybrid cgroups), ulimits no higher than
  this process's own hard limits (a container's start fails when podman tries to raise
  them), no registry to search, the file event logger (no journald).
- No registry is reached: the base image is a debootstrap of Debian (python3, venv,
  CA certificates) from the mirror apt is configured with, imported with `podman import`.
  The host's CA certificates are added to it, because the package registries' TLS may be
  signed by a CA only this host trusts. Image builds use --pull=never.
- The base image is cached between runs in podman's storage under `STATE` (a directory
  under /var/tmp, never the repository), tagged with a hash of everything that went into
  it (suite, packages, mirror, CA certificates): when one of them changes, a new base is
  made and the old one removed. Building the Containerfile then reuses podman's layer
  cache, so an unchanged lock does not download the dependencies again.
- Only containers and pods this module's callers create are removed, by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from helpers.ci import unavailable
from helpers.deploy import REPO_ROOT

__all__ = [
    "BASE_REPOSITORY",
    "IMAGE",
    "STATE",
    "Podman",
    "apt_mirror",
    "base_image",
    "build_image",
    "podman_or_skip",
]

# podman's storage (the cached base image, the layer cache) and configuration. /var/tmp:
# it survives reboots and is not cleaned as eagerly as /tmp; override with the variable.
STATE = Path(os.environ.get("IPV4PROXY_PODMAN_STATE", "/var/tmp/ipv4proxy-tests/podman"))
# Per-boot state (podman's runroot and tmp_dir): under /run, as podman's own default is;
# one per STATE, since two storages must not share a runroot.
RUN_STATE = Path("/run") / f"ipv4proxy-tests-podman-{hashlib.sha256(bytes(STATE)).hexdigest()[:8]}"

BASE_REPOSITORY = "localhost/ipv4proxy-test-base"
IMAGE = "localhost/ipv4proxy:test"
SUITE = "bookworm"
# What the base image holds besides minbase: the Containerfile's `python -m venv` needs
# python3-venv (with Debian's pip, which trusts /etc/ssl/certs); `python` is what the
# Containerfile calls it.
PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# What `podman import` sets on the image: a root filesystem has no environment, and the
# official python images set PATH (the Containerfile appends to it; kube play runs a
# command with the image's PATH only).
IMPORT_CHANGES = ("ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
# CA certificates the host trusts that Debian's ca-certificates does not ship.
_HOST_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt",)
_HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
_CERT_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")

# Bounds, in seconds: debootstrap measured about 70 s on two cores with a near mirror;
# the image build about 30 s cold (the dependencies downloaded), a few seconds warm.
DEBOOTSTRAP_SECONDS = 600.0
BUILD_SECONDS = 600.0
COMMAND_SECONDS = 120.0
# The base and image builds are batch work that may run beside the rest of the suite
# (tests/deploy/conftest.py): at the lowest CPU priority, they yield to the tests.
NICE = ("nice", "-n", "19")
# An untagged layer older than this is removed after a build: the cache of the last day's
# builds is kept, older code's layers do not pile up in /var/tmp.
PRUNE_AFTER = "24h"


class Podman:
    """The podman command with the tests' own configuration."""

    def __init__(self, state: Path = STATE, run_state: Path = RUN_STATE) -> None:
        self.state = state
        conf = state / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (state / "networks").mkdir(exist_ok=True)
        run_state.mkdir(parents=True, exist_ok=True)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], _pid_max())
        (conf / "containers.conf").write_text(
            "[containers]\n"
            # podman (rootful) raises nofile and nproc above this process's hard limits,
            # which the test machines refuse; nproc also no higher than kernel.pid_max.
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{run_state / "libpod"}"\n'
            "[network]\n"
            'network_backend = "netavark"\n'
            f'network_config_dir = "{state / "networks"}"\n'
        )
        (conf / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{state / "storage"}"\n'
            f'runroot = "{run_state / "storage"}"\n'
        )
        (conf / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CONTAINERS_CONF": str(conf / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
        }

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = COMMAND_SECONDS,
        check: bool = True,
        stdin: bytes | None = None,
        batch: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """``podman ARGS`` (``batch``: at the lowest CPU priority); output as text. Raises
        AssertionError (with the output) when ``check`` and it fails."""
        done = subprocess.run(
            [*(NICE if batch else ()), "podman", *args],
            env=self.env,
            input=stdin.decode() if stdin is not None else None,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)}: exit code {done.returncode}\n"
                f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
            )
        return done

    def exists(self, image: str) -> bool:
        return self.run(["image", "exists", image], check=False).returncode == 0

    def logs(self, container: str) -> list[str]:
        done = self.run(["logs", container], check=False)
        return (done.stdout + done.stderr).splitlines()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One image build at a time across test runs on this machine."""
        with open(self.state / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768


def podman_or_skip() -> Podman:
    """A Podman, or a skip (a failure in CI) naming what is missing."""
    if os.geteuid() != 0:
        unavailable("the image tests run podman as root (CI runs as root)")
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        unavailable(f"not installed: {', '.join(missing)} (scripts/test installs them)")
    return Podman()


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (the first ``main`` source of `SUITE`)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if (
                SUITE in fields.get("suites", "").split()
                and "main" in fields.get("components", "").split()
            ):
                return fields.get("uris", "").split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split("#")[0].split()
            if len(words) >= 4 and words[0] == "deb" and words[-2:] == [SUITE, "main"]:
                return words[1]
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return "http://deb.debian.org/debian"


def _host_ca_files() -> list[Path]:
    """Every CA bundle or certificate the host's tools are told to trust."""
    found = [Path(name) for name in _HOST_CA_FILES]
    found += [Path(os.environ[name]) for name in _CERT_VARIABLES if os.environ.get(name)]
    if _HOST_CA_DIR.is_dir():
        found += sorted(_HOST_CA_DIR.rglob("*.crt"))
    unique: dict[Path, None] = {}
    for path in found:
        if path.is_file():
            unique[path.resolve()] = None
    return list(unique)


def _base_key(mirror: str, cas: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for part in (SUITE, "minbase", *PACKAGES, mirror, *IMPORT_CHANGES):
        digest.update(part.encode() + b"\0")
    for path in cas:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def base_image(podman: Podman) -> str:
    """The cached base image (Debian with Python and the host's CAs), made if missing."""
    mirror = apt_mirror()
    cas = _host_ca_files()
    image = f"{BASE_REPOSITORY}:{_base_key(mirror, cas)}"
    with podman.locked():
        if podman.exists(image):
            return image
        with tempfile.TemporaryDirectory(dir=podman.state, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            try:
                _debootstrap(rootfs, mirror, cas)
                _import(podman, rootfs, image)
            finally:
                _unmount_under(rootfs)  # debootstrap mounts /proc there; a kill leaves it
        # Older bases (another mirror, other CAs) are of no more use.
        listed = podman.run(["images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPOSITORY])
        for old in listed.stdout.split():
            if old != image:
                podman.run(["rmi", "--force", old], check=False)
    return image


def _unmount_under(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)


def _debootstrap(rootfs: Path, mirror: str, cas: Sequence[Path]) -> None:
    subprocess.run(
        [
            *NICE,
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=DEBOOTSTRAP_SECONDS,
        check=True,
    )
    extra = rootfs / "usr/local/share/ca-certificates"
    extra.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(cas):
        shutil.copyfile(path, extra / f"host-{index}.crt")
    subprocess.run(
        [*NICE, "chroot", str(rootfs), "update-ca-certificates"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=COMMAND_SECONDS,
        check=True,
    )
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()


def _import(podman: Podman, rootfs: Path, image: str) -> None:
    tar = subprocess.Popen(
        [*NICE, "tar", "-C", str(rootfs), "-c", "."],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        imported = subprocess.run(
            [*NICE, "podman", "import", *(f"--change={c}" for c in IMPORT_CHANGES), "-", image],
            env=podman.env,
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait(timeout=COMMAND_SECONDS)
    if imported.returncode != 0 or tar.returncode != 0:
        raise AssertionError(f"podman import: {imported.stderr[-2000:]}")


def pip_index_url() -> str | None:
    """The host's package index, if it is one a container can reach (http or https): the
    host's pip settings carried into the build as a build argument. A file:// index or
    find-links directory is this machine's own disk and stays out."""
    url = os.environ.get("PIP_INDEX_URL", "")
    if not url:
        done = subprocess.run(
            ["python3", "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        url = done.stdout.strip() if done.returncode == 0 else ""
    return url if url.startswith(("http://", "https://")) else None


def build_image(podman: Podman, base: str, tag: str = IMAGE) -> str:
    """Build deploy/container/Containerfile from the repository root on `base`."""
    args = [
        "build",
        "--format",
        "docker",  # the OCI format has no HEALTHCHECK
        "--pull=never",
        "--layers",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
    ]
    index = pip_index_url()
    if index:
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    args += ["-f", "deploy/container/Containerfile", "-t", tag, str(REPO_ROOT)]
    with podman.locked():
        podman.run(args, timeout=BUILD_SECONDS, batch=True)
        podman.run(["image", "prune", "--force", "--filter", f"until={PRUNE_AFTER}"], check=False)
    return tag
