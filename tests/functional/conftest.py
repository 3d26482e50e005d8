"""Fixtures of the functional tests (the shared ones are in tests/conftest.py).

``lightvmd``: a lightvmd per test on a private state dir, stopped and checked at teardown.
It is defined with its Lightvmd helper in daemonlib.py and registered here, so that test
modules use it by name and never import a fixture.
"""

from __future__ import annotations

from daemonlib import lightvmd

__all__ = ["lightvmd"]
