"""Measure the cold create path, pause/unpause and destroy; print medians.

    python -m lightvm.bench.lifecycle [--config examples/daytime.toml] [-n 20] [--json out.json]

Two views of create, both reported:
* in the toolstack: from the start of Toolstack.create for one VM to READY seen by the
  host (the bar: median <= 30 ms), with the boot breakdown (QEMU up, vCPU resumed,
  guest entry, devices up, READY);
* for the user: wall time of a `lightvm create` process (Python start-up and imports
  included) until it exits.

Uses a private state dir and always TCG (kvm on these hosts is unusable). Every VM it
creates is destroyed, also on failure. Defaults to daytime when images/build/daytime.elf
exists, else noop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm.bench.runner import REPO
from lightvm.boot import BOOT_STEP_KEYS as STEPS
from lightvm.spec import load_spec
from lightvm.toolstack import Toolstack


def stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 3),
        "p10": round(values[len(values) // 10], 3),
        "p90": round(values[min(len(values) - 1, (len(values) * 9) // 10)], 3),
        "min": round(values[0], 3),
        "max": round(values[-1], 3),
        "n": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = REPO / "examples" / ("daytime.toml" if (REPO / "images/build/daytime.elf").exists() else "noop.toml")
    parser.add_argument("--config", type=Path, default=default)
    parser.add_argument("-n", "--iterations", type=int, default=20, help="cold creates (default 20)")
    parser.add_argument("--cli-iterations", type=int, default=10, help="`lightvm create` processes (default 10)")
    parser.add_argument("--pauses", type=int, default=50, help="pause/unpause pairs (default 50)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    spec = load_spec(args.config)
    results: dict[str, Any] = {
        "config": str(args.config),
        "host": platform.node(),
        "kernel": platform.release(),
        "accel": "tcg",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="lightvm-measure-") as tmp:
        ts = Toolstack(Path(tmp) / "state")
        steps: dict[str, list[float]] = {k: [] for k in STEPS}
        destroy_ms: list[float] = []
        try:
            ts.create(spec, name="warmup", accel="tcg")  # fills the page cache and the TSC cache
            ts.destroy("warmup")
            for i in range(args.iterations):
                (result,) = ts.create(spec, name=f"m{i}", accel="tcg")
                for k in STEPS:
                    value = result.boot_ms.get(k)
                    if value is not None:
                        steps[k].append(value)
                t0 = time.perf_counter()
                ts.destroy(f"m{i}")
                destroy_ms.append((time.perf_counter() - t0) * 1000)
            results["create_ms"] = {k: stats(v) for k, v in steps.items()}
            results["destroy_ms"] = stats(destroy_ms)

            ts.create(spec, name="p", accel="tcg")
            pause_ms, unpause_ms = [], []
            for _ in range(args.pauses):
                pause_ms.append(ts.pause("p"))
                unpause_ms.append(ts.unpause("p"))
            results["pause_ms"] = stats(pause_ms)
            results["unpause_ms"] = stats(unpause_ms)
            ts.destroy("p")

            env = dict(os.environ, LIGHTVM_STATE_DIR=str(Path(tmp) / "state"))
            cli = [sys.executable, "-m", "lightvm.cli"]
            wall, in_cli = [], []
            for i in range(args.cli_iterations):
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [*cli, "create", str(args.config), "--accel", "tcg", "--json", "--name", f"c{i}"],
                    env=env, capture_output=True, text=True, timeout=60, check=True,
                )  # fmt: skip
                wall.append((time.perf_counter() - t0) * 1000)
                in_cli.append(json.loads(proc.stdout)["boot_ms"]["ready"])
                subprocess.run([*cli, "destroy", f"c{i}"], env=env, capture_output=True, timeout=60, check=True)
            results["cli_create_wall_ms"] = stats(wall)
            results["cli_create_ready_ms"] = stats(in_cli)
        finally:
            ts.destroy_all()

    results["loadavg_after"] = os.getloadavg()
    load = f"load average {results['loadavg_before'][0]:.2f} -> {results['loadavg_after'][0]:.2f}"
    print(f"config {results['config']} (tcg), {args.iterations} cold creates, {load}; medians [p10..p90] in ms:")
    for k in STEPS:
        s = results["create_ms"][k]
        if s:
            print(f"  create -> {k:<12} {s['median']:7.2f}  [{s['p10']:.2f} .. {s['p90']:.2f}]")
    for key, label in (
        ("destroy_ms", "destroy"),
        ("pause_ms", "pause"),
        ("unpause_ms", "unpause"),
        ("cli_create_wall_ms", "`lightvm create` process, wall"),
        ("cli_create_ready_ms", "`lightvm create` process, READY"),
    ):
        s = results[key]
        print(f"  {label:<34} {s['median']:7.2f}  [{s['p10']:.2f} .. {s['p90']:.2f}]")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
