"""Per-VM cgroup limits, the jail's last layer (lightvm/jail.py): a QEMU that a guest took
over cannot take the host's memory or fill its process table.

Each VM's QEMU goes into a cgroup of its own, named after the VM's record id, under a
parent ``lightvm`` (``LIGHTVM_CGROUP_PARENT`` to rename it: the test suite gives each
session its own), with

* memory: guest RAM + ``OVERHEAD_MIB`` (QEMU's own heap, TCG translation cache, thread
  stacks; an idle unikernel's QEMU uses ~8 MiB beyond its guest, a Linux guest's ~60), so
  a QEMU that runs away is killed by the kernel's OOM killer inside its cgroup, not the
  host's processes;
* pids: ``PIDS_MAX`` tasks (QEMU's main thread, one per vCPU, RCU, the I/O and worker
  threads: a few dozen at most).

Where "the host allows": the cgroup v1 ``memory`` and ``pids`` hierarchies when they are
mounted and writable (this host: a container whose v1 hierarchies are rw), else cgroup v2
when ``/sys/fs/cgroup`` is the unified hierarchy with both controllers enabled for its
children, else nothing (and :func:`available` says why; ``lightvm host check`` shows it).
The QEMU is moved in right after it started, while it is paused (``-S``) and before any
guest instruction runs; its cgroup is removed when the VM is destroyed (its tasks gone).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT_ENV = "LIGHTVM_CGROUP_PARENT"
OVERHEAD_MIB = 256
PIDS_MAX = 128


def parent_name() -> str:
    return os.environ.get(PARENT_ENV) or "lightvm"


def _v1() -> dict[str, Path] | None:
    dirs = {c: ROOT / c for c in ("memory", "pids")}
    if all((d / "cgroup.procs").is_file() and os.access(d, os.W_OK) for d in dirs.values()):
        return dirs
    return None


def _v2() -> Path | None:
    try:
        controllers = (ROOT / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    if {"memory", "pids"} <= set(controllers) and os.access(ROOT, os.W_OK):
        return ROOT
    return None


def available() -> str | None:
    """None when VMs get cgroup limits here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if _v1() is not None or _v2() is not None:
        return None
    return "no writable cgroup v1 memory+pids hierarchies, and cgroup v2 does not delegate memory+pids here"


def _folders(vm_id: str) -> list[Path]:
    v1 = _v1()
    if v1 is not None:
        return [v1["memory"] / parent_name() / vm_id, v1["pids"] / parent_name() / vm_id]
    v2 = _v2()
    return [v2 / parent_name() / vm_id] if v2 is not None else []


def confine(vm_id: str, pid: int, memory_mib: int) -> list[Path]:
    """Put ``pid`` (a VM's paused QEMU) into the VM's cgroup(s) with its limits; the folders
    made (empty when the host allows none).

    :raise OSError: a limit could not be set or the process not moved (what was made is
        removed first).
    """
    if os.geteuid() != 0:
        return []
    made: list[Path] = []
    try:
        for folder in _folders(vm_id):
            (folder.parent).mkdir(exist_ok=True)
            if folder.parent.parent == ROOT and (ROOT / "cgroup.subtree_control").is_file() and _v1() is None:
                _enable_v2_controllers(folder.parent)
            folder.mkdir(exist_ok=True)
            made.append(folder)
            limit = (memory_mib + OVERHEAD_MIB) << 20
            if folder.parent.parent.name == "memory":
                (folder / "memory.limit_in_bytes").write_text(str(limit))
            elif folder.parent.parent.name == "pids":
                (folder / "pids.max").write_text(str(PIDS_MAX))
            else:  # cgroup v2: both controllers in one folder
                (folder / "memory.max").write_text(str(limit))
                (folder / "pids.max").write_text(str(PIDS_MAX))
            (folder / "cgroup.procs").write_text(str(pid))
    except OSError:
        release(vm_id)
        raise
    return made


def _enable_v2_controllers(parent: Path) -> None:
    with contextlib.suppress(OSError):
        (parent / "cgroup.subtree_control").write_text("+memory +pids")


def release(vm_id: str) -> None:
    """Remove the VM's cgroup(s); a folder that still has tasks (QEMU not dead yet) stays
    and is removed by the next destroy of a VM (:func:`sweep`)."""
    for folder in _folders(vm_id):
        with contextlib.suppress(OSError):
            folder.rmdir()


def sweep() -> None:
    """Remove every empty VM cgroup under the parent (those whose VM is gone)."""
    for parent in {f.parent for f in _folders("x")}:
        with contextlib.suppress(OSError):
            for entry in os.scandir(parent):
                if entry.is_dir():
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)


def of_pid(pid: int) -> list[str]:
    """The cgroups ``pid`` is in (lines of /proc/PID/cgroup), for tests and host check."""
    try:
        return Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []


__all__ = ["OVERHEAD_MIB", "PIDS_MAX", "available", "confine", "of_pid", "release", "sweep"]
