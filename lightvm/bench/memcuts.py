"""Memory per idle VM, side by side: what each candidate cut saves, and what it costs at boot.

Why a script of its own: a cut is a property of the QEMU process (its environment, its
command line, the host's KSM daemon), so each variant runs in a child process of its own
that grows a fleet of N idle VMs through the toolstack (cold path, the ``--app`` example,
one create at a time), weighs it and destroys it; the variants alternate within each
round, so that the host's load moves them alike. Run as::

    python -m lightvm.bench.memcuts --vms 100 --rounds 2 [--variants base,arena,...] [--out r.json]

Per variant and round: the median boot (create -> READY, ms) over the fleet, and per VM
Pss (smaps_rollup; the guest's memfd RAM and NoXS page included), Anonymous, page tables
(VmPTE, which Pss leaves out), threads, and the idle CPU of the fleet over a window.
The ksmd variants switch the host's KSM daemon on for their fleet only (run=1,
use_zero_pages=1) and give back the previous settings afterwards, Ctrl-C included; their
row waits for ``--ksm-scans`` (2) full ksmd scans after the fleet is up and counts ksmd's own CPU.

``--env-variant NAME:KEY=VALUE[,KEY=VALUE...]`` adds a variant: lightvm as it is with more
environment for the child, e.g. ``LIGHTVM_QEMU=BINARY`` to weigh another QEMU build
against the current one, or ``LIGHTVM_BENCH_THP_OFF=1`` (no transparent huge pages in the
QEMUs, PR_SET_THP_DISABLE, as the ``thp-off`` variant): docs/memory.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightvm.bench.procfs import cpu_ticks, smaps_rollup, status_fields
from lightvm.errors import LightVMError

KSM = Path("/sys/kernel/mm/ksm")
# name -> (environment added to the child, ksmd on, what it is)
VARIANTS: dict[str, tuple[dict[str, str], bool, str]] = {
    "base": ({}, False, "as lightvm starts QEMU today (tb-size=1 for small guests)"),
    "tb-default": ({"LIGHTVM_BENCH_TB_DEFAULT": "1"}, False, "QEMU's default TCG translation buffer"),
    "arena": (
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=0:glibc.malloc.top_pad=0"},
        False,
        "one malloc arena, heap trimmed on every free (M_TRIM_THRESHOLD 0, M_TOP_PAD 0)",
    ),
    "ksmd": ({}, True, "ksmd on: QEMU's mem-merge marks its RAM blocks (ROMs) mergeable"),
    "ksm-all": ({"LIGHTVM_KSM": "1"}, True, "ksmd on and LIGHTVM_KSM=1: the whole QEMU mergeable"),
    "thp-off": ({"LIGHTVM_BENCH_THP_OFF": "1"}, False, "no transparent huge pages in QEMU (PR_SET_THP_DISABLE)"),
}
PR_SET_THP_DISABLE = 41  # linux/prctl.h
BUILTIN = frozenset(VARIANTS)
WINDOW_S = 10.0
KSM_SCANS_TIMEOUT_S = 240.0


def weigh(pids: list[int]) -> dict[str, float]:
    """Per-process means over ``pids``: Pss, Anonymous, shmem, page tables (MiB) and threads."""
    n = len(pids)
    if not n:
        raise LightVMError("memcuts: no process to weigh")
    total = dict.fromkeys(("Pss", "Anonymous", "Pss_Shmem", "Rss", "VmPTE", "Threads"), 0)
    for pid in pids:
        for source in (smaps_rollup(pid), status_fields(pid)):
            for key, value in source.items():
                if key in total:
                    total[key] += value
    mib = {k: total[k] / n / 1024 for k in ("Pss", "Anonymous", "Pss_Shmem", "Rss", "VmPTE")}
    return {
        "pss_mib": mib["Pss"],
        "pss_pte_mib": mib["Pss"] + mib["VmPTE"],
        "anon_mib": mib["Anonymous"],
        "shmem_mib": mib["Pss_Shmem"],
        "rss_mib": mib["Rss"],
        "pte_mib": mib["VmPTE"],
        "threads": total["Threads"] / n,
    }


def ksmd_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "ksmd":
                    return int(entry.name)
    return None


@contextlib.contextmanager
def ksmd_on() -> Iterator[None]:
    """ksmd running with use_zero_pages for the block, the host's previous settings after."""
    if not (KSM / "run").exists():
        raise LightVMError(f"{KSM}: no KSM in this kernel (CONFIG_KSM); drop the ksmd variants")
    saved = {name: (KSM / name).read_text().strip() for name in ("run", "use_zero_pages")}
    try:
        if saved["use_zero_pages"] != "1":
            (KSM / "use_zero_pages").write_text("1")
        (KSM / "run").write_text("1")
        yield
    finally:
        (KSM / "run").write_text(saved["run"])
        if saved["use_zero_pages"] != "1":
            (KSM / "use_zero_pages").write_text(saved["use_zero_pages"])


