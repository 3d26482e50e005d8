"""``lightvm --version`` and ``lightvm.__version__``: one release number, from the package metadata."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import lightvm
from lightvm.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def test_dunder_version_is_the_pyproject_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert lightvm.__version__ == project["version"]


def test_version_reads_the_metadata_else_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lightvm.version() == metadata.version("lightvm")

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert lightvm.version() == lightvm.__version__


def test_cli_version_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert out == f"lightvm {lightvm.version()}\n"
    assert err == ""


def test_cli_version_in_a_fresh_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lightvm.cli", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"lightvm {lightvm.version()}\n", "")


def test_version_is_not_looked_up_for_other_commands() -> None:
    code = "import sys; from lightvm.cli import main; main.build_parser(False)"
    code += "; print('importlib.metadata' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
