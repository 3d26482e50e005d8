"""Fixtures for tests that need root (the namespace itself: ``nsname`` in tests/conftest.py).

Every bridge, tap and address a root test makes lives in a namespace the test
created; ``host_untouched`` checks that no host interface disappeared during a test,
and the leak guard that none of this session's was left.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import register_state_dir
from pyroute2 import IPRoute
from pyroute2 import config as pyroute2_config
from twohosts import hosts as hosts  # the two-host fixture of the migration tests

from lightvm.devices.devd import Devd

# pyroute2 forks helpers (netns.create, IPRoute(netns=...)) and stops them with
# SIGTERM. A handler that raises instead (cli.main installs one) would make such a
# fork unwind into pytest and run the rest of the session a second time.
pyroute2_config.disable_mp_signal = True


@pytest.fixture(autouse=True)
def default_sigterm() -> Iterator[None]:
    """Run each root test with the default SIGTERM action, whatever an earlier test installed."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_HOST_PREFIXES = ("lv",)  # lightvm's and the tests' links: another session may remove its own


def _host_links() -> dict[int, str]:
    with IPRoute() as ipr:
        return {msg["index"]: msg.get("IFLA_IFNAME") for msg in ipr.link("dump")}


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    """Fail a root test that removed one of the host's own interfaces. (A link it made
    and left is the leak guard's to find: tests/leakguard.py, by this session's names.)"""
    before = _host_links()
    yield
    after = _host_links()
    gone = {name for index, name in before.items() if index not in after and not name.startswith(_HOST_PREFIXES)}
    assert not gone, f"a root test removed host interfaces: {sorted(gone)}"


@pytest.fixture
def devd(nsname: str) -> Iterator[Devd]:
    """A Devd working inside the test's namespace."""
    with Devd(netns=nsname) as d:
        yield d


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return register_state_dir(tmp_path / "state")
