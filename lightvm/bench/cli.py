"""``lightvm bench SUITE``: run a benchmark suite, write results.json and plots.

lightvm.cli.main calls :func:`register` with its subparsers, as it does for each command group.
``lightvm bench boot --vms 1,10,50 --accel tcg`` writes
``bench-results/<timestamp>-boot/`` with ``results.json`` (metadata and every
sample), ``summary.txt`` (medians and ratios, also printed) and the plots.
The exit status is 1 when any row failed (its error is in the JSON), so CI
notices a baseline that broke.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm.bench import suite
from lightvm.errors import LightVMError

if TYPE_CHECKING:
    from lightvm.bench.runner import Result

# Only argparse work happens at import: `lightvm create` must not pay for the harness
# (runner, matplotlib) just because `bench` is one of its subcommands.

# --smoke: checks that results are produced and sane, not that they are fast.
SMOKE_VMS = (1, 2)
SMOKE_ITERATIONS = 2
SMOKE_WARMUP = 1
SMOKE_IDLE_WINDOW_S = 1.0
SMOKE_STOCK_ITERATIONS = 1  # tinyx: one boot of the stock Debian VM per row (tens of seconds each)
# Unmeasured iterations per point when --warmup is not given. In the boot suite the first
# boots after a fleet is (re)built can be slow (a new xenstored or lightvmd, code and
# pages not yet warm): with 1 warm-up, lightvm-xenstore's median at N = 1 once came out
# at 69.6 ms against 39.5 at N = 10 (lightvm/bench/README.md).
WARMUP = {"boot": 3}
# --max-steal when not given: this host is a guest of a shared machine, and in a boot run
# most rows measured while it stole 20-38 % of the CPUs had medians 1.4-4x those of quiet rows.
MAX_STEAL_PCT = {"boot": 10.0}

# The options only some suites read: given to another suite, they would be ignored
# without a word (a run that measured something else than asked), so they are refused.
ONLY_FOR = {
    "order": ("boot",),
    "settle": ("boot", "template"),
    "baselines": ("boot", "density"),
    "memory_mib": ("checkpoint",),
    "idle_window": ("density", "split", "tinyx"),
    "stock_iterations": ("tinyx",),
    "creates": ("burst",),
    "initial_pool": ("burst",),
    "clients": ("burst",),
    "pool_idle": ("burst",),
    "net": ("splitnic",),
    "disk": ("splitnic",),
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench`` to the ``lightvm`` argument parser."""
    p = subparsers.add_parser(
        "bench",
        help=f"run a benchmark suite ({', '.join(suite.SUITES)}): JSON results + plots",
        description="Run a benchmark suite side by side with its baselines; write results.json "
        "(git describe, host, CPU, accel, QEMU version, every sample), summary.txt and PNG/SVG plots.",
    )
    p.add_argument(
        "suite", choices=(*suite.SUITES, "burst", "splitnic", "replot"), metavar="SUITE",
        help=f"one of {', '.join(suite.SUITES)}; 'burst' (creates against lightvmd's adaptive pool); "
        "'splitnic' (daytime with a NIC from lightvmd's pool next to cold, and its daytime line read); "
        "or 'replot RESULTS.json' to redraw a run's plots",
    )  # fmt: skip
    p.add_argument("results", nargs="?", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--vms", type=_int_list, default=None, help="N values, e.g. 1,10,100 (default 1,10,100)")
    p.add_argument("--iterations", type=int, default=None, help="measured iterations per point (default 10)")
    p.add_argument(
        "--warmup", type=int, default=None, help="unmeasured iterations per point (default 3 for boot, else 1)"
    )
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="accelerator (default auto)")
    p.add_argument("--out", type=Path, help="results folder (default bench-results/<timestamp>-SUITE)")
    p.add_argument("--smoke", action="store_true", help="few VMs, few iterations: checks it works, not speed")
    p.add_argument(
        "--baselines",
        type=_name_list,
        default=None,
        help="boot, density: the baselines to run, comma-separated "
        "(default fork-exec,crun,libvirt,lightvm-xenstore; 'none' for none)",
    )
    p.add_argument("--app", default="noop", help="example guest the VMs boot (default noop)")
    p.add_argument(
        "--memory-mib", type=int, default=None, help="checkpoint: guest RAM of the VMs (default: the example's)"
    )
    p.add_argument(
        "--idle-window", type=float, default=None, help="density, split, tinyx: seconds of idle sampling (10)"
    )
    p.add_argument(
        "--stock-iterations", type=int, default=None, metavar="N",
        help="tinyx: measured boots of the stock Debian VM per row (default 3; smoke 1, no warm-up)",
    )  # fmt: skip
    p.add_argument("--max-vms", type=int, default=200, help="refuse N above this unless raised (default 200)")
    p.add_argument(
        "--order", choices=suite.ORDERS, default=None,
        help="boot: 'n' (default) measures every variant at one N before the next N; "
        "'variant' runs each variant through all its Ns (each fleet grows once: cheaper, less robust)",
    )  # fmt: skip
    p.add_argument(
        "--settle", type=float, default=None, metavar="SECONDS",
        help="boot, template: pause after each row's set-up (fleet built or grown, pool full) before timing "
        "(default 1; smoke 0)",
    )  # fmt: skip
    p.add_argument(
        "--max-steal", type=float, default=None, metavar="PCT",
        help="run a row again (twice at most) when the hypervisor stole more than PCT %% of the CPUs "
        "during it (default 10 for boot; a negative value: never)",
    )  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--creates", type=int, default=None, help="burst: creates in all (default 10000; smoke 40)")
    p.add_argument("--initial-pool", type=int, default=None, help="burst: the pool's floor and start size (default 4)")
    p.add_argument("--clients", type=int, default=None, help="burst: concurrent create -> destroy loops (default 1)")
    p.add_argument(
        "--pool-idle", type=float, default=None, metavar="SECONDS",
        help="burst: the daemon's --pool-idle, how soon the grown pool shrinks after the burst (default 3)",
    )  # fmt: skip
    p.add_argument(
        "--net", choices=("tap", "user"), default=None,
        help="splitnic: the vif's networking (tap: root, a namespace of the run's own; user: --publish)",
    )  # fmt: skip
    p.add_argument("--disk", action="store_true", help="splitnic: a VM with a read-only disk instead of a NIC")
    p.set_defaults(func=cmd_bench)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: N must be >= 1")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    return () if text == "none" else tuple(x.strip() for x in text.split(",") if x.strip())


