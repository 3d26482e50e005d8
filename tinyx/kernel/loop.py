"""The Tinyx kernel trimming loop: the LightVM paper's heuristic, per application.

    python -m tinyx.kernel.loop APP [--max-trims N] [--jobs 2] [--image DIR]

Start from the platform fragment (tinyconfig + tinyx/kconfig/qemu-microvm.config), build,
boot the app's image with that kernel and run the recipe's probe. If the probe fails, add
options from the ``add`` list of tinyx/kconfig/loop-candidates.txt, one more at a time,
until it passes (then try dropping the ones added before the last, which may not have
been needed). Then try each ``trim`` candidate: kept when the kernel still builds, boots
and passes the probe, undone otherwise. The result is written as tinyx/kconfig/APP.config
(the platform fragment plus the loop's lines), which ``lightvm image build APP`` then uses,
and a report (tinyx/kconfig/APP.loop.json and .txt).

This module is the loop's logic and its command line; what a step does (configure, build
incrementally in one object tree, pack, boot, probe, cache) is tinyx/kernel/loopstep.py.
The logic takes the step as a function, so tests/unit/test_tinyx_loop.py drives it with
fake builds and boots.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightvm.errors import TinyxError

CANDIDATE_RE = re.compile(r"^(add|trim)\s+(CONFIG_[A-Z0-9_]+)=(\S+)\s+#\s*(\S.*)$")


@dataclass(frozen=True)
class Candidate:
    """One option the loop may set: ``option=value``, and why it is a candidate."""

    kind: str  # "add" | "trim"
    option: str  # CONFIG_X
    value: str  # y, n, or a value
    why: str

    def line(self) -> str:
        if self.value == "n":
            return f"# {self.option} is not set"
        return f"{self.option}={self.value}"


@dataclass
class StepResult:
    """What one step found. ``stage`` is where it stopped: "pass", or the first thing that
    failed: "kconfig" (olddefconfig did not keep an option: a dependency or a select),
    "build", "boot" (no READY), "probe" (READY but the probe's reply was wrong)."""

    ok: bool
    stage: str
    detail: str = ""
    config: dict[str, str] = field(default_factory=dict)  # the resulting .config (CONFIG_X -> value)
    vmlinux_bytes: int = 0
    kernel_bytes: int = 0  # the packed file an image ships
    build_seconds: float = 0.0
    boot_ms: float = 0.0  # create -> READY of the (last) boot
    step_seconds: float = 0.0
    cached: bool = False


Step = Callable[[str], StepResult]


@dataclass
class Tried:
    """One step of the history: what was changed and what the step found."""

    action: str  # "base", "add", "drop-add", "trim"
    candidate: Candidate | None
    result: StepResult
    kept: bool


@dataclass
class Outcome:
    base: StepResult
    final: StepResult
    kept: list[Candidate]  # the loop's lines, in order
    history: list[Tried]
    fragment: str  # the platform fragment plus the loop's lines


def parse_candidates(text: str, where: str = "loop-candidates.txt") -> tuple[list[Candidate], list[Candidate]]:
    """The add and trim lists; every line needs a ``# why``."""
    adds: list[Candidate] = []
    trims: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for num, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = CANDIDATE_RE.match(line)
        if not m:
            raise TinyxError(f"{where}:{num}: expected 'add|trim CONFIG_X=value  # why', got {raw!r}")
        kind, option, value, why = m.groups()
        if (kind, option) in seen:
            raise TinyxError(f"{where}:{num}: {kind} {option} is listed twice")
        seen.add((kind, option))
        (adds if kind == "add" else trims).append(Candidate(kind, option, value, why.strip()))
    return adds, trims


def render(platform: str, changes: list[Candidate], header: str = "") -> str:
    """The platform fragment, then the loop's lines: Kconfig and parse_fragment both let
    the last assignment of an option win, so a trim of a fragment option overrides it."""
    out = platform.rstrip("\n") + "\n"
    if changes:
        out += "\n# The kernel trimming loop's result (tinyx/kernel/loop.py)" + (f": {header}" if header else "") + "\n"
        for c in changes:
            out += f"# {c.kind}: {c.why}\n{c.line()}\n"
    return out


def _already(config: dict[str, str], c: Candidate) -> bool:
    """Whether the passing kernel's .config already has ``c``'s value (nothing to try)."""
    return config.get(c.option, "n") == c.value


def run_loop(
    platform: str,
    adds: list[Candidate],
    trims: list[Candidate],
    step: Step,
    max_trims: int | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> Outcome:
    """The loop. ``step(fragment)`` builds, boots and probes one kernel.

    :raise TinyxError: the probe fails with the platform config and with every add."""
    history: list[Tried] = []
    changes: list[Candidate] = []
    base = step(render(platform, changes))
    history.append(Tried("base", None, base, base.ok))
    log(f"base (platform fragment): {_say(base)}")
    current = base
    if not base.ok:
        added: list[Candidate] = []
        for c in adds:
            if base.config and _already(current.config or base.config, c):
                continue
            r = step(render(platform, [*changes, c]))
            log(f"add {c.line()}: {_say(r)}")
            keep = r.stage != "kconfig"  # an option Kconfig refuses is not in the config: leave it out
            history.append(Tried("add", c, r, keep))
            if keep:
                changes.append(c)
                added.append(c)
            if r.ok:
                current = r
                break
        else:
            raise TinyxError(
                f"the probe fails with the platform config and with every add candidate ({len(adds)}): "
                f"last failure at {history[-1].result.stage}: {history[-1].result.detail[:300]}; "
                "add the option the app needs to tinyx/kconfig/loop-candidates.txt"
            )
        for c in reversed(added[:-1]):  # the last one made it pass; the earlier ones may be useless
            trial = [x for x in changes if x is not c]
            r = step(render(platform, trial))
            log(f"drop add {c.line()}: {_say(r)}")
            history.append(Tried("drop-add", c, r, r.ok))
            if r.ok:
                changes = trial
                current = r
    tried = 0
    for c in trims:
        if max_trims is not None and tried >= max_trims:
            log(f"stopping: --max-trims {max_trims} reached")
            break
        if current.config and _already(current.config, c):
            log(f"trim {c.line()}: already so in the passing config")
            continue
        tried += 1
        r = step(render(platform, [*changes, c]))
        log(f"trim {c.line()}: {_say(r)}")
        history.append(Tried("trim", c, r, r.ok))
        if r.ok:
            changes.append(c)
            current = r
    return Outcome(base, current, changes, history, render(platform, changes))


def _say(r: StepResult) -> str:
    what = "passes" if r.ok else f"fails at {r.stage}"
    bits = [what]
    if r.kernel_bytes:
        bits.append(f"kernel {r.kernel_bytes / 1e6:.3f} MB packed ({r.vmlinux_bytes / 1e6:.2f} MB vmlinux)")
    if r.boot_ms:
        bits.append(f"READY {r.boot_ms:.0f} ms")
    if r.cached:
        bits.append("cached")
    elif r.step_seconds:
        bits.append(f"step {r.step_seconds:.0f} s (build {r.build_seconds:.0f} s)")
    if not r.ok and r.detail:
        bits.append(r.detail.splitlines()[-1][:160])
    return ", ".join(bits)


def report(outcome: Outcome, app: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The loop's report as JSON-able data: options added and removed, sizes before and after."""

    def res(r: StepResult) -> dict[str, Any]:
        d = asdict(r)
        d.pop("config")
        return d

    base, final = outcome.base, outcome.final
    return {
        "app": app,
        "added": [c.line() for c in outcome.kept if c.kind == "add"],
        "removed": [c.line() for c in outcome.kept if c.kind == "trim"],
        "kernel_before": {
            "vmlinux_bytes": base.vmlinux_bytes,
            "packed_bytes": base.kernel_bytes,
            "ready_ms": base.boot_ms,
        },
        "kernel_after": {
            "vmlinux_bytes": final.vmlinux_bytes,
            "packed_bytes": final.kernel_bytes,
            "ready_ms": final.boot_ms,
        },
        "steps": [
            {
                "action": t.action,
                "option": t.candidate.line() if t.candidate else None,
                "why": t.candidate.why if t.candidate else None,
                "kept": t.kept,
                **res(t.result),
            }
            for t in outcome.history
        ],
        **(extra or {}),
    }


def report_text(rep: dict[str, Any]) -> str:
    b, a = rep["kernel_before"], rep["kernel_after"]
    lines = [
        f"kernel trimming loop: {rep['app']}",
        f"  kernel before: {b['packed_bytes'] / 1e6:.3f} MB packed, {b['vmlinux_bytes'] / 1e6:.2f} MB vmlinux, "
        f"READY {b['ready_ms']:.0f} ms (one boot)",
        f"  kernel after:  {a['packed_bytes'] / 1e6:.3f} MB packed, {a['vmlinux_bytes'] / 1e6:.2f} MB vmlinux, "
        f"READY {a['ready_ms']:.0f} ms (one boot)",
        f"  added:   {', '.join(rep['added']) or '-'}",
        f"  removed: {', '.join(rep['removed']) or '-'}",
        "  steps:",
    ]
    for s in rep["steps"]:
        what = s["option"] or "platform fragment"
        state = "pass" if s["ok"] else f"FAIL at {s['stage']}"
        cost = "cached" if s["cached"] else f"{s['step_seconds']:.0f} s (build {s['build_seconds']:.0f} s)"
        size = f"{s['kernel_bytes'] / 1e6:.3f} MB" if s["kernel_bytes"] else "-"
        lines.append(f"    {s['action']:8} {what:38} {state:16} {'kept' if s['kept'] else 'undone':6} {size:>9} {cost}")
    for k in ("measured_at", "note"):
        if k in rep:
            lines.append(f"  {k}: {rep[k]}")
    return "\n".join(lines) + "\n"


def app_config_path(kconfig_dir: Path, app: str) -> Path:
    """tinyx/kconfig/APP.config: the loop's result, used by the image builder when present."""
    return kconfig_dir / f"{app}.config"


def seed_kernel_cache(vmlinux: Path, config: Path, fragment: Path, build_seconds: float) -> Path:
    """Install the loop's last passing kernel as the ordinary build's cache entry for
    ``fragment`` (APP.config): the same tinyconfig + fragment + olddefconfig recipe built
    it, incrementally, so the first ``lightvm image build APP`` needs no kernel build."""
    import json
    import os
    import shutil

    from tinyx.kernel import build as kb

    version = kb.source_version()
    key = kb.cache_key(version, fragment.read_bytes(), Path(kb.__file__).read_bytes())
    out = kb.BUILD / f"kernel-{key}"
    if (out / "vmlinux").is_file():
        return out / "vmlinux"
    tmp = kb.BUILD / f"kernel-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        shutil.copy2(vmlinux, tmp / "vmlinux")
        shutil.copy2(config, tmp / "config")
        meta = {
            "source": f"{kb.SOURCE_PACKAGE} {version}",
            "fragment": fragment.name,
            "key": key,
            "build_seconds": build_seconds,
            "vmlinux_bytes": vmlinux.stat().st_size,
            "built_by": "tinyx.kernel.loop (its object tree, built incrementally)",
        }
        (tmp / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "vmlinux"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import signal
    import sys
    import time

    from lightvm import paths
    from tinyx.image.recipe import resolve

    kconfig = paths.tinyx_package() / "kconfig"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("app", help="a recipe name (tinyx/apps/APP.toml) with a port and a [probe]")
    ap.add_argument("--image", type=Path, help="an image folder of APP (its initramfs); default: build one")
    ap.add_argument("--max-trims", type=int, default=None, help="try at most N trim candidates (bounds the time)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--candidates", type=Path, default=kconfig / "loop-candidates.txt")
    ap.add_argument("--out-dir", type=Path, default=kconfig, help="where APP.config and its report go")
    args = ap.parse_args(argv)

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[tinyx-loop {time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    from tinyx.kernel import build as kb
    from tinyx.kernel.loopstep import Stepper

    try:
        recipe = resolve(args.app)
        adds, trims = parse_candidates(args.candidates.read_text(), str(args.candidates))
        image = args.image
        if image is None:
            from tinyx.image.build import Options, build

            image, _ = build(Options(app=args.app, out=kb.BUILD / f"kloop-{recipe.name}" / "image"))
        from tinyx.image.pack import find_initrd

        initramfs = find_initrd(image)
        if initramfs is None:
            raise TinyxError(f"{image}: no initramfs.cpio[.lz4|.gz] (build it with lightvm image build {args.app})")
        stepper = Stepper(recipe, initramfs, args.jobs)
        platform = kb.DEFAULT_FRAGMENT.read_text()
        outcome = run_loop(platform, adds, trims, stepper, args.max_trims, log)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        rep = report(outcome, recipe.name, {"measured_at": stamp, "loop_seconds": round(time.monotonic() - t0, 1)})
        args.out_dir.mkdir(parents=True, exist_ok=True)
        dest = app_config_path(args.out_dir, recipe.name)
        header = f"{recipe.name}, {stamp}; report: {recipe.name}.loop.txt"
        dest.write_text(render(platform, outcome.kept, header))
        (args.out_dir / f"{recipe.name}.loop.json").write_text(json.dumps(rep, indent=1) + "\n")
        (args.out_dir / f"{recipe.name}.loop.txt").write_text(report_text(rep))
        final_key = stepper.key(outcome.fragment)
        entry = kb.BUILD / f"kstep-{final_key}"
        if (entry / "vmlinux").is_file() and (entry / "config").is_file():
            seeded = seed_kernel_cache(entry / "vmlinux", entry / "config", dest, outcome.final.build_seconds)
            log(f"kernel cache seeded: {seeded}")
        sys.stderr.write(report_text(rep))
        print(dest)
    except (TinyxError, kb.BuildError) as e:
        print(f"tinyx-loop: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinyx-loop: interrupted; no step result was cached for the step in progress", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
