"""Fixtures of the benchmark smoke tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _leftovers(marker: str) -> list[str]:
    """What a suite could leave: processes naming our private temp dir (QEMUs, libvirtd, the
    crun worker), containers whose root is in it (the tinyx suite's redis), crun's busybox
    containers, libvirt NoXS files, bench network namespaces.
    (Taken before and after a test: only what appeared meanwhile counts.)"""
    found = []
    marker_tail = marker.lstrip("/").split("/", 1)[-1]  # without /tmp: the part any mount shows
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
            # a container's root mount is its bundle's rootfs, a folder of ours (its /proc/PID/root
            # reads "/"); the path is relative to its file system's root: /tmp may be a tmpfs
            with open(Path(entry.path, "mountinfo")) as f:
                root = f.readline().split(" ")[3:4]
        except (OSError, IndexError):
            continue
        if state != "Z" and (marker in argv or marker_tail in "".join(root) or "busybox sleep 3600" in argv):
            found.append(f"{entry.name}: {argv[:160]}")
    found += [f"/dev/shm/{p.name}" for p in Path("/dev/shm").glob("lightvm-bench-*")]
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [f"netns {p.name}" for p in netns.glob(f"lvbench-{os.getpid()}-*")]  # made in this process
    return found


@pytest.fixture
def clean_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every temp dir of the suite goes under a private dir, so leftovers are ours for sure
    (other tests on the same host may be running VMs of their own meanwhile)."""
    private = tmp_path / "suite-tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))
    before = _leftovers(str(private))
    yield
    after = [x for x in _leftovers(str(private)) if x not in before]
    assert not after, f"left behind: {after}"
