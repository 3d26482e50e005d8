"""Boot-time measurement of the lightvm unikernels (run with the venv python).

    .venv/bin/python images/bench_boot.py [--runs N] [--image noop] [--json FILE]

Measures, each over N runs (default 20), under ``-accel tcg -M microvm,pcie=on``:

  (a) cold: QEMU process start -> READY in the boot record (the host polls the
      mmap'd NoXS region it already has; no serial parsing on the path);
  (b) split: ``cont`` of a pre-spawned paused QEMU (-S, QMP over a unix socket,
      its page already written) -> READY.

The guest is told the TSC rate through the NoXS page (NOXS_FEAT_TSC_HZ), as a
toolstack does once it has learned the rate from any guest's boot record (a
warm-up boot here); ``--no-tsc-hint`` measures the guest calibrating itself.
Also prints the guest-side split (TSC entry -> devices up -> READY) and the
image sizes. Every QEMU is killed and reaped and every region unlinked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from guestlib import BUILD_DIR, QEMU, Guest, build_images

from lightvm.noxs import BootState, PageConfig, Sysctl

READY = int(BootState.READY)
POLL_S = 0.0001


def _poll_ready(g: Guest, start: float, timeout: float = 10.0) -> float:
    """Spin on the boot state word (cheap mmap read); return ms since start."""
    assert g.region is not None and g.proc is not None
    region = g.region
    deadline = start + timeout
    while True:
        if region.boot_state() == READY:
            return (time.perf_counter() - start) * 1000.0
        now = time.perf_counter()
        if now > deadline or g.proc.poll() is not None:
            raise RuntimeError(f"guest not READY: {g.boot_record()}\n{g.stderr_text()}\n{g.console()}")
        # Yield the CPU: a spinning poller steals a core from QEMU's main loop
        # and vCPU threads on a 2-core host. 100 us bounds the added error.
        time.sleep(POLL_S)


def _finish(g: Guest) -> dict[str, float]:
    """Guest-side split from the boot record, then a clean poweroff."""
    br = g.boot_record()
    split = {
        # TSC counts from the vCPU's first run (reset, or `cont` of a -S QEMU):
        # tsc_entry is the firmware's share (qboot) before our first instruction.
        "firmware_ms": br.tsc_entry * 1000.0 / br.tsc_hz if br.tsc_hz else 0.0,
        "entry_to_devices_up_ms": br.tsc_delta_ms(br.tsc_entry, br.tsc_devices_up) or 0.0,
        "entry_to_ready_ms": br.tsc_delta_ms(br.tsc_entry, br.tsc_ready) or 0.0,
    }
    assert g.region is not None
    g.region.request(Sysctl.POWEROFF)
    rc = g.wait_exit(timeout=10)
    if rc != 1:
        raise RuntimeError(f"poweroff gave QEMU status {rc}: {g.console()}")
    return split


def run_cold(image: Path, tsc_hz: int, memory: str, extra: list[str]) -> tuple[float, dict[str, float]]:
    with Guest(image, memory=memory, extra_args=extra) as g:
        g.write_config(PageConfig(name="bench", tsc_hz=tsc_hz))
        start = time.perf_counter()
        g.launch()
        ms = _poll_ready(g, start)
        return ms, _finish(g)


def run_split(image: Path, tsc_hz: int, memory: str, extra: list[str]) -> tuple[float, dict[str, float]]:
    with Guest(image, memory=memory, extra_args=extra) as g:
        g.launch(paused=True)  # prepare phase: QEMU up, QMP negotiated
        assert g.qmp is not None
        g.qmp.execute("query-status")
        g.write_config(PageConfig(name="bench", tsc_hz=tsc_hz))  # execute phase
        start = time.perf_counter()
        g.cont()
        ms = _poll_ready(g, start)
        return ms, _finish(g)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--image", default="noop")
    ap.add_argument("--memory", default="4M")
    ap.add_argument("--no-tsc-hint", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument (repeatable)")
    args = ap.parse_args()

    build_images(f"{args.image}.elf")
    image = BUILD_DIR / f"{args.image}.elf"

    # Warm-up (page cache, the TSC rate for the hint); not measured.
    with Guest(image, memory=args.memory, extra_args=args.qemu_arg) as g:
        g.write_config(PageConfig(name="warmup"))
        g.launch()
        g.wait_boot_state(BootState.READY, timeout=20)
        learned = g.boot_record()
        _finish(g)
    tsc_hz = 0 if args.no_tsc_hint else learned.tsc_hz

    results: dict[str, object] = {
        "image": args.image,
        "memory": args.memory,
        "tsc_hz_hint": tsc_hz,
        "qemu": subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0],
    }
    for name, fn in (("cold_start_to_ready", run_cold), ("split_cont_to_ready", run_split)):
        times, guest_ready, firmware = [], [], []
        for _ in range(args.runs):
            ms, split = fn(image, tsc_hz, args.memory, args.qemu_arg)
            times.append(ms)
            guest_ready.append(split["entry_to_ready_ms"])
            firmware.append(split["firmware_ms"])
        s, gs, fs = summary(times), summary(guest_ready), summary(firmware)
        results[name] = {"ms": s, "guest_entry_to_ready_ms": gs, "firmware_ms": fs, "runs": times}
        print(
            f"{name:22s} median {s['median']:6.2f} ms  min {s['min']:6.2f}  max {s['max']:6.2f}"
            f"   (median firmware {fs['median']:.2f} ms, guest entry->READY {gs['median']:.2f} ms)"
        )
    sizes = {p.name: p.stat().st_size for p in sorted(BUILD_DIR.glob("*.elf"))}
    results["image_bytes"] = sizes
    for name, size in sizes.items():
        print(f"image {name:16s} {size:8d} bytes ({size / 1024:.1f} KiB)")
    print(f"tsc hint: {tsc_hz} Hz (learned source: {learned.tsc_source.name})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
