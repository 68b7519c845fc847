"""Every ipv4proxy configuration shipped under deploy/ passes ``ipv4proxy check-config``.

That is the baked-in config of the container image, the one of every ConfigMap, the
systemd host's and the compose file's, in proxy mode and in DNS mode. A config that reads
its credentials from a file (``auth.users_file``, a mounted Secret in the cluster) is
checked with a real users file put in that path's place by the flag ``--auth-users-file``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.deploy import DEPLOY, REPO_ROOT, check_config, manifests

_FILES = [
    DEPLOY / "container" / "config.yaml",
    DEPLOY / "systemd" / "config.yaml",
    DEPLOY / "compose" / "config.yaml",
    # DNS mode (the dns: section).
    DEPLOY / "systemd" / "dns-config.yaml",
    DEPLOY / "compose" / "dns" / "config.yaml",
]


def _configmap_configs() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for manifest in manifests():
        if manifest.kind != "ConfigMap":
            continue
        for key, text in manifest.doc.get("data", {}).items():
            if not key.endswith(".yaml"):
                continue  # not a config (sidecar-dns also carries its probe script)
            found.append((f"{manifest.name}:{key}", str(text)))
    return found


def _all_configs() -> list[tuple[str, str]]:
    files = [(str(path.relative_to(REPO_ROOT)), path.read_text()) for path in _FILES]
    return files + _configmap_configs()


def _users_file_args(tree: Any, directory: Path) -> list[str]:
    users_file = (tree.get("auth") or {}).get("users_file") if isinstance(tree, dict) else None
    if not users_file:
        return []
    stand_in = directory / "users"
    stand_in.write_text("gateway:correct horse battery staple\n", encoding="utf-8")
    return ["--auth-users-file", str(stand_in)]


def test_every_configmap_is_found() -> None:
    names = {name.split("#")[0] for name, _ in _configmap_configs()}
    assert names == {
        "deploy/kubernetes/sidecar/configmap.yaml",
        "deploy/kubernetes/sidecar-classic/configmap.yaml",
        "deploy/kubernetes/egress/configmap.yaml",
        "deploy/kubernetes/sidecar-dns/configmap.yaml",
    }


@pytest.mark.parametrize(("name", "text"), _all_configs(), ids=[n for n, _ in _all_configs()])
def test_config_passes_check_config(tmp_path: Path, name: str, text: str) -> None:
    result = check_config(text, tmp_path, _users_file_args(yaml.safe_load(text), tmp_path))
    assert result.returncode == 0, f"{name}: check-config said:\n{result.stderr}"


def test_check_config_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail: the same run refuses a config with a misspelt key."""
    name, text = _configmap_configs()[0]
    result = check_config(text.replace("listeners:", "listener:"), tmp_path)
    assert result.returncode == 2, f"{name}: {result.stderr}"
    assert "listener: unknown key" in result.stderr
