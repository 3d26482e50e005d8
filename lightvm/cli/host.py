"""``lightvm host check [--json]``: what this host can run, why, and the command that fixes each gap.

Why a command: every answer below was already known somewhere (the accelerator verdict and
its reason, which QEMU binary runs, whether the bench baselines can run) but thrown away or
printed only deep inside another command. A laptop user outside the ``kvm`` group saw only
"(tcg ...)"; an installed lightvm ran Debian's QEMU without saying so. Here each check is one
row: a status (``ok``, ``missing``: something lightvm or one of its parts cannot use, or
``info``: a fact worth knowing), what was found, and, when something is missing, the
command that fixes it.

Exit status 1 when this host cannot boot a VM at all (no QEMU, no guest images), else 0:
a TCG-only host or a missing bench baseline is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightvm import paths

CAP_NET_ADMIN = 12
QEMU_VERSION_TIMEOUT = 10.0
KSM_RUN = Path("/sys/kernel/mm/ksm/run")
KSM_SHARING = Path("/sys/kernel/mm/ksm/pages_sharing")
KSM_ZERO_PAGES = Path("/sys/kernel/mm/ksm/use_zero_pages")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
TUN = Path("/dev/net/tun")
# A fix already written into a reason, up to its closing parenthesis: "crun not found (apt
# install crun)", "(join group 'kvm': sudo usermod -aG kvm $USER, then log in again)".
_FIX = re.compile(r"((?:sudo )?(?:apt(?:-get)? install|pip install|modprobe|usermod) [^)]*)")


@dataclass
class Check:
    name: str
    status: str  # "ok", "missing" or "info"
    detail: str
    fix: str | None = None
    essential: bool = False  # missing -> this host cannot boot a VM


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``host check`` to the CLI's subparsers."""
    host = sub.add_parser("host", help="what this host can run (accelerator, QEMU, networking, baselines)")
    hsub = host.add_subparsers(dest="host_command", metavar="COMMAND", required=True)
    p = hsub.add_parser(
        "check",
        parents=[parent],
        help="check this host: what works, why, and the command that fixes each gap",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_check)


def fix_in(reason: str) -> str | None:
    """The command a reason names in parentheses, if any."""
    found = _FIX.search(reason)
    return found.group(1).strip() if found else None


def check_accel() -> Check:
    """The ``--accel auto`` verdict and its reason (lightvm.accel, cached per host)."""
    from lightvm import accel

    choice = accel.select("auto")
    if choice.accel == "kvm":
        return Check("accel", "ok", f"kvm ({choice.reason})")
    fix = fix_in(choice.reason)
    if fix is None and "no probe guest" in choice.reason:
        fix = "make -C images" if paths.checkout() else "reinstall lightvm (its wheel ships the guests)"
    if fix is None and "No such file" in choice.reason:
        fix = "sudo modprobe kvm_intel (or kvm_amd); enable virtualization in the firmware"
    # PVM, a failed or slow probe: TCG is the right answer here and there is nothing to run.
    return Check("accel", "missing" if fix else "info", f"tcg: {choice.reason}", fix)


def check_qemu() -> Check:
    """The QEMU binary microvm guests run on, why that one, and its version."""
    from lightvm import qemubin

    binary = qemubin.qemu_binary("microvm")
    found = shutil.which(binary) if os.sep not in binary else binary
    if found is None or not os.access(found, os.X_OK):
        return Check("qemu", "missing", f"{binary} not found", "apt-get install qemu-system-x86", essential=True)
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=QEMU_VERSION_TIMEOUT)
        version = out.stdout.splitlines()[0] if out.stdout else f"exit {out.returncode}"
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("qemu", "missing", f"{found} does not run: {exc}", "apt-get install qemu-system-x86", True)
    why = qemubin.explain("microvm")
    if qemubin.slim_binary() is None and not os.environ.get(qemubin.ENV):
        return Check("qemu", "info", f"{found} ({version}): {why}", "lightvm setup qemu")
    return Check("qemu", "ok", f"{found} ({version}): {why}")


def check_jail() -> Check:
    """Which layers of the jail around QEMU are on (lightvm/jail.py, docs/security.md)."""
    from lightvm import jail, qemubin

    binary = qemubin.qemu_binary("microvm")
    on = jail.layers(binary)
    if not jail.enabled():
        return Check("jail", "missing", f"off ({jail.ENV}=off): QEMU runs as root, unfiltered", f"unset {jail.ENV}")
    missing = []
    if "seccomp" not in on:
        missing.append("seccomp filter: this QEMU was built without libseccomp")
    if "uid" not in on:
        missing.append("own uid, no capabilities, empty root: they need lightvm to run as root")
    from lightvm import cgroups

    why_not = cgroups.available() if "uid" in on else "they come with the full jail"
    if why_not is None:
        on = [*on, "cgroup limits"]
    else:
        missing.append(f"cgroup limits: {why_not}")
    detail = ", ".join(on) + (f"; not on: {'; '.join(missing)}" if missing else "")
    if missing:
        return Check("jail", "info", detail, "lightvm setup qemu" if "seccomp" not in on else None)
    return Check("jail", "ok", detail)


