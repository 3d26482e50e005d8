"""python -m lightvm.bench.qmpclients (docs/qemu-notes.md, "Why our own QMP client"), in short."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightvm.bench import qmpclients

pytestmark = pytest.mark.functional


def test_measures_both_clients_when_qemu_qmp_is_installed(images: Path) -> None:
    if not qmpclients.have_qemu_qmp():
        pytest.skip("qemu.qmp is not installed")
    times = qmpclients.measure(2)
    assert set(times) == {"lightvm.qmp", "qemu.qmp.legacy", "qemu.qmp (QMPClient)"}
    assert all(len(v) == 2 and all(t > 0 for t in v) for v in times.values())


def test_without_qemu_qmp_ours_only_and_says_so(
    images: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(qmpclients, "have_qemu_qmp", lambda: False)
    assert qmpclients.main(["--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("qemu.qmp is not installed: measuring lightvm.qmp only")
    assert "lightvm.qmp" in out and "qemu.qmp.legacy" not in out