def options(args: argparse.Namespace) -> suite.SuiteOptions:
    from lightvm import accel as accelmod

    opts = suite.SuiteOptions(accel=accelmod.select(args.accel).accel, app=args.app, memory_mib=args.memory_mib)
    if args.smoke:
        opts.vms, opts.iterations, opts.warmup = list(SMOKE_VMS), SMOKE_ITERATIONS, SMOKE_WARMUP
        opts.idle_window_s, opts.settle_s = SMOKE_IDLE_WINDOW_S, 0.0
        opts.stock_iterations, opts.stock_warmup = SMOKE_STOCK_ITERATIONS, 0
    else:
        opts.warmup = WARMUP.get(args.suite, opts.warmup)
        opts.max_steal_pct = MAX_STEAL_PCT.get(args.suite)
    if args.max_steal is not None:
        opts.max_steal_pct = args.max_steal if args.max_steal >= 0 else None
    if args.vms is not None:
        opts.vms = args.vms
    if args.iterations is not None:
        opts.iterations = args.iterations
    if args.warmup is not None:
        opts.warmup = args.warmup
    if args.stock_iterations is not None:
        if args.stock_iterations < 1:
            raise LightVMError(f"--stock-iterations {args.stock_iterations}: must be >= 1")
        opts.stock_iterations = args.stock_iterations
    if args.idle_window is not None:
        opts.idle_window_s = args.idle_window
    if args.order is not None:
        opts.order = args.order
    if args.settle is not None:
        if args.settle < 0:
            raise LightVMError(f"--settle {args.settle}: must be >= 0")
        opts.settle_s = args.settle
    if args.baselines is not None:
        from lightvm.bench.boot import BASELINES

        unknown = [b for b in args.baselines if b not in BASELINES]
        if unknown:
            raise LightVMError(f"--baselines: unknown {', '.join(unknown)}; known: {', '.join(BASELINES)}")
        opts.baselines = args.baselines
    if max(opts.vms) > args.max_vms:
        raise LightVMError(f"--vms up to {max(opts.vms)}: above --max-vms {args.max_vms} (raise it to run)")
    return opts


def plot_subtitle(meta: dict[str, Any]) -> str:
    qemu = str(meta.get("qemu_version", "")).replace("QEMU emulator version ", "QEMU ")
    host = f"{meta.get('hostname')}, {meta.get('nproc')} CPUs"
    return f"{meta.get('git_describe')} | accel {meta.get('accel')} | {host} | {qemu}"


def replot(results_json: Path, out: Path | None = None) -> list[Path]:
    """Draw a results file's plots again (e.g. after a plot changed), next to it by default."""
    from lightvm.bench import runner

    doc = runner.load_json(results_json)
    module = suite.load(doc["meta"]["suite"])
    written: list[Path] = module.plot(
        runner.results_from_doc(doc), out or results_json.parent, plot_subtitle(doc["meta"])
    )
    return written


