"""Clones as a density fleet: N idle VMs started from one template (lightvm/mobility/template.py).

Set-up, untimed: one VM of the guest boots (cold path, a private state dir), becomes a
template (its RAM a file the clones map private) and is destroyed. ``grow(k)`` then
clones the template until k run, one-shot (``lightvm clone`` without lightvmd: a QEMU
per clone, several in flight), each clone with its own name, MAC, NoXS identity and,
for a daytime guest, its own published 127.0.0.1 port, which ``query_all`` asks. What a
clone costs beyond a cold VM's is what it does not share: the template's pages it never
wrote are counted once across the fleet (Pss), its own writes are its own.
"""

from __future__ import annotations

import time
from pathlib import Path

from lightvm.bench.fleets import LightvmColdFleet
from lightvm.bench.runner import Sample
from lightvm.spec import VMSpec

SOURCE = "tpl-src"
TEMPLATE_DIR = "template"


class LightvmCloneFleet(LightvmColdFleet):
    """Clones of one template (see the module docstring); the cold fleet's state dir,
    ports, check, pids and teardown."""

    variant = "lightvm-clone"

    def __init__(self, spec: VMSpec, accel: str, publish_port: int | None = None) -> None:
        from lightvm.mobility.template import create_template

        super().__init__(spec, accel, publish_port)
        self.tdir = Path(self._tmp.name) / TEMPLATE_DIR
        self.batch = 0
        try:
            self.ts.create(spec, name=SOURCE, accel=accel)
            create_template(self.ts, SOURCE, self.tdir)
            self.ts.destroy(SOURCE)
        except BaseException:
            self.close()
            raise

    def grow(self, count: int) -> None:
        """Clone the template until ``count`` clones run (one ``clone`` call for the rest)."""
        from lightvm.bench.ports import free_port_run
        from lightvm.mobility.clone import clone

        more = count - self.count
        if more <= 0:
            return
        publish = None
        if self.publish_port is not None:
            first = free_port_run(more)
            publish = f"127.0.0.1:{first}:{self.publish_port}"
        self.batch += 1
        clone(self.ts, str(self.tdir), more, f"c{self.batch}-{{i}}", publish)
        if publish is not None:
            self.ports += list(range(first, first + more))
        self.count = count

    def measure(self) -> Sample:
        """One more clone, timed from the call to its READY, then destroyed."""
        from lightvm.mobility.clone import clone

        self.batch += 1
        t0 = time.perf_counter()
        result = clone(self.ts, str(self.tdir), 1, f"m{self.batch}-{{i}}", None)
        wall = (time.perf_counter() - t0) * 1000
        for made in result.clones:
            self.ts.destroy(str(made["name"]))
        return {"ms": wall, "wall_ms": wall}


__all__ = ["LightvmCloneFleet"]
