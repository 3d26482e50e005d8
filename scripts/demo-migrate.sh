#!/usr/bin/env bash
# Live migration, seen by a client: boots the daytime unikernel on host A (a network
# namespace with its own sshd and lightvmd), asks it the time every 10 ms from a third
# namespace, migrates it A -> B -> A (20 moves by default) over one shared L2 segment,
# prints per migration the total time, QEMU's downtime, the bytes sent and the gap the
# client saw, writes a PNG timeline, and removes everything it made (also on Ctrl-C).
# Needs root. All traffic stays inside the namespaces it creates.
# Options (see --help): -n N migrations, -o FILE.png, --timeout-ms, --no-announce.
# The logic is lightvm/bench/demo/ (docs/migration-demo.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "demo-migrate: needs root (network namespaces, taps, sshd): sudo $0" >&2
    exit 1
fi
bash scripts/bootstrap.sh >&2
exec .venv/bin/python -m lightvm.bench.demo.migrate "$@"
