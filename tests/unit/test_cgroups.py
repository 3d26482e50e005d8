"""Per-VM cgroup limits (lightvm/cgroups.py) against a fake cgroup v1 tree (the real one is
checked on running QEMUs by tests/functional/test_jail.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightvm import cgroups


@pytest.fixture
def fake_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for hierarchy in ("memory", "pids"):
        (tmp_path / hierarchy).mkdir()
        (tmp_path / hierarchy / "cgroup.procs").write_text("")
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)
    monkeypatch.setenv(cgroups.PARENT_ENV, "lvunit")
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    return tmp_path


def test_confine_sets_the_limits_and_moves_the_process(fake_v1: Path) -> None:
    assert cgroups.available() is None
    made = cgroups.confine("vm1", 4242, memory_mib=16)
    assert made == [fake_v1 / "memory" / "lvunit" / "vm1", fake_v1 / "pids" / "lvunit" / "vm1"]
    assert (made[0] / "memory.limit_in_bytes").read_text() == str((16 + cgroups.OVERHEAD_MIB) << 20)
    assert (made[1] / "pids.max").read_text() == str(cgroups.PIDS_MAX)
    assert (made[0] / "cgroup.procs").read_text() == "4242" == (made[1] / "cgroup.procs").read_text()


def test_no_hierarchy_no_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)  # nothing mounted there
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    assert "no writable cgroup" in (cgroups.available() or "")
    assert cgroups.confine("vm1", 4242, 16) == []
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    assert cgroups.available() == "needs root" and cgroups.confine("vm1", 4242, 16) == []
