"""What the CLI's unit tests share: run ``lightvm ARGV`` in process against a fake
backend (patched in where the VM commands open theirs), and capture what it printed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from lightvm.cli import main as cli
from lightvm.cli import vm


def run_with(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], backend: Any, *argv: str
) -> tuple[int, str, str]:
    """``lightvm ARGV`` with ``backend`` doing the VM commands' work: (exit status, stdout, stderr)."""

    @contextlib.contextmanager
    def fake(args: Any) -> Iterator[Any]:
        yield backend

    monkeypatch.setattr(vm, "open_backend", fake)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
