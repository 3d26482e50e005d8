"""The ``lightvm-xenstore`` boot variant: lightvm with a XenStore-style control plane.

Each VM is described in Debian's real xenstored (lightvm/store.py: the daemon with the
xsshim preload, started and stopped by this fleet) the way ``xl create`` does it, and
the host waits for the vif backend's InitWait/hotplug handshake through a watch before
it boots the VM with the toolstack's cold path. The N-1 running VMs stay introduced
and keep their nodes and death watches in the store, so the store's per-request cost
grows with N as in the paper (Fig. 9).

What it does not do yet: the guest still reads its config from its NoXS page, not key by
key from the store, so the frontend half of the handshake (guest writes Initialised /
Connected) is not in the measured path; see lightvm/bench/README.md.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

from lightvm import store
from lightvm.bench.fleets import BOOT_STEPS
from lightvm.bench.runner import Sample
from lightvm.errors import LightVMError
from lightvm.spec import VMSpec


class StoreFleet:
    """``store.domain_create`` + ``Toolstack.create`` per VM; ``domain_destroy`` + destroy after.

    The sample: ``ms`` = store traffic (``store_ms``) plus the toolstack's time to READY,
    the boot breakdown shifted by ``store_ms``, and ``destroy_ms``.
    """

    variant = "lightvm-xenstore"

    def __init__(self, spec: VMSpec, accel: str) -> None:
        from lightvm.toolstack import Toolstack

        self.spec = spec
        self.accel = accel
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-store-")
        self.ts = Toolstack(Path(self._tmp.name) / "state")
        self.daemon = store.XenStored(Path(self._tmp.name) / "xenstored")
        self.daemon.start()
        try:
            self.client = self.daemon.client()
            self.backend = store.Backend(self.daemon.client())
        except BaseException:
            self.daemon.stop()
            self._tmp.cleanup()
            raise
        self.running: list[tuple[str, store.Domain]] = []
        self.next_domid = 1
        self.seq = 0

    def _domain(self, name: str) -> store.Domain:
        domid = self.next_domid
        self.next_domid += 1
        return store.Domain(
            domid, name, memory_kib=self.spec.memory_mib * 1024,
            mac=f"00:16:3e:{(domid >> 16) & 0xFF:02x}:{(domid >> 8) & 0xFF:02x}:{domid & 0xFF:02x}",
            ip=f"10.{(domid >> 16) & 0xFF}.{(domid >> 8) & 0xFF}.{domid & 0xFF}",
        )  # fmt: skip

    def _start(self, name: str) -> tuple[store.Domain, float, dict[str, float | None]]:
        dom = self._domain(name)
        t0 = time.perf_counter()
        store.domain_create(self.client, self.backend, dom)
        store_ms = (time.perf_counter() - t0) * 1000
        try:
            (result,) = self.ts.create(self.spec, name=name, accel=self.accel)
        except BaseException:
            with contextlib.suppress(LightVMError):
                store.domain_destroy(self.client, dom)
            raise
        return dom, store_ms, result.boot_ms

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
        store.domain_destroy(self.client, dom)
        destroy = (time.perf_counter() - t1) * 1000
        sample: Sample = {"wall_ms": wall, "destroy_ms": destroy, "store_ms": store_ms}
        for step in BOOT_STEPS:
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
        for _name, dom in self.running:
            with contextlib.suppress(LightVMError):
                store.domain_destroy(self.client, dom)
        self.running = []
        self.client.close()
        self.backend.c.close()
        self.daemon.stop()
        self._tmp.cleanup()


__all__ = ["StoreFleet"]