def child(app: str, vms: int, ksm: bool, scans: int = 2) -> dict[str, Any]:
    """Grow ``vms`` idle VMs of ``app``, weigh them, destroy them (in this process)."""
    from lightvm import machine
    from lightvm.bench.fleets import guest_spec
    from lightvm.toolstack import Toolstack

    if os.environ.get("LIGHTVM_BENCH_TB_DEFAULT") == "1":
        machine.SMALL_GUEST_MIB = 0  # no guest is "small": QEMU's default translation buffer
    if os.environ.get("LIGHTVM_BENCH_THP_OFF") == "1":
        # No transparent huge pages for this process and the QEMUs it starts (inherited
        # across fork and exec): a write to a MADV_HUGEPAGE ROM block then costs 4 KiB, not 2 MiB.
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
            raise LightVMError(f"prctl(PR_SET_THP_DISABLE): {os.strerror(ctypes.get_errno())}")
    spec = guest_spec(app)
    with tempfile.TemporaryDirectory(prefix="lightvm-memcuts-") as tmp:
        ts = Toolstack(Path(tmp) / "state")
        try:
            ready = []
            for i in range(vms):
                (result,) = ts.create(spec, name=f"m{i}", accel="tcg")
                ready.append(float(result.boot_ms.get("ready") or 0.0))
            pids = [info.pid for info in ts.list() if info.pid]
            if len(pids) != vms:
                raise LightVMError(f"memcuts: {vms} VMs created but {len(pids)} run")
            ksm_wait = 0.0
            if ksm:  # full scans after the last VM: a page merges on its second sighting at the earliest
                t0, target = time.monotonic(), int((KSM / "full_scans").read_text()) + scans
                while int((KSM / "full_scans").read_text()) < target:
                    if time.monotonic() - t0 > KSM_SCANS_TIMEOUT_S * scans:
                        raise LightVMError(f"ksmd did not finish {scans} scans in {KSM_SCANS_TIMEOUT_S * scans:.0f} s")
                    time.sleep(0.5)  # a poll for ksmd's progress (a kernel thread)
                ksm_wait = time.monotonic() - t0
            else:
                time.sleep(2.0)  # the last guests reach their idle loop
            sample: dict[str, Any] = {"ready_ms": statistics.median(ready), **weigh(pids), "ksm_wait_s": ksm_wait}
            kpid = ksmd_pid() if ksm else None
            hz = os.sysconf("SC_CLK_TCK")
            t0 = time.monotonic()
            c0, k0 = sum(cpu_ticks(p) for p in pids), cpu_ticks(kpid) if kpid else 0
            time.sleep(WINDOW_S)  # a measurement window
            elapsed = time.monotonic() - t0
            sample["cpu_pct_fleet"] = (sum(cpu_ticks(p) for p in pids) - c0) / hz / elapsed * 100
            sample["cpu_pct_ksmd"] = ((cpu_ticks(kpid) - k0) / hz / elapsed * 100) if kpid else 0.0
            return sample
        finally:
            ts.destroy_all()


def run_variant(name: str, app: str, vms: int, scans: int = 2) -> dict[str, Any]:
    env_add, ksm, _ = VARIANTS[name]
    env = dict(os.environ, **env_add)
    env.pop("LIGHTVM_STATE_DIR", None)
    argv = [sys.executable, "-m", "lightvm.bench.memcuts", "--child", name, "--app", app, "--vms", str(vms)]
    argv += ["--ksm-scans", str(scans)]
    if name not in BUILTIN:  # an --env-variant: the child knows it by its environment alone
        argv[argv.index("--child") + 1] = "base"
    with ksmd_on() if ksm else contextlib.nullcontext():
        proc = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=vms * 10 + 600 + KSM_SCANS_TIMEOUT_S * scans,
            check=False,
        )
    if proc.returncode != 0:
        raise LightVMError(f"memcuts {name}: the child failed: {proc.stderr.strip()[-800:]}")
    return dict(json.loads(proc.stdout))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--app", default="daytime")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--ksm-scans", type=int, default=2, help="full ksmd scans to wait for in the ksmd rows")
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--env-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
        help="one more variant: the base one with KEY=VALUE in QEMU's environment "
        "(e.g. qemu-x:LIGHTVM_QEMU=/path/to/qemu-system-x86_64 to weigh another QEMU build)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for spec in args.env_variant:
        name, _, assignments = spec.partition(":")
        env = dict(a.partition("=")[::2] for a in assignments.split(",") if "=" in a)
        if not name or not env or "" in env:
            raise SystemExit(f"--env-variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
        VARIANTS[name] = (env, False, assignments)
    if args.child:
        print(json.dumps(child(args.app, args.vms, VARIANTS[args.child][1], args.ksm_scans)))
        return 0
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            print(f"round {r + 1}/{args.rounds}: {name} x {args.vms}", file=sys.stderr, flush=True)
            rows[name].append(run_variant(name, args.app, args.vms, args.ksm_scans))
    keys = ("ready_ms", "pss_mib", "pte_mib", "anon_mib", "threads", "cpu_pct_fleet", "cpu_pct_ksmd")
    print(f"{args.vms} idle {args.app} VMs per variant, {args.rounds} rounds (medians):")
    print(f"{'variant':<12}" + "".join(f"{k:>15}" for k in keys))
    for name, samples in rows.items():
        print(f"{name:<12}" + "".join(f"{statistics.median(s[k] for s in samples):>15.3f}" for k in keys))
    if args.out:
        args.out.write_text(json.dumps({"vms": args.vms, "app": args.app, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
