"""ci/nightly.sh is a bare-metal script: check it parses and keeps its A/B promises (text checks)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent.parent / "ci" / "nightly.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_nightly_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_split_is_among_the_default_suites() -> None:
    match = re.search(r'^SUITES=\$\{SUITES:-"([^"]*)"\}', SCRIPT.read_text(), re.MULTILINE)
    assert match is not None
    assert "split" in match.group(1).split()


def test_both_sides_get_one_exported_qemu() -> None:
    text = SCRIPT.read_text()
    assert re.search(r"^export LIGHTVM_QEMU=", text, re.MULTILINE)
    assert "qemu/build/current/qemu-system-x86_64" in text
    # exported before the first suite runs, so A and B inherit the same value
    assert text.index("export LIGHTVM_QEMU=") < text.index("for suite in $SUITES")


def test_nightly_runs_the_fuzzers_long() -> None:
    """The nightly job selects the fuzzers' long run with LIGHTVM_FUZZ_EXAMPLES (fuzzlib)."""
    text = SCRIPT.read_text()
    assert re.search(r"LIGHTVM_FUZZ_EXAMPLES=\$\{FUZZ_EXAMPLES:-\d+\}.*pytest", text)
    assert "tests/unit/test_fuzz_*.py" in text
    fuzzlib = (SCRIPT.parent.parent / "tests" / "unit" / "fuzzlib.py").read_text()
    assert 'os.environ.get("LIGHTVM_FUZZ_EXAMPLES"' in fuzzlib
