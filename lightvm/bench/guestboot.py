"""Boot time of a bare lightvm unikernel under QEMU, without the toolstack around it.

    python -m lightvm.bench.guestboot [--runs N] [--image noop] [--json FILE]

Why: the toolstack's create path (lifecycle.py) adds its records, locks and network
to QEMU's start and the guest's boot; this isolates those two. Measures, each over N
runs (default 20), under ``-accel tcg -M microvm,pcie=on``, with the product's own
command line and QMP client (``lightvm.machine.Machine``):

  (a) cold: QEMU process start -> READY in the boot record (the host polls the
      mmap'd NoXS region it already has; no serial parsing on the path). QEMU is
      started the product's way: paused, with ``cont`` queued on QMP at once;
  (b) split: ``cont`` of a pre-spawned paused QEMU (-S, QMP negotiated, its page
      already written) -> READY.

The guest is told the TSC rate through the NoXS page (NOXS_FEAT_TSC_HZ), as a
toolstack does once it has learned the rate from any guest's boot record (a
warm-up boot here); ``--no-tsc-hint`` measures the guest calibrating itself.
Also prints the guest-side split (TSC entry -> devices up -> READY) and the
image sizes. Every QEMU is killed and reaped and every region unlinked.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lightvm import paths
from lightvm.bench.runner import REPO
from lightvm.machine import EXIT_CLEAN, QEMU_BINARY, Machine, MachineConfig
from lightvm.noxs import BootRecord, BootState, NoxsRegion, PageConfig, Sysctl
from lightvm.state import shm_dir

IMAGES_DIR = REPO / "images"
BUILD_DIR = IMAGES_DIR / "build"
FIRMWARE = BUILD_DIR / "lvfw.bin"  # our minimal firmware: SeaBIOS would add ~2.3 ms
READY = int(BootState.READY)
POLL_S = 0.0001


_counter = itertools.count()


@contextlib.contextmanager
def guest(image: Path, memory_mib: int, extra: list[str]) -> Iterator[tuple[Machine, NoxsRegion]]:
    """One QEMU (not launched yet) and its NoXS region; both always cleaned up."""
    tag = f"lightvm-guestboot-{os.getpid()}-{next(_counter)}"
    with tempfile.TemporaryDirectory(prefix=tag + "-") as tmp:
        region = NoxsRegion.create(shm_dir() / tag, 1)
        try:
            config = MachineConfig(
                name="bench",
                kernel=image,
                memory_mib=memory_mib,
                vcpus=1,
                cmdline="",
                accel="tcg",
                noxs_path=region.path,
                noxs_size=region.size,
                console_path=Path(tmp) / "console.log",
                qmp_path=Path(tmp) / "qmp.sock",
                log_path=Path(tmp) / "qemu.log",
                extra_args=tuple(extra),
                bios=FIRMWARE,
            )
            with Machine(config) as machine:
                yield machine, region
        finally:
            region.close()
            region.unlink()


def _console(machine: Machine) -> str:
    try:
        return machine.config.console_path.read_text(errors="replace")
    except OSError:
        return ""


def _poll_ready(machine: Machine, region: NoxsRegion, start: float, timeout: float = 10.0) -> float:
    """Spin on the boot state word (cheap mmap read); return ms since start."""
    deadline = start + timeout
    while True:
        if region.boot_state() == READY:
            return (time.perf_counter() - start) * 1000.0
        now = time.perf_counter()
        if now > deadline or not machine.is_running():
            raise RuntimeError(f"guest not READY: {region.boot_record()}\n{_console(machine)}")
        # Yield the CPU: a spinning poller steals a core from QEMU's main loop
        # and vCPU threads on a 2-core host. 100 us bounds the added error.
        time.sleep(POLL_S)


def _finish(machine: Machine, region: NoxsRegion) -> dict[str, float]:
    """Guest-side split from the boot record, then a clean poweroff."""
    br = region.boot_record()
    split = {
        # TSC counts from the vCPU's first run (`cont` of a -S QEMU):
        # tsc_entry is the firmware's share (lvfw) before our first instruction.
        "firmware_ms": br.tsc_entry * 1000.0 / br.tsc_hz if br.tsc_hz else 0.0,
        "entry_to_devices_up_ms": br.tsc_delta_ms(br.tsc_entry, br.tsc_devices_up) or 0.0,
        "entry_to_ready_ms": br.tsc_delta_ms(br.tsc_entry, br.tsc_ready) or 0.0,
    }
    region.request(Sysctl.POWEROFF)
    if not machine.wait(10.0) or machine.exitcode != EXIT_CLEAN:
        raise RuntimeError(f"poweroff gave QEMU status {machine.exitcode}: {_console(machine)}")
    return split


def run_cold(image: Path, tsc_hz: int, memory_mib: int, extra: list[str]) -> tuple[float, dict[str, float]]:
    with guest(image, memory_mib, extra) as (machine, region):
        region.write_config(PageConfig(name="bench", tsc_hz=tsc_hz))
        start = time.perf_counter()
        machine.launch()
        machine.resume(wait=False)
        ms = _poll_ready(machine, region, start)
        return ms, _finish(machine, region)


def run_split(image: Path, tsc_hz: int, memory_mib: int, extra: list[str]) -> tuple[float, dict[str, float]]:
    with guest(image, memory_mib, extra) as (machine, region):
        machine.launch()  # prepare phase: QEMU up, QMP negotiated
        machine.qmp.negotiate()
        machine.query_status()
        region.write_config(PageConfig(name="bench", tsc_hz=tsc_hz))  # execute phase
        start = time.perf_counter()
        machine.resume(wait=False)
        ms = _poll_ready(machine, region, start)
        return ms, _finish(machine, region)


def build_images(*targets: str, timeout: float = 300.0) -> None:
    """``make -C images`` of ``targets`` and the firmware (a no-op when they are up to date).

    Only in a checkout: an installed lightvm ships them built (lightvm/paths.py) and has no Makefile.
    """
    if paths.checkout() is None:
        return
    goals = [f"build/{t}" for t in (*targets, "lvfw.bin")]
    subprocess.run(
        ["make", "-C", str(IMAGES_DIR), "-s", "-j2", *goals], check=True, timeout=timeout, capture_output=True
    )


def memory_mib(text: str) -> int:
    """``4M`` or ``4``: MiB of guest RAM."""
    return int(text.removesuffix("M").removesuffix("m"))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--image", default="noop")
    ap.add_argument("--memory", default="4M")
    ap.add_argument("--no-tsc-hint", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument (repeatable)")
    args = ap.parse_args()

    build_images(f"{args.image}.elf")
    image = BUILD_DIR / f"{args.image}.elf"

    memory = memory_mib(args.memory)
    # Warm-up (page cache, the TSC rate for the hint); not measured.
    with guest(image, memory, args.qemu_arg) as (machine, region):
        region.write_config(PageConfig(name="warmup"))
        machine.launch()
        machine.resume(wait=False)
        _poll_ready(machine, region, time.perf_counter(), timeout=20)
        learned: BootRecord = region.boot_record()
        _finish(machine, region)
    tsc_hz = 0 if args.no_tsc_hint else learned.tsc_hz

    version = subprocess.run([QEMU_BINARY, "--version"], capture_output=True, text=True, timeout=10)
    results: dict[str, object] = {
        "image": args.image,
        "memory": args.memory,
        "tsc_hz_hint": tsc_hz,
        "qemu": version.stdout.splitlines()[0],
    }
    for name, fn in (("cold_start_to_ready", run_cold), ("split_cont_to_ready", run_split)):
        times, guest_ready, firmware = [], [], []
        for _ in range(args.runs):
            ms, split = fn(image, tsc_hz, memory, args.qemu_arg)
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
