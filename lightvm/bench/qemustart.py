"""Process start time of QEMU binaries, side by side: ``BINARY -version``, interleaved.

Why interleaved: the machine is shared and noisy; alternating the binaries run by run
gives each the same load. Timed with perf_counter around Popen + wait (subprocess.run's
timeout polls with growing sleeps, which makes the timings bimodal).

Usage: python -m lightvm.bench.qemustart [--runs 30] BINARY...

What it answers: how much of a cold create is QEMU's own start (dynamic linking,
module init), e.g. Debian's build against the slim one of qemu/build.sh.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import time


def once(binary: str) -> tuple[float, float]:
    """(wall ms from spawn to exit, CPU ms user+sys) of ``binary -version``.

    The child's CPU time suffers less from a busy machine than wall time does.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "-version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fd = os.pidfd_open(proc.pid)
    try:
        if not select.select([fd], [], [], 10.0)[0]:
            proc.kill()
            proc.wait(timeout=10)
            raise RuntimeError(f"{binary} -version did not exit within 10 s")
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        os.close(fd)
    wall = (time.perf_counter() - t0) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} -version exited {proc.returncode}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    wall: dict[str, list[float]] = {b: [] for b in args.binaries}
    cpu: dict[str, list[float]] = {b: [] for b in args.binaries}
    for b in args.binaries:  # warm the page cache
        once(b)
    for _ in range(args.runs):
        for b in args.binaries:
            w, c = once(b)
            wall[b].append(w)
            cpu[b].append(c)
    base = statistics.median(wall[args.binaries[0]])
    print(f"{args.runs} runs each, interleaved; loadavg {os.getloadavg()[0]:.2f}")
    for b in args.binaries:
        med = statistics.median(wall[b])
        print(
            f"wall {med:6.2f} ms median (min {min(wall[b]):6.2f}, x{base / med:4.1f})"
            f"  cpu {statistics.median(cpu[b]):6.2f} ms  {b}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
