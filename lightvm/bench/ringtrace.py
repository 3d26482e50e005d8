"""Where a pooled create's bell goes, traced: perf uprobes on QEMU along its wake-up path.

    python -m lightvm.bench.ringtrace [--creates 30] [--qemu PATH] [--out FILE]

Needs root and perf (Debian's linux-perf), and a QEMU with symbols: the slim build keeps
one in its object folder (qemu/build/obj-HASH/qemu-system-x86_64, next to the stripped
copy lightvm runs), the default here. It starts a lightvmd with a noop pool on that
binary, puts uprobes on ``fd_chr_read`` (QEMU's main loop reads the bell's byte) and
``x86_cpu_exec_interrupt`` (the vCPU takes the interrupt), and records them with the
scheduler's ``sched_waking``/``sched_switch`` system-wide while it makes ``--creates``
pooled creates, each between two ``getsid`` calls of its own (the markers). Per create:

* ring -> read: the daemon wakes QEMU's main thread (the bell) until QEMU reads the byte;
* read -> interrupt: until the vCPU takes the interrupt;
* whether QEMU's main thread ran on the CPU the daemon rang from.

The probes are removed at the end, whatever happens. Figures: docs/execute-path.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError

PROBES = ("fd_chr_read", "x86_cpu_exec_interrupt")
GROUP = "lightvm_ringtrace"
EVENTS = "sched:sched_switch,sched:sched_waking,syscalls:sys_enter_getsid," + ",".join(f"{GROUP}:{p}" for p in PROBES)
_LINE = re.compile(
    r"\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<t>[\d.]+):\s+(?P<event>\S+):(?:\s+(?P<rest>.*))?$"
)


def unstripped_qemu() -> Path:
    """The slim build's binary with symbols (its object folder), or LightVMError saying how to get one."""
    from lightvm import qemubin

    stripped = Path(qemubin.qemu_binary())
    candidate = stripped.parent.parent / f"obj-{stripped.parent.name}" / "qemu-system-x86_64"
    if not candidate.is_file():
        raise LightVMError(
            f"no QEMU with symbols at {candidate}: build the slim QEMU (bash qemu/build.sh), or pass --qemu"
        )
    return candidate


def analyse(perf_script: str) -> list[dict[str, Any]]:
    """Per create (the text between two getsid markers of one process), from ``perf script``
    lines (``-F comm,tid,cpu,time,event,trace``): microseconds from the bell to QEMU's read and
    to the vCPU's interrupt, and whether the read ran on the ringing CPU. Creates missing an
    event (a lost sample) are left out."""
    events = []
    for line in perf_script.splitlines():
        m = _LINE.match(line)
        if m:
            events.append((float(m["t"]), m["comm"].strip(), int(m["cpu"]), m["event"], m["rest"] or ""))
    marks = [i for i, e in enumerate(events) if e[3].endswith("sys_enter_getsid")]
    out = []
    for start, end in zip(marks[0::2], marks[1::2], strict=False):  # an odd last marker: cut off
        window = events[start : end + 1]
        # the bell: the daemon (not QEMU itself) wakes a QEMU thread; then the first read
        # of a byte, then the vCPU's first interrupt after it
        ring = next(
            (e for e in window if e[3].endswith("sched_waking") and "comm=qemu-system" in e[4] and "qemu" not in e[1]),
            None,
        )
        read = next((e for e in window if e[3].endswith(":fd_chr_read") and ring and e[0] >= ring[0]), None)
        intr = next((e for e in window if e[3].endswith(":x86_cpu_exec_interrupt") and read and e[0] >= read[0]), None)
        if ring is None or read is None or intr is None:
            continue
        out.append(
            {
                "ring_to_read_us": round((read[0] - ring[0]) * 1e6, 1),
                "read_to_interrupt_us": round((intr[0] - read[0]) * 1e6, 1),
                "ring_to_interrupt_us": round((intr[0] - ring[0]) * 1e6, 1),
                "read_on_ringing_cpu": read[2] == ring[2],
            }
        )
    return out


def _perf(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["perf", *args], capture_output=True, text=True, timeout=timeout, check=False)


def _add_probes(binary: Path) -> None:
    for name in PROBES:
        done = _perf("probe", "-q", "-x", str(binary), "--add", f"{GROUP}:{name}={name}")
        if done.returncode != 0:
            raise LightVMError(f"perf probe {name} in {binary}: {done.stderr.strip() or done.stdout.strip()}")


def _remove_probes() -> None:
    _perf("probe", "-q", "-d", f"{GROUP}:*")


def trace(binary: Path, creates: int, warmup: int = 3) -> list[dict[str, Any]]:
    from lightvm.bench.split import SplitFleet

    _remove_probes()  # a run killed before its cleanup
    _add_probes(binary)
    try:
        fleet = SplitFleet(app="noop", accel="tcg", env={"LIGHTVM_QEMU": str(binary)})
        try:

            def create() -> None:
                fleet.measure(mark=lambda: os.getsid(0))  # the markers: a syscall nothing else here makes

            for _ in range(warmup):
                create()
            with tempfile.TemporaryDirectory(prefix="lightvm-ringtrace-") as tmp:
                data = Path(tmp) / "perf.data"
                recorder = subprocess.Popen(
                    ["perf", "record", "-q", "-a", "-o", str(data), "-e", EVENTS],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    time.sleep(0.5)  # perf's set-up, before the first marker
                    for i in range(creates):
                        create()
                        print(f"  create {i + 1}/{creates}", file=sys.stderr, end="\r")
                finally:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(60)
                print(file=sys.stderr)
                script = _perf("script", "-i", str(data), "-F", "comm,tid,cpu,time,event,trace", timeout=300)
                return analyse(script.stdout)
        finally:
            fleet.close()
    finally:
        _remove_probes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightvm.bench.ringtrace", description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=30, help="pooled creates traced (default 30)")
    parser.add_argument("--qemu", type=Path, help="a QEMU with symbols (default: the slim build's object folder)")
    parser.add_argument("--out", type=Path, help="write the per-create figures here (JSON)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("perf") is None:
        parser.error("needs root and perf (apt-get install linux-perf)")
    if args.creates < 1:
        parser.error("--creates: at least 1")
    try:
        binary = args.qemu or unstripped_qemu()
        rows = trace(binary, args.creates)
    except LightVMError as exc:
        print(f"ringtrace: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print("ringtrace: no complete create in the trace (perf lost events?)", file=sys.stderr)
        return 1
    print(f"{len(rows)} pooled noop creates traced (QEMU {binary}), medians [min-max] in us:")
    for key in ("ring_to_read_us", "read_to_interrupt_us", "ring_to_interrupt_us"):
        values = [r[key] for r in rows]
        print(f"  {key[:-3]:<22} {statistics.median(values):7.1f} [{min(values):.0f}-{max(values):.0f}]")
    same = sum(r["read_on_ringing_cpu"] for r in rows)
    print(f"  QEMU's main thread on the ringing CPU in {same} of {len(rows)}")
    if args.out:
        args.out.write_text(json.dumps({"qemu": str(binary), "creates": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
