"""requests through ipv4proxy (HTTP CONNECT).

    python3 requests_client.py http://127.0.0.1:3128 https://example.com/

The usual way is the environment alone (HTTPS_PROXY=http://127.0.0.1:3128), which requests
reads by itself; here the proxy is passed explicitly. For SOCKS install ``requests[socks]``
and use ``socks5h://127.0.0.1:3128`` (with the h, so that the proxy resolves the name to A
records; ``socks5://`` would resolve it here and might pick an IPv6 address).
Write 127.0.0.1, never localhost. Prints one JSON line: the status.
"""

from __future__ import annotations

import json
import sys

import requests

TIMEOUT_SECONDS = 20


def main(proxy_url: str, url: str) -> None:
    proxies = {"http": proxy_url, "https": proxy_url}
    response = requests.get(url, proxies=proxies, timeout=TIMEOUT_SECONDS)
    print(json.dumps({"status": response.status_code}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: requests_client.py PROXY_URL URL")
    main(sys.argv[1], sys.argv[2])
