"""Fixtures for tests that need root: a fresh network namespace per test, removed afterwards.

Every bridge, tap and address a root test makes lives in a namespace the test
created; ``host_untouched`` checks that the host's own interface list is the
same after each test as before it.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns
from pyroute2 import config as pyroute2_config
from twohosts import hosts as hosts  # the two-host fixture of the migration tests

from lightvm.devices.devd import Devd, has_cap_net_admin

_counter = itertools.count()

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


def _host_links() -> set[tuple[int, str]]:
    with IPRoute() as ipr:
        return {(msg["index"], msg.get("IFLA_IFNAME")) for msg in ipr.link("dump")}


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    """Fail a root test that created or removed an interface in the host's namespace."""
    before = _host_links()
    yield
    assert _host_links() == before, "a root test changed the host's interfaces"


@pytest.fixture
def need_net_admin() -> None:
    if not has_cap_net_admin():
        pytest.skip("needs CAP_NET_ADMIN (missing: run as root)")


@pytest.fixture
def nsname(need_net_admin: None) -> Iterator[str]:
    """A fresh, empty network namespace (its loopback up); removed in finally."""
    name = f"lvtest-{os.getpid()}-{next(_counter)}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def devd(nsname: str) -> Iterator[Devd]:
    """A Devd working inside the test's namespace."""
    with Devd(netns=nsname) as d:
        yield d


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
