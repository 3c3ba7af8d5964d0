#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks run for real.
# Only as root and only what is missing; otherwise says what is skipped.
set -euo pipefail
# tinyproxy (HTTP CONNECT with basic auth) and microsocks (SOCKS5 with
# user/password) are the real proxies of tests/corporate. Go with x/crypto
# and gorilla/websocket builds the interop peer of tests/interop (offline,
# GOPATH mode, from /usr/share/gocode). nats-server and haproxy run the
# several-node tests of tests/cluster and `make cluster-demo`.
packages=(openssh-server openssh-client iproute2 nftables postgresql tinyproxy microsocks chromium
  golang-go golang-golang-x-crypto-dev golang-github-gorilla-websocket-dev nats-server haproxy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: not root; tests needing ${missing[*]} will skip" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
