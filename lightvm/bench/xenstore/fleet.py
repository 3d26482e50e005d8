"""The ``lightvm-xenstore`` boot variant: lightvm with a XenStore-style control plane.

Each VM is described in Debian's real xenstored (lightvm/bench/xenstore/store.py: the daemon with the
xsshim preload, started and stopped by this fleet) the way ``xl create`` does it; the
host waits for the vif backend's InitWait/hotplug through a watch, then boots the VM
with the toolstack's cold path and ``lightvm.xs`` on its command line. The guest
(images/base/xs.c) then reads its config key by key from the store over its store
channel (a UART relayed to xenstored by lightvm/bench/xenstore/guest.py) and does the frontend
half of its vif's XenbusState handshake with the netback thread before it goes on to
READY. The N-1 running VMs stay introduced, with their nodes, watches and store
connections, so the store's cost grows with N as in the paper (Fig. 9).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path

from lightvm.bench.runner import Sample
from lightvm.bench.xenstore import store
from lightvm.bench.xenstore.guest import Netback, Relay
from lightvm.boot import BOOT_STEP_KEYS
from lightvm.errors import LightVMError
from lightvm.spec import VMSpec

GUEST_FLAG = "lightvm.xs"  # images/base/xs.c: read the config from the store


def store_channel_args(path: Path) -> list[str]:
    """QEMU arguments of a guest's store channel: COM2, connected to the relay's socket."""
    return ["-chardev", f"socket,id=xs,path={path}", "-device", "isa-serial,chardev=xs,iobase=0x2f8,irq=3"]


class StoreFleet:
    """``store.domain_create`` + ``Toolstack.create`` per VM; ``domain_destroy`` + destroy after.

    The sample: ``ms`` = host store traffic (``store_ms``) plus the toolstack's time to
    READY (which includes the guest's own store traffic), the boot breakdown shifted
    by ``store_ms``, and ``destroy_ms``.
    """

    variant = "lightvm-xenstore"

    def __init__(self, spec: VMSpec, accel: str) -> None:
        from lightvm.toolstack import Toolstack

        self.spec = dataclasses.replace(spec, cmdline=f"{spec.cmdline} {GUEST_FLAG}".strip())
        self.accel = accel
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-store-")
        self.channels: dict[str, Path] = {}
        self.ts = Toolstack(Path(self._tmp.name) / "state", extra_qemu_args=self._qemu_args)
        self.daemon = store.XenStored(Path(self._tmp.name) / "xenstored")
        self.client: store.XsClient | None = None
        self.netback: Netback | None = None
        self.relay: Relay | None = None
        try:
            self.daemon.start()
            self.client = self.daemon.client()
            self.netback = Netback(self.daemon)
            self.relay = Relay(self.daemon)
        except BaseException:
            self._teardown()
            raise
        self.running: list[tuple[str, store.Domain]] = []
        self.next_domid = 1
        self.seq = 0

    def _qemu_args(self, name: str) -> list[str]:
        return store_channel_args(self.channels[name])

    def _domain(self, name: str) -> store.Domain:
        domid = self.next_domid
        self.next_domid += 1
        return store.Domain(
            domid, name, memory_kib=self.spec.memory_mib * 1024,
            mac=f"00:16:3e:{(domid >> 16) & 0xFF:02x}:{(domid >> 8) & 0xFF:02x}:{domid & 0xFF:02x}",
            ip=f"10.{(domid >> 16) & 0xFF}.{(domid >> 8) & 0xFF}.{domid & 0xFF}",
        )  # fmt: skip

    def _check(self) -> None:
        for part in (self.netback, self.relay):
            if part is not None and part.error is not None:
                raise store.StoreError(f"{type(part).__name__} failed: {part.error}") from part.error

    def _start(self, name: str) -> tuple[store.Domain, float, dict[str, float | None]]:
        assert self.client is not None and self.relay is not None
        self._check()
        dom = self._domain(name)
        t0 = time.perf_counter()
        store.domain_create(self.client, dom)
        store_ms = (time.perf_counter() - t0) * 1000
        try:
            self.channels[name] = self.relay.add(dom.domid)
            (result,) = self.ts.create(self.spec, name=name, accel=self.accel)
        except BaseException:
            self._remove(name, dom)
            raise
        return dom, store_ms, result.boot_ms

    def _remove(self, name: str, dom: store.Domain) -> None:
        assert self.client is not None and self.relay is not None
        self.relay.remove(dom.domid)
        self.channels.pop(name, None)
        with contextlib.suppress(LightVMError):
            store.domain_destroy(self.client, dom)

    def grow(self, count: int) -> None:
        while len(self.running) < count:
            name = f"bg{self.next_domid}"
            dom, _ms, _boot = self._start(name)
            self.running.append((name, dom))

    def measure(self) -> Sample:
        self.seq += 1
        name = f"m{self.seq}"
        t0 = time.perf_counter()
        dom, store_ms, boot = self._start(name)
        wall = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        self.ts.destroy(name)
        self._remove(name, dom)
        destroy = (time.perf_counter() - t1) * 1000
        sample: Sample = {"wall_ms": wall, "destroy_ms": destroy, "store_ms": store_ms}
        for step in BOOT_STEP_KEYS:
            value = boot.get(step)
            if value is not None:
                sample[step] = store_ms + float(value)
        sample["ms"] = sample.get("ready", wall)
        return sample

    def pids(self) -> list[int]:
        pids = [info.pid for info in self.ts.list() if info.pid]
        return pids + ([self.daemon.pid] if self.daemon.pid else [])

    def close(self) -> None:
        with contextlib.suppress(LightVMError):
            self.ts.destroy_all()
        for name, dom in self.running:
            self._remove(name, dom)
        self.running = []
        self._teardown()

    def _teardown(self) -> None:
        for part in (self.relay, self.netback, self.client):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop() if not isinstance(part, store.XsClient) else part.close()
        self.daemon.stop()
        self._tmp.cleanup()


__all__ = ["GUEST_FLAG", "StoreFleet", "store_channel_args"]