def run_suite(name: str, opts: suite.SuiteOptions, out: Path, plots: bool = True) -> tuple[Path, list[Result]]:
    """Run suite ``name``; write results.json, summary.txt and plots into ``out``."""
    import contextlib

    from lightvm.bench import runner

    module = suite.load(name)
    meta = runner.metadata(
        name,
        opts.accel,
        {
            "vms": opts.vms,
            "iterations": opts.iterations,
            "warmup": opts.warmup,
            "baselines": list(opts.baselines),
            "app": opts.app,
            "memory_mib": opts.memory_mib,
            "idle_window_s": opts.idle_window_s,
            "order": opts.order,
            "settle_s": opts.settle_s,
            "max_steal_pct": opts.max_steal_pct,
            "stock_iterations": opts.stock_iterations,
            "stock_warmup": opts.stock_warmup,
        },
    )
    with contextlib.ExitStack() as stack:
        rows = module.benchmarks(opts, stack)
        results = runner.run(rows, max_steal_pct=opts.max_steal_pct)
    reference = {str(r.params.get("variant")): module.REFERENCE for r in results if "variant" in r.params}
    table = runner.summary_table(results, reference)
    # a suite's own lines after the table (tinyx: the stock ratios), in results.json too
    extra_fn = getattr(module, "summary_extra", None)
    extra: list[str] = extra_fn(results) if extra_fn is not None else []
    written: list[Path] = []
    if plots:
        try:
            written = module.plot(results, out, plot_subtitle(meta))
        except ModuleNotFoundError as exc:  # an install without the bench extra: not a failure
            print(f"plots skipped: {exc.name} is not installed (pip install 'lightvm[bench]')", file=sys.stderr)
        except Exception as exc:  # plots are a view; the numbers must still be written
            print(f"plots failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    path = out / "results.json"
    runner.write_json(
        path,
        meta,
        results,
        {"describe": module.describe(), "plots": [p.name for p in written], "summary_table": table,
         "summary_extra": extra},
    )  # fmt: skip
    (out / "summary.txt").write_text("\n".join([table, *extra]) + "\n")
    return path, results


def refuse_foreign_options(args: argparse.Namespace) -> None:
    """:raise LightVMError: an option of :data:`ONLY_FOR` was given to a suite that does not read it."""
    for dest, suites in ONLY_FOR.items():
        value = getattr(args, dest)
        if value is not None and value is not False and args.suite not in suites:
            flag = "--" + dest.replace("_", "-")
            raise LightVMError(
                f"{flag}: only the {' and '.join(suites)} suite{'s' if len(suites) > 1 else ''} "
                f"read{'' if len(suites) > 1 else 's'} it, not {args.suite}; leave it out"
            )


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    if args.suite == "replot":
        if args.results is None:
            raise LightVMError("replot: name a results.json")
        for path in replot(args.results, args.out):
            print(path)
        return 0

    refuse_foreign_options(args)
    if args.suite == "burst":
        return _cmd_burst(args)
    if args.suite == "splitnic":
        return _cmd_splitnic(args)
    opts = options(args)
    out = args.out or Path("bench-results") / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.suite}"
    path, results = run_suite(args.suite, opts, out, plots=not args.no_plots)
    print((out / "summary.txt").read_text(), end="")
    print(f"results: {path}")
    failed = [r.name for r in results if r.error]
    if failed:
        print(f"lightvm: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_burst(args: argparse.Namespace) -> int:
    """``lightvm bench burst``: one long run, not rows of iterations (lightvm/bench/burst.py)."""
    import time

    from lightvm import accel as accelmod
    from lightvm.bench import burst, runner

    accel = accelmod.select(args.accel).accel
    creates = 40 if args.smoke else 10000 if args.creates is None else args.creates
    initial_pool = 4 if args.initial_pool is None else args.initial_pool
    clients = 1 if args.clients is None else args.clients
    pool_idle = 3.0 if args.pool_idle is None else args.pool_idle
    options = {"creates": creates, "initial_pool": initial_pool, "clients": clients, "app": args.app}
    meta = runner.metadata("burst", accel, {**options, "pool_idle_s": pool_idle})
    doc = burst.bench(creates, initial_pool, clients, pool_idle, app=args.app, accel=accel)
    out = args.out or Path("bench-results") / f"{time.strftime('%Y%m%d-%H%M%S')}-burst"
    path = burst.write(doc, meta, out)
    print(burst.report(doc))
    print(f"results: {path}")
    if not burst.ok(doc):
        print("lightvm: burst: client errors, a leak, or the pool did not shrink back (see above)", file=sys.stderr)
        return 1
    return 0


def _cmd_splitnic(args: argparse.Namespace) -> int:
    """``lightvm bench splitnic``: pool and cold creates of a VM with a NIC (or a disk),
    alternating in one daemon (lightvm/bench/splitnic.py). TCG only (the daemon's pool
    is TCG here); ``--smoke``: 2 iterations, 1 warm-up."""
    import time

    from lightvm.bench import runner, splitnic

    if args.accel == "kvm":
        raise LightVMError("bench splitnic: TCG only (use --accel tcg or auto)")
    iterations = 2 if args.smoke else args.iterations or 30
    warmup = 1 if args.smoke else 3 if args.warmup is None else args.warmup
    net = args.net or "tap"
    options = {"iterations": iterations, "warmup": warmup, "net": net, "disk": args.disk}
    meta = runner.metadata("splitnic", "tcg", options)
    result = splitnic.run(iterations, warmup, user=net == "user", disk=args.disk)
    out = args.out or Path("bench-results") / f"{time.strftime('%Y%m%d-%H%M%S')}-splitnic"
    path = splitnic.write(result, meta, out)
    print(splitnic.report(result))
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lightvm.bench.cli SUITE ...`` (the same as ``lightvm bench``)."""
    parser = argparse.ArgumentParser(prog="lightvm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except LightVMError as exc:
        print(f"lightvm: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