def check_guests() -> list[Check]:
    """The guest images and examples this layout ships or builds."""
    fix = "make -C images" if paths.checkout() else "reinstall lightvm (its wheel ships the guests)"
    guests = sorted(p.name for p in paths.guests_dir().glob("*.elf"))
    rows = []
    if guests:
        rows.append(Check("guests", "ok", f"{len(guests)} in {paths.guests_dir()}: {' '.join(guests)}"))
    else:
        rows.append(Check("guests", "missing", f"no guest images in {paths.guests_dir()}", fix, essential=True))
    examples = sorted(p.stem for p in paths.examples_dir().glob("*.toml"))
    detail = f"{paths.examples_dir()}: {' '.join(examples)} (lightvm create NAME)"
    rows.append(Check("examples", "ok" if examples else "missing", detail, None if examples else fix))
    return rows


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def check_memory() -> list[Check]:
    """KSM (merges identical pages across VMs, the operator's choice) and transparent hugepages.

    Why the detail: with ksmd running, every QEMU sheds ~2 MiB without any lightvm
    setting (QEMU's default ``mem-merge`` marks its RAM blocks mergeable, and the 2 MiB
    ACPI table ROM of a microvm is zeros but for one page), and ~4 MiB with LIGHTVM_KSM=1
    (measured: docs/memory.md); the operator weighs that against ksmd's CPU.
    """
    from lightvm.machine import KSM_ENV

    run = _read(KSM_RUN)
    whole = (
        "LIGHTVM_KSM=1 is set: whole QEMUs"
        if os.environ.get(KSM_ENV) == "1"
        else "LIGHTVM_KSM=1 would make whole QEMUs"
    )
    if run is None:
        ksm = Check("ksm", "info", "KSM not available in this kernel (CONFIG_KSM): ~2-4 MiB more per idle VM")
    elif run == "1":
        shared = _read(KSM_SHARING) or "?"
        zero = "on" if _read(KSM_ZERO_PAGES) == "1" else "off"
        detail = (
            f"running ({shared} pages shared, use_zero_pages {zero}): QEMU's mem-merge makes its ROMs "
            f"mergeable (~2 MiB per VM); {whole} mergeable (~4 MiB per VM): docs/memory.md"
        )
        ksm = Check("ksm", "ok", detail)
    else:
        detail = (
            "off: with ksmd on, each idle VM sheds ~2 MiB (QEMU's mem-merge, no setting needed), "
            "~4 MiB with LIGHTVM_KSM=1, for ksmd's CPU (docs/memory.md)"
        )
        ksm = Check("ksm", "info", detail, f"echo 1 | sudo tee {KSM_ZERO_PAGES} {KSM_RUN}")
    thp = _read(THP_ENABLED)
    mode = re.search(r"\[(\w+)\]", thp or "")
    hugepages = Check("hugepages", "info", f"transparent hugepages: {mode.group(1) if mode else 'unknown'}")
    return [ksm, hugepages]


def has_net_admin() -> bool:
    """Root, or CAP_NET_ADMIN in this process's effective set."""
    if os.geteuid() == 0:
        return True
    for line in (_read(Path("/proc/self/status")) or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def check_network() -> Check:
    """Taps and bridges (lightvm networks) need CAP_NET_ADMIN; user networking needs nothing."""
    if not TUN.exists():
        return Check("network", "missing", f"{TUN} missing: taps cannot be made", "sudo modprobe tun")
    if has_net_admin():
        who = "root" if os.geteuid() == 0 else "CAP_NET_ADMIN"
        return Check("network", "ok", f"taps and bridges ({who}); user networking")
    detail = "user networking only (--publish): taps and bridges (lightvm network) need root or CAP_NET_ADMIN"
    return Check("network", "missing", detail, "sudo lightvm network create ... (and create VMs on it as root)")


def check_baselines() -> list[Check]:
    """Which `lightvm bench` baselines can run here (each baseline's own ``available()``)."""
    from lightvm.bench import crun, forkexec, libvirtd
    from lightvm.bench.xenstore import store

    rows = []
    for name, why in (
        ("bench: crun", crun.available()),
        ("bench: libvirt", libvirtd.available()),
        ("bench: xenstore", store.available()),
        ("bench: fork/exec", forkexec.available()),
    ):
        rows.append(Check(name, "ok", "can run") if why is None else Check(name, "missing", why, fix_in(why)))
    return rows


def run_checks() -> list[Check]:
    return [
        check_accel(),
        check_qemu(),
        check_jail(),
        *check_guests(),
        *check_memory(),
        check_network(),
        *check_baselines(),
    ]


def report(checks: list[Check]) -> dict[str, Any]:
    """The JSON document of ``host check --json`` (kept stable: scripts read it)."""
    from lightvm import accel, version

    choice = accel.select("auto")  # the verdict check_accel reported (cached: no second probe)
    return {
        "version": version(),
        "paths": paths.summary(),
        "accel": {"accel": choice.accel, "reason": choice.reason},
        "can_boot": not any(c.essential and c.status == "missing" for c in checks),
        "checks": [{k: v for k, v in asdict(c).items() if k != "essential"} for c in checks],
    }


def cmd_check(args: argparse.Namespace) -> int:
    doc = report(run_checks())
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        where = doc["paths"]
        print(f"lightvm {doc['version']} ({where['layout']}: data {where['data_root']}, cache {where['cache']})")
        for c in doc["checks"]:
            print(f"{c['status']:<8} {c['name']:<17} {c['detail']}")
            if c["fix"]:
                print(f"{'':<8} {'':<17} fix: {c['fix']}")
    return 0 if doc["can_boot"] else 1
