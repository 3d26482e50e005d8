"""Debian's real xenstored, run by lightvm/bench/xenstore/store.py without a hypervisor (the xsshim preload).

Checked against the real daemon: it starts and serves requests; ``domain_create``
leaves the nodes, permissions and introduction that ``xl create`` would, and the vif
backend reached InitWait with its hotplug status; a conflicting transaction is retried;
``domain_destroy`` removes and releases everything; ``stop`` leaves no process and no
run dir. Needs xen-utils-4.17 (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lightvm.bench.xenstore import store
from lightvm.bench.xenstore.guest import Netback
from lightvm.bench.xenstore.store import XenStored, XsError


@pytest.fixture
def daemon() -> Iterator[XenStored]:
    why = store.available()
    if why:
        pytest.fail(why)
    xs = XenStored()
    xs.start()
    try:
        yield xs
    finally:
        pid, rundir = xs.pid, xs.rundir
        xs.stop()
        assert pid is not None and not os.path.exists(f"/proc/{pid}/cmdline"), "xenstored left running"
        assert not rundir.exists(), "run dir left behind"


def test_daemon_serves_and_introduces_dom0(daemon: XenStored) -> None:
    with daemon.client() as c:
        assert c.get_domain_path(0) == "/local/domain/0"
        assert c.is_domain_introduced(0)
        c.write("/probe", "1")
        assert c.read("/probe") == "1"
        with pytest.raises(XsError) as err:
            c.read("/no/such/node")
        assert err.value.errno_name == "ENOENT"


def test_domain_create_and_destroy_like_xl(daemon: XenStored) -> None:
    netback = Netback(daemon)
    try:
        _create_and_destroy(daemon)
        assert netback.error is None
    finally:
        netback.stop()


def _create_and_destroy(daemon: XenStored) -> None:
    with daemon.client() as c:
        doms = [store.Domain(i, f"vm{i}", memory_kib=4096) for i in (1, 2, 3)]
        for d in doms:
            store.domain_create(c, d)
        d = doms[1]
        assert c.is_domain_introduced(2)
        assert c.read(f"{d.path}/name") == "vm2"
        assert c.read(f"{d.path}/vm") == d.vm_path
        assert c.read(f"{d.vm_path}/uuid") == d.uuid
        assert c.read(f"{d.path}/memory/target") == "4096"
        assert c.get_perms(d.path) == ["n0", "r2"]  # dom0 owns it, the guest may read it
        assert c.get_perms(d.vif_frontend) == ["n2", "r0"]  # the guest owns its frontend
        assert c.read(f"{d.vif_frontend}/backend") == d.vif_backend
        assert c.read(f"{d.vif_frontend}/state") == str(store.XENBUS_INITIALISING)
        assert c.read(f"{d.vif_backend}/state") == str(store.XENBUS_INIT_WAIT)
        assert c.read(f"{d.vif_backend}/hotplug-status") == "connected"
        assert sorted(c.directory("/local/domain")) == ["0", "1", "2", "3"]

        store.domain_destroy(c, d)
        assert not c.is_domain_introduced(2)
        assert sorted(c.directory("/local/domain")) == ["0", "1", "3"]
        assert sorted(c.directory("/local/domain/0/backend/vif")) == ["1", "3"]
        with pytest.raises(XsError):
            c.read(f"{d.vm_path}/uuid")
        for other in (doms[0], doms[2]):
            store.domain_destroy(c, other)
        assert c.directory("/local/domain") == ["0"]


def test_conflicting_transaction_is_retried(daemon: XenStored) -> None:
    with daemon.client() as c, daemon.client() as other:
        c.write("/counter", "0")
        runs: list[int] = []

        def body(tx: int) -> None:
            value = int(c.read("/counter", tx))
            if not runs:  # another writer commits in between, once: our first commit must fail
                other.write("/counter", "10")
            runs.append(value)
            c.write("/counter", str(value + 1), tx)

        store.in_transaction(c, body)
        assert runs == [0, 10]
        assert c.read("/counter") == "11"
