#!/bin/sh
# curl through ipv4proxy, both ways it can go:
#   PROXY=127.0.0.1:3128 deploy/examples/curl.sh https://web.whatsapp.com/
# 1. HTTP CONNECT, from the variable every tool reads;
# 2. SOCKS5 with the name resolved by the proxy (A records only): --socks5-hostname is
#    socks5h://; plain --socks5 would resolve the name here and might pick an IPv6 address.
# Write 127.0.0.1, never localhost: localhost may resolve to ::1 first.
set -eu
PROXY="${PROXY:-127.0.0.1:3128}"
URL="${1:-https://web.whatsapp.com/}"
HTTPS_PROXY="http://$PROXY" curl -q -fsS -o /dev/null -w 'http-connect %{http_code}\n' "$URL"
curl -q -fsS --socks5-hostname "$PROXY" -o /dev/null -w 'socks5h %{http_code}\n' "$URL"
