"""`lightvm host check`'s KSM line: what ksmd would save per VM, and how to turn it on.

Why: with ksmd running, QEMU's default mem-merge already takes ~2 MiB off each idle VM
(docs/memory.md); the operator must be told so whichever state the host is in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightvm.cli import host


def _ksm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: str | None, zero: str = "1") -> host.Check:
    files = {"KSM_RUN": "run", "KSM_SHARING": "pages_sharing", "KSM_ZERO_PAGES": "use_zero_pages"}
    for attr, name in files.items():
        monkeypatch.setattr(host, attr, tmp_path / name)
    if run is not None:
        (tmp_path / "run").write_text(run + "\n")
        (tmp_path / "pages_sharing").write_text("1234\n")
        (tmp_path / "use_zero_pages").write_text(zero + "\n")
    (check,) = [c for c in host.check_memory() if c.name == "ksm"]
    return check


def test_ksm_off_says_what_ksmd_would_save_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check = _ksm(tmp_path, monkeypatch, "0")
    assert check.status == "info" and "~2 MiB" in check.detail and "mem-merge" in check.detail
    assert "LIGHTVM_KSM=1" in check.detail and "docs/memory.md" in check.detail
    fix = check.fix or ""
    assert str(tmp_path / "run") in fix and str(tmp_path / "use_zero_pages") in fix


def test_ksm_on_reports_sharing_zero_pages_and_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIGHTVM_KSM", raising=False)
    check = _ksm(tmp_path, monkeypatch, "1", zero="0")
    assert check.status == "ok" and "1234 pages shared" in check.detail and "use_zero_pages off" in check.detail
    assert "would make whole QEMUs" in check.detail
    monkeypatch.setenv("LIGHTVM_KSM", "1")
    assert "LIGHTVM_KSM=1 is set" in _ksm(tmp_path, monkeypatch, "1").detail


def test_no_ksm_in_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check = _ksm(tmp_path, monkeypatch, None)
    assert check.status == "info" and "CONFIG_KSM" in check.detail
