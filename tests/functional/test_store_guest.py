"""A guest in store mode: it reads its config key by key from Debian's xenstored and does its
vif's frontend handshake through the store (images/base/xs.c, lightvm/bench/xenstore/guest.py).

Checked with real guests under TCG: every VM of a fleet says it read its config from the
store and reaches READY; afterwards its frontend and backend are both Connected, the
guest's reads went through its relay (relative paths scoped to its domain); a guest
whose store channel never answers fails with its own FATAL line instead of hanging;
through the relay, xenstored treats a guest as its own domain (permissions included);
and the fleet's teardown leaves no QEMU, xenstored or relay socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import qemu_pids_mentioning

from lightvm.bench.fleets import guest_spec
from lightvm.bench.xenstore import store
from lightvm.bench.xenstore.fleet import GUEST_FLAG, StoreFleet, store_channel_args
from lightvm.bench.xenstore.guest import FD_SETSIZE, Netback, Relay
from lightvm.bench.xenstore.store import XsClient, XsError
from lightvm.errors import GuestError, LightVMError
from lightvm.toolstack import Toolstack
from lightvm.util import Deadline, short_unix_path


@pytest.fixture
def fleet(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreFleet]:
    if store.available():
        pytest.fail(store.available())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    f = StoreFleet(guest_spec("noop"), "tcg")
    relay_dir, rundir = f.relay.dir if f.relay else None, f.daemon.rundir
    try:
        yield f
    finally:
        f.close()
        assert not qemu_pids_mentioning(str(tmp_path)), "QEMU left running"
        assert relay_dir is not None and not relay_dir.exists(), "relay sockets left"
        assert not rundir.exists() and f.daemon.pid is None, "xenstored left"


def test_guests_read_config_and_connect_through_the_store(fleet: StoreFleet) -> None:
    fleet.grow(2)
    sample = fleet.measure()
    assert 0 < sample["store_ms"] < sample["guest_entry"] < sample["devices_up"] <= sample["ready"] == sample["ms"]
    c = fleet.client
    assert c is not None
    for name, dom in fleet.running:
        console = fleet.ts.console_path(name).read_text()
        assert "lightvm-guest: config read from the store\n" in console, console
        assert console.index("config read from the store") < console.index("READY noop")
        assert c.read(f"{dom.vif_frontend}/state") == str(store.XENBUS_CONNECTED)
        assert c.read(f"{dom.vif_backend}/state") == str(store.XENBUS_CONNECTED)
    assert fleet.netback is not None and fleet.netback.error is None
    assert fleet.relay is not None and fleet.relay.error is None


def test_guest_without_an_answering_store_fails_named(images: Path, tmp_path: Path) -> None:
    """The channel is connected but nobody answers: the guest gives up after its 2 s deadline
    with a FATAL line (GuestError), it does not hang until the host's boot timeout."""
    sock_path = tmp_path / "xs.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address, dirfd = short_unix_path(sock_path)
    silent.bind(address)
    if dirfd is not None:
        os.close(dirfd)
    silent.listen(1)
    spec = guest_spec("noop")
    spec = dataclasses.replace(spec, cmdline=f"{spec.cmdline} {GUEST_FLAG}".strip())
    ts = Toolstack(tmp_path / "state", boot_timeout=20, extra_qemu_args=lambda name: store_channel_args(sock_path))
    try:
        with pytest.raises(GuestError, match="xs: the store does not answer"):
            ts.create(spec, name="mute", accel="tcg")
    finally:
        with contextlib.suppress(LightVMError):
            ts.destroy_all()
        silent.close()
    assert not qemu_pids_mentioning(str(tmp_path))


def test_relayed_guest_is_its_own_domain_in_xenstored(tmp_path: Path) -> None:
    """Through its relay a guest is domain <id> to xenstored (its ring, not a dom0 socket):
    relative paths are its own, it may write its frontend, and xenstored refuses it
    another domain's nodes and its own dom0-owned ones (EACCES), as in Xen."""
    if store.available():
        pytest.fail(store.available())
    with store.XenStored(tmp_path / "xs") as daemon:
        netback, relay = Netback(daemon), Relay(daemon)
        try:
            with daemon.client() as host:
                doms = [store.Domain(i, f"vm{i}") for i in (1, 2)]
                for d in doms:
                    store.domain_create(host, d)
                path = relay.add(1)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                address, dirfd = short_unix_path(path)
                sock.connect(address)
                if dirfd is not None:
                    os.close(dirfd)
                with XsClient(sock, timeout=5) as guest:
                    assert guest.read("name") == "vm1"  # relative: /local/domain/1/name
                    # the relay's one descriptor per VM stays out of select()'s range
                    link = relay.links[1]
                    assert link.listener is None and link.guest is not None
                    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 2 * FD_SETSIZE:
                        assert link.guest.fileno() >= FD_SETSIZE
                    assert guest.read("device/vif/0/backend") == doms[0].vif_backend
                    guest.write("device/vif/0/state", str(store.XENBUS_INITIALISED))
                    for denied in ("/local/domain/2/name", "/local/domain/0/backend/vif/2/0/state"):
                        with pytest.raises(XsError) as err:
                            guest.read(denied)
                        assert err.value.errno_name == "EACCES", denied
                    with pytest.raises(XsError) as err:
                        guest.write("name", "renamed")  # dom0 owns it, the guest may only read
                    assert err.value.errno_name == "EACCES"
                # netback saw the frontend go Initialised and connected the backend
                deadline = Deadline(5)
                while host.read(f"{doms[0].vif_backend}/state") != str(store.XENBUS_CONNECTED):
                    assert not deadline.expired(), "netback did not connect the backend"
                    time.sleep(0.01)
                assert host.read("/local/domain/1/device/vif/0/state") == str(store.XENBUS_INITIALISED)
                assert host.read("/local/domain/1/name") == "vm1"
                assert relay.error is None and netback.error is None
        finally:
            relay.stop()
            netback.stop()
        assert not relay.dir.exists()
