"""The server in this process: a reload that would change what it listens on is refused."""

from __future__ import annotations

import pytest

from ipv4proxy.config import load
from ipv4proxy.errors import ConfigError
from ipv4proxy.server import Proxy


async def test_reload_refuses_a_listener_change() -> None:
    # In process: the test harness pins --listen, which wins over any file.
    config = load("resolver: {hosts_file: /dev/null, resolv_conf: /dev/null}")
    proxy = Proxy(config)
    for text, key in [
        ("listeners: ['127.0.0.1:1']", "listeners"),
        ("admin: {listen: '127.0.0.1:1'}", "admin.listen"),
    ]:
        changed = load(text + "\nresolver: {hosts_file: /dev/null, resolv_conf: /dev/null}")
        with pytest.raises(ConfigError, match=rf"^{key} cannot change on reload; restart$"):
            proxy.reload(changed)
        assert proxy.config is config
