"""Boot one Tinyx image with variants of its kernel or kernel command line, side by side.

    python -m tinyx.kernel.bootcmp IMAGE_DIR --variant base:: --variant tsc:KERNEL:"tsc=reliable" [--runs 8]

A variant is NAME:KERNEL:EXTRA[:FIRMWARE[:INITRD]]: KERNEL a vmlinux (empty: the image's own),
EXTRA words appended to the kernel command line (the spec's ``cmdline``, after lightvm's own
part, lightvm/linux.py), FIRMWARE a ``-bios`` file (the spec's ``firmware``; empty: QEMU's
own), INITRD an initramfs (empty: the image's own; e.g. another build's, to compare formats).
The variants are booted in turn (a, b, c, a, b, c, ...), so the load of a shared machine
falls on all of them alike; each boot is ``lightvm create`` over user
networking with the app's port published, the recipe's probe, then ``destroy``.
Per variant it prints medians [min-max] of: create -> guest entry (Linux's clock starts),
lvinit's "kernel" figure (Linux's clock -> /init), /init -> READY, create -> READY, and the
QEMU process's CPU time at READY (steadier than wall time when other jobs run). This is
how docs/tinyx-size.md ("Boot: phases and what moved") measured the kernel's share.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tinyx.image.pack import find_initrd
from tinyx.image.recipe import resolve
from tinyx.kernel.loopstep import booted_image, probe, ready_console

READY_RE = re.compile(r"lvinit: READY .*\(kernel (\d+) ms, /init to READY (\d+) ms\)")
TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def qemu_cpu_ms(pid: int) -> float:
    """utime + stime of a process, in ms (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def boot_once(
    image: Path, app: str, kernel: Path, extra: str, firmware: str = "", initrd: Path | None = None
) -> dict[str, float]:
    """One create -> probe -> destroy; the figures of that boot."""
    recipe = resolve(app)
    assert recipe.probe is not None
    initrd = initrd or find_initrd(image)
    if initrd is None:
        raise RuntimeError(f"{image}: no initramfs")
    with booted_image(kernel, initrd, recipe, TIMEOUT, "cmp", extra, firmware) as (cli, p, port):
        if p.returncode != 0:
            raise RuntimeError(f"create failed: {(p.stderr or p.stdout)[-500:]}")
        vm = json.loads(p.stdout.strip().splitlines()[-1])
        cpu = qemu_cpu_ms(int(vm["pid"]))
        reply = probe(port, recipe.probe.send.encode(), recipe.probe.expect.encode())
        if recipe.probe.expect.encode() not in reply:
            raise RuntimeError(f"probe: got {reply[:100]!r}")
        con = ready_console(cli, "cmp")
        m = READY_RE.search(con)
        b = vm["boot_ms"]
        return {
            "guest_entry": b["guest_entry"],
            "kernel": float(m.group(1)) if m else float("nan"),
            "init_to_ready": float(m.group(2)) if m else float("nan"),
            "ready": b["ready"],
            "qemu_cpu": cpu,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path, help="an image folder (lightvm image build APP -o DIR)")
    ap.add_argument("--app", default=None, help="the recipe (default: the folder's name)")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:KERNEL:EXTRA[:FIRMWARE[:INITRD]]")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--json", type=Path, help="write every boot's figures here")
    args = ap.parse_args(argv)
    image = args.image.absolute()
    app = args.app or image.name
    variants = []
    for v in args.variant:
        name, kernel, extra, firmware, initrd = [*v.split(":", 4), "", "", "", ""][:5]
        variants.append(
            (
                name,
                Path(kernel).absolute() if kernel else image / "vmlinux",
                extra,
                firmware,
                Path(initrd).absolute() if initrd else None,
            )
        )
    rows: dict[str, list[dict[str, float]]] = {v[0]: [] for v in variants}
    fails: dict[str, int] = {v[0]: 0 for v in variants}
    load0 = os.getloadavg()[0]
    for i in range(args.runs):
        for name, kernel, extra, firmware, initrd in variants:
            try:
                r = boot_once(image, app, kernel, extra, firmware, initrd)
                rows[name].append(r)
                print(f"[bootcmp] run {i + 1} {name}: READY {r['ready']:.0f} ms", file=sys.stderr, flush=True)
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
                fails[name] += 1
                print(f"[bootcmp] run {i + 1} {name}: FAILED {e}", file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0]
    print(
        f"{time.strftime('%H:%M UTC', time.gmtime())}, load {load0:.1f} -> {load1:.1f}, {args.runs} runs, alternating"
    )
    cols = ("guest_entry", "kernel", "init_to_ready", "ready", "qemu_cpu")
    print(f"{'variant':14}" + "".join(f"{c:>22}" for c in cols) + "  failed")
    for name, *_ in variants:
        got = rows[name]
        cells = []
        for c in cols:
            xs = [r[c] for r in got if r[c] == r[c]]
            cells.append(f"{statistics.median(xs):.0f} [{min(xs):.0f}-{max(xs):.0f}]" if xs else "-")
        print(f"{name:14}" + "".join(f"{x:>22}" for x in cells) + f"  {fails[name]}")
    if args.json:
        args.json.write_text(json.dumps({"variants": [list(map(str, v)) for v in variants], "boots": rows}) + "\n")
    return 0 if not any(fails.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
