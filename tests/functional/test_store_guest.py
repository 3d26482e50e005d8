"""A guest in store mode: it reads its config key by key from Debian's xenstored and does its
vif's frontend handshake through the store (images/base/xs.c, lightvm/store_guest.py).

Checked with real guests under TCG: every VM of a fleet says it read its config from the
store and reaches READY; afterwards its frontend and backend are both Connected, the
guest's reads went through its relay (relative paths scoped to its domain); a guest
whose store channel never answers fails with its own FATAL line instead of hanging;
and the fleet's teardown leaves no QEMU, xenstored or relay socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import qemu_pids_mentioning

from lightvm import store
from lightvm.bench.fleets import guest_spec
from lightvm.bench.store_fleet import GUEST_FLAG, StoreFleet, store_channel_args
from lightvm.errors import GuestError, LightVMError
from lightvm.toolstack import Toolstack
from lightvm.util import short_unix_path


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
