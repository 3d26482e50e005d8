#!/usr/bin/env python3
"""Process start time of QEMU binaries, side by side: ``BINARY -version``, interleaved.

Why interleaved: the machine is shared and noisy; alternating the binaries run by run
gives each the same load. Timed with perf_counter around Popen + wait (subprocess.run's
timeout polls with growing sleeps, which makes the timings bimodal).

Usage: qemu/measure_start.py [--runs 30] BINARY...
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time


def once(binary: str) -> float:
    """Milliseconds from spawn to exit of ``binary -version``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "-version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise
    ms = (time.perf_counter() - t0) * 1000
    if rc != 0:
        raise RuntimeError(f"{binary} -version exited {rc}")
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    times: dict[str, list[float]] = {b: [] for b in args.binaries}
    for b in args.binaries:  # warm the page cache
        once(b)
    for _ in range(args.runs):
        for b in args.binaries:
            times[b].append(once(b))
    base = statistics.median(times[args.binaries[0]])
    for b, ts in times.items():
        med = statistics.median(ts)
        print(f"{med:7.2f} ms median  (min {min(ts):6.2f}, max {max(ts):6.2f}, x{base / med:4.1f})  {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
