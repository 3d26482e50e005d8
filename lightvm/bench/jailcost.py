"""What the jail around QEMU costs a create (lightvm/jail.py, docs/security.md), layer by layer.

Three settings side by side in one run, samples alternating so the host's load falls on
all of them alike: ``off`` (no layer), ``seccomp`` (the filter and no_new_privs alone, as
a rootless lightvm gets them) and ``on`` (the default: filter, a uid of its own, no
capabilities, an empty root). Two paths each:

* cold: ``Toolstack.create`` in this process, from the call to READY seen by the host
  (the issue's bar: <= 30 ms), the VM destroyed after;
* pooled: a lightvmd per setting (the setting in its environment, so its shells are
  jailed that way), request -> READY reply at the client (bar: <= 3 ms).

    python -m lightvm.bench.jailcost [-n 20] [--config examples/noop.toml] [--json out.json]

Needs root for ``on`` to mean the full jail (without root it equals ``seccomp``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm import jail
from lightvm.bench.runner import REPO
from lightvm.bench.split import SplitFleet
from lightvm.spec import load_spec
from lightvm.toolstack import Toolstack

SETTINGS = ("off", "seccomp", "on")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def run(config: Path, iterations: int, warmup: int = 2) -> dict[str, Any]:
    spec = load_spec(config)
    saved = os.environ.get(jail.ENV)
    cold: dict[str, list[float]] = {s: [] for s in SETTINGS}
    pooled: dict[str, list[float]] = {s: [] for s in SETTINGS}
    fleets: dict[str, SplitFleet] = {}
    loads = [os.getloadavg()[0]]
    try:
        with tempfile.TemporaryDirectory(prefix="lightvm-bench-jail-") as tmp:
            ts = Toolstack(Path(tmp) / "state")
            try:
                for setting in SETTINGS:
                    fleets[setting] = SplitFleet(config=config, env={jail.ENV: setting}, pool_size=1)
                for i in range(warmup + iterations):
                    order = SETTINGS if i % 2 == 0 else tuple(reversed(SETTINGS))
                    for setting in order:
                        os.environ[jail.ENV] = setting
                        (result,) = ts.create(spec, name=f"c-{setting}-{i}", accel="tcg")
                        ts.destroy(f"c-{setting}-{i}")
                        sample = fleets[setting].measure()
                        if i >= warmup:
                            cold[setting].append(float(result.boot_ms["ready"] or 0.0))
                            pooled[setting].append(float(sample["ms"]))
            finally:
                ts.destroy_all()
                for fleet in fleets.values():
                    fleet.close()
    finally:
        if saved is None:
            os.environ.pop(jail.ENV, None)
        else:
            os.environ[jail.ENV] = saved
    loads.append(os.getloadavg()[0])
    out: dict[str, Any] = {
        "config": str(config),
        "accel": "tcg",
        "iterations": iterations,
        "root": os.geteuid() == 0,
        "loadavg": loads,
        "cold_ready_ms": {s: _median(v) for s, v in cold.items()},
        "pooled_reply_ms": {s: _median(v) for s, v in pooled.items()},
        "samples": {"cold": cold, "pooled": pooled},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightvm.bench.jailcost", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "examples" / "noop.toml")
    p.add_argument("-n", "--iterations", type=int, default=20)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    result = run(args.config.resolve(), args.iterations)  # lightvmd has its own working dir
    cold, pooled = result["cold_ready_ms"], result["pooled_reply_ms"]
    print(
        f"{Path(result['config']).name}, TCG, {args.iterations} samples per cell, alternating; "
        f"load {result['loadavg'][0]:.1f} -> {result['loadavg'][1]:.1f}; {time.monotonic() - t0:.0f} s"
    )
    print(f"  {'setting':<8} {'cold create -> READY':>22} {'pooled request -> reply':>25}")
    for s in SETTINGS:
        print(
            f"  {s:<8} {cold[s]:>17.2f} ms {cold[s] / cold['off']:4.2f}x"
            f" {pooled[s]:>19.2f} ms {pooled[s] / pooled['off']:4.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
