#!/usr/bin/env bash
# The README's main job: set everything up, boot the `daytime` unikernel, ask it
# the time over TCP, print its boot-time breakdown, and remove every trace.
# Networking is QEMU user networking with port 13 published on 127.0.0.1, so it
# needs no root (beyond installing packages) and sends traffic only over loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh >&2

state=$(mktemp -d -t lightvm-demo.XXXXXX)
lightvm() { .venv/bin/lightvm --state-dir "$state" "$@"; }
cleanup() {
    lightvm destroy --all >/dev/null 2>&1 || true
    rm -rf "$state"
}
trap cleanup EXIT

port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== lightvm create examples/daytime.toml --publish 127.0.0.1:$port:13"
LIGHTVM_NET_MODE=user lightvm create examples/daytime.toml --publish "127.0.0.1:$port:13"
echo
echo "== nc 127.0.0.1 $port   (the unikernel's RFC 867 daytime service)"
reply=$(timeout 10 nc -w 3 127.0.0.1 "$port" </dev/null || true)
if [[ -z $reply ]]; then
    echo "demo: daytime did not answer on 127.0.0.1:$port; console follows" >&2
    lightvm console daytime >&2 || true
    exit 1
fi
echo "$reply"
echo
echo "== lightvm list"
lightvm list
echo
echo "== lightvm shutdown daytime   (clean poweroff through the NoXS sysctl page)"
lightvm shutdown daytime
