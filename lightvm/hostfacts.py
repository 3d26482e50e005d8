"""Facts about this host, measured once and cached: the TSC rate (and the accel verdict,
stored here by :mod:`lightvm.accel`).

Cache: ``$LIGHTVM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lightvm``, else ``~/.cache/lightvm``;
one JSON file, rewritten atomically. Entries carry the key they were measured under
(the boot id for the TSC rate; host, kernel and QEMU binary for the accel verdict), so a
stale entry is simply not found.

The TSC rate is the hint the host writes into the NoXS page (``tsc_hz``) so the guest
need not calibrate its clock: under TCG and KVM the guest's TSC ticks at the host's
rate. We read the TSC with a 10-byte ``rdtsc`` stub called through ctypes and time it
against CLOCK_MONOTONIC for a few tens of ms, once per host boot.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import time
from pathlib import Path
from typing import Any

from lightvm import paths
from lightvm.util import atomic_write

CACHE_ENV = paths.CACHE_ENV
CACHE_FILE = "host.json"
TSC_MIN_HZ = 100_000_000
TSC_MAX_HZ = 10_000_000_000


def cache_dir() -> Path:
    """The per-user cache dir (:func:`lightvm.paths.cache_dir` owns the lookup)."""
    return paths.cache_dir()


def load_cache() -> dict[str, Any]:
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_cache(data: dict[str, Any]) -> None:
    """Best effort: a read-only home only costs a re-measurement next time."""
    try:
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / CACHE_FILE, json.dumps(data, indent=1, sort_keys=True), mode=0o644)
    except OSError:
        pass


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _rdtsc_function() -> tuple[Any, mmap.mmap]:
    # rdtsc; shl rdx, 32; or rax, rdx; ret
    code = bytes([0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3])
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return ctypes.CFUNCTYPE(ctypes.c_uint64)(address), page


def measure_tsc_hz(interval: float = 0.03) -> int:
    """Measure the host TSC rate in Hz; 0 if it is not invariant or cannot be read."""
    flags = _cpu_flags()
    if os.uname().machine != "x86_64" or not {"constant_tsc", "nonstop_tsc"} <= flags:
        return 0
    try:
        rdtsc, page = _rdtsc_function()
    except (OSError, ValueError, TypeError):
        return 0  # e.g. W^X policy forbids the stub: the guest calibrates itself

    def sample() -> tuple[float, int]:
        # The pair whose clock reads bracket the TSC read most tightly.
        best: tuple[int, float, int] | None = None
        for _ in range(5):
            a = time.perf_counter_ns()
            tsc = rdtsc()
            b = time.perf_counter_ns()
            if best is None or b - a < best[0]:
                best = (b - a, (a + b) / 2, tsc)
        assert best is not None
        return best[1], best[2]

    try:
        t1, c1 = sample()
        time.sleep(interval)  # a measurement interval, not a wait for anything
        t2, c2 = sample()
    finally:
        page.close()  # the stub is never called after this
    hz = round((c2 - c1) * 1e9 / (t2 - t1) / 1000) * 1000
    return hz if TSC_MIN_HZ <= hz <= TSC_MAX_HZ else 0


def tsc_hz() -> int:
    """The host TSC rate (cached per boot), or 0 when unknown."""
    cache = load_cache()
    entry = cache.get("tsc")
    key = boot_id()
    if isinstance(entry, dict) and entry.get("boot_id") == key and isinstance(entry.get("hz"), int):
        return int(entry["hz"])
    hz = measure_tsc_hz()
    cache["tsc"] = {"boot_id": key, "hz": hz}
    save_cache(cache)
    return hz
