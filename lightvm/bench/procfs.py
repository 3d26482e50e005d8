"""What the suites read from /proc about the processes they measure.

Why a module of its own: boot, density and split all weigh fleets of processes
(memory from smaps_rollup, CPU from stat, the host's MemAvailable, a launcher's
children). Kept here, no suite imports another suite for them.
"""

from __future__ import annotations

from pathlib import Path


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in KiB (empty when the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except (OSError, ValueError):
        return {}
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    except (OSError, IndexError, ValueError):
        return 0


def status_fields(pid: int, keys: tuple[str, ...] = ("VmPTE", "Threads")) -> dict[str, int]:
    """Numeric fields of /proc/PID/status (KiB for the Vm* ones); empty when the process is gone.

    Why beside smaps_rollup: a process's page tables (VmPTE) are host memory that Pss
    leaves out, and its thread count is what fills the host's pid table at scale.
    """
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def mem_available_kib() -> int:
    """MemAvailable of /proc/meminfo: what the host could still give, kernel memory counted."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))


def children_of(parent: int, needle: str = "") -> list[int]:
    """Live child processes of ``parent`` whose command line contains ``needle``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent or fields[0] == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if needle in argv:
            out.append(int(entry.name))
    return out


__all__ = ["children_of", "cpu_ticks", "mem_available_kib", "smaps_rollup", "status_fields"]
