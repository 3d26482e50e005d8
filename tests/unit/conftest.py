"""Fixtures of the unit tests that more than one module uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clilib import FakeDaemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    """A fake lightvmd serving the real protocol on ``tmp_path``/lightvmd.sock (clilib)."""
    fake = FakeDaemon(tmp_path)
    try:
        yield fake
    finally:
        fake.close()
