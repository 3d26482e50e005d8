"""Boot the Tinyx platform kernel with a busybox initramfs the way lightvm starts a VM, and
measure QEMU start -> /init running (median of N) for a few variants.

    python -m tinyx.probe_boot [--kernel VMLINUX] [--runs 5] [--mem 128] [--variants a,b]

The kernel defaults to the cached build of tinyx/kernel/build.py (built first if needed:
~6 min). The QEMU command line is lightvm.machine.build_argv's (microvm,pcie=on, memfd
RAM, the NoXS page as ivshmem-plain, isa-debug-exit, -S + QMP "cont"), plus -initrd; a
variant may add acpi=off, drop the ivshmem device or add kernel parameters. /init prints a
marker first, then the PCI devices it sees and the NoXS magic read through the mmap of
/sys/bus/pci/devices/<bdf>/resource2 (tinyx/probe/noxsmagic.c, built static with gcc).

Needs: busybox-static, gcc with a static libc, the QEMU lightvm uses. Every QEMU is killed
and reaped and every temporary file removed, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lightvm import hostfacts, paths
from lightvm.errors import QMPError
from lightvm.machine import MICROVM, MachineConfig, build_argv
from lightvm.qmp import QMPClient
from tinyx import cpio

HERE = paths.tinyx_package()
BUILD = paths.tinyx_build()
BUSYBOX = Path("/bin/busybox")
MARKER = "TINYX-INIT-RUNNING"
END = "TINYX-PROBE-END"
NOXS_MAGIC = b"NOXS"
BOOT_TIMEOUT = 10.0
KERNEL_HZ = 250  # CONFIG_HZ of tinyconfig
APPLETS = ("sh", "mount", "cat", "ls", "dmesg", "grep", "sed", "reboot", "sleep", "uname")

INIT = f"""#!/bin/sh
echo {MARKER}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for d in /sys/bus/pci/devices/*; do
  [ -e "$d/vendor" ] && echo "PCI-DEV ${{d##*/}} $(cat $d/vendor):$(cat $d/device) class=$(cat $d/class)"
done
/bin/noxsmagic
echo "UPTIME $(cat /proc/uptime)"
dmesg | grep -i -E 'tsc|lpj|calibrat|PCI: |ECAM|MMCONFIG|ivshmem|pci 0000|virtio|Freeing unused' | sed 's/^/DMESG /'
echo {END}
reboot -f
"""


@dataclass(frozen=True)
class Variant:
    name: str
    acpi: bool = True
    ivshmem: bool = True
    params: str = ""
    quiet: bool = True
    machine: str = ""  # appended to lightvm's -M microvm,... options (a later key wins)


VARIANTS = {
    v.name: v
    for v in (
        Variant("acpi-on"),  # lightvm's shape
        # With acpi=off QEMU's microvm has no PCIe host at all ("No 'PCI' bus found for
        # device 'ivshmem-plain'"): acpi=off works only without the NoXS page.
        Variant("acpi-on-no-ivshmem", ivshmem=False),
        Variant("acpi-off-no-ivshmem", acpi=False, ivshmem=False),
        Variant("acpi-on-tsc", params="tsc_early_khz={tsc_khz}"),
        Variant("acpi-on-lpj", params="lpj={lpj}"),
        Variant("acpi-on-tsc-lpj", params="tsc_early_khz={tsc_khz} lpj={lpj}"),
        Variant("acpi-on-verbose", quiet=False),
        # lightvm's microvm has rtc=off; Linux then spends ~1.4 s failing to read the CMOS clock
        Variant("acpi-on-tsc-rtc", params="tsc_early_khz={tsc_khz}", machine="rtc=on"),
    )
}


def static_busybox(cache: Path = BUILD) -> Path:
    """Debian's busybox-static binary, unpacked from its .deb into ``cache`` (once).

    Not the installed /bin/busybox: busybox and busybox-static conflict, and the host may
    well have the dynamic one; ``apt-get download`` needs no root and changes nothing.
    ``cache``: tinyx/build/, or a subfolder for a user that keeps to its own part of it."""
    if BUSYBOX.is_file() and b"/lib64/ld-linux" not in BUSYBOX.read_bytes()[:4096]:
        return BUSYBOX
    top = cache / "busybox-static"
    binary = top / "bin" / "busybox"
    if binary.is_file():
        return binary
    tmp = cache / "busybox-static.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        subprocess.run(["apt-get", "download", "busybox-static"], cwd=tmp, check=True, timeout=300, capture_output=True)
        (deb,) = tmp.glob("busybox-static_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)
        (tmp / "root").rename(top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


# How each format is made so that Linux 6.1 unpacks it (lz4: the legacy frame format, -l).
COMPRESSORS = {"none": None, "gzip": ["gzip", "-9", "-n"], "lz4": ["lz4", "-l", "-9"], "zstd": ["zstd", "-19"]}


def compress(cpio_path: Path, fmt: str) -> Path:
    """The initramfs in ``fmt`` (a key of COMPRESSORS), next to the uncompressed one."""
    argv = COMPRESSORS[fmt]
    if argv is None:
        return cpio_path
    out = cpio_path.with_name(f"{cpio_path.name}.{fmt}")
    with cpio_path.open("rb") as src, out.open("wb") as dst:
        subprocess.run([*argv, "-c"], stdin=src, stdout=dst, check=True, timeout=300)
    return out


def build_initramfs(work: Path) -> Path:
    """busybox + noxsmagic + /init -> work/initramfs.cpio (uncompressed newc)."""
    busybox = static_busybox()
    helper = work / "noxsmagic"
    subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(helper), str(HERE / "probe" / "noxsmagic.c")], check=True, timeout=120
    )
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp")]
    entries.append(cpio.chardev("dev/console", 5, 1))
    entries.append(cpio.regular("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [cpio.symlink(f"bin/{a}", "busybox") for a in APPLETS]
    entries.append(cpio.regular("bin/noxsmagic", helper.read_bytes(), 0o755))
    entries.append(cpio.regular("init", INIT.encode(), 0o755))
    out = work / "initramfs.cpio"
    with out.open("wb") as f:
        cpio.write(entries, f)
    return out


def boot_once(
    kernel: Path, initrd: Path, variant: Variant, subst: dict[str, str], mem: int, work: Path, n: int
) -> tuple[float | None, str]:
    """One boot: seconds from spawning QEMU to the marker on the console, and the console text."""
    console = work / f"console-{n}.txt"
    qmp_path = work / f"qmp-{n}.sock"
    noxs = Path(f"/dev/shm/tinyx-probe-{os.getpid()}-{n}")
    noxs.write_bytes(NOXS_MAGIC + b"\0" * (4096 - len(NOXS_MAGIC)))
    params = variant.params.format(**subst)
    cmdline = " ".join(p for p in ("console=ttyS0", "quiet" if variant.quiet else "", "panic=-1", params) if p)
    config = MachineConfig(
        name=f"tinyx-probe-{n}",
        kernel=kernel,
        memory_mib=mem,
        vcpus=1,
        cmdline=cmdline,
        accel="tcg",
        noxs_path=noxs,
        noxs_size=4096,
        console_path=console,
        qmp_path=qmp_path,
        log_path=work / "log",
        machine=MICROVM + ("" if variant.acpi else ",acpi=off") + (f",{variant.machine}" if variant.machine else ""),
        extra_args=("-initrd", str(initrd)),
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(qmp_path))
    listener.listen(1)
    argv = build_argv(config, listener.fileno())
    if not variant.ivshmem:
        i = argv.index("ivshmem-plain,memdev=noxs,master=on")
        j = next(k for k, a in enumerate(argv) if a.startswith("memory-backend-file,id=noxs"))
        argv = [a for k, a in enumerate(argv) if k not in (i - 1, i, j - 1, j)]
    proc: subprocess.Popen[bytes] | None = None
    err_path = work / f"qemu-{n}.err"
    try:
        with err_path.open("wb") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                argv, pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        listener.close()
        with QMPClient.connect(qmp_path, timeout=10) as qmp:
            qmp.negotiate(timeout=10)
            qmp.send("cont")
            t_marker = None
            deadline = t0 + BOOT_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                text = console.read_text(errors="replace") if console.exists() else ""
                if t_marker is None and MARKER in text:
                    t_marker = time.monotonic() - t0
                if END in text:
                    break
                time.sleep(0.001 if t_marker is None else 0.02)
        text = console.read_text(errors="replace") if console.exists() else ""
        return t_marker, text
    except QMPError as e:
        return None, f"QEMU-FAILED {e}: {err_path.read_text(errors='replace').strip()}"
    finally:
        listener.close()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for p in (noxs, qmp_path, console, err_path):
            p.unlink(missing_ok=True)


def summary(text: str) -> list[str]:
    keep = ("PCI-DEV", "NOXS-PROBE", "UPTIME", "DMESG", "QEMU-FAILED", "Kernel panic", "unable to open", "Run /init")
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith(keep) or "panic" in ln.lower()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", type=Path, help="vmlinux (default: tinyx/kernel/build.py's cached build)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mem", type=int, default=128, help="guest MiB")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--compress", choices=list(COMPRESSORS), default="none", help="initramfs format")
    ap.add_argument("--show", action="store_true", help="print each variant's first console summary")
    args = ap.parse_args(argv)
    if args.kernel is None:
        from tinyx.kernel.build import build

        args.kernel = build()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}")
    work = Path(tempfile.mkdtemp(prefix="tinyx-probe-"))
    try:
        initrd = compress(build_initramfs(work), args.compress)
        # The host's TSC rate (what lightvm already hands unikernels): under TCG the guest's
        # TSC runs at the host's rate. lpj as the kernel derives it from the TSC (HZ=250).
        hz = hostfacts.tsc_hz()
        subst = {"tsc_khz": str(hz // 1000), "lpj": str(hz // KERNEL_HZ)}
        _, text = boot_once(
            args.kernel, initrd, replace(VARIANTS["acpi-on-tsc"], quiet=False), subst, args.mem, work, 0
        )
        print(
            f"kernel {args.kernel} ({args.kernel.stat().st_size / 1e6:.2f} MB), initramfs "
            f"{initrd.stat().st_size / 1e6:.2f} MB, guest {args.mem} MiB, TCG, {args.runs} runs each; "
            f"host TSC {subst}"
        )
        if args.show:
            print("\n".join("  " + s for s in summary(text)))
        n = 1
        for name in names:
            v = VARIANTS[name]
            times: list[float] = []
            first = ""
            failed = ""
            for _ in range(args.runs):
                t, text = boot_once(args.kernel, initrd, v, subst, args.mem, work, n)
                n += 1
                if t is not None:
                    times.append(t)
                    first = first or text
                else:
                    failed = failed or text
            lines = summary(first)
            pci = sorted({ln.split()[2] for ln in lines if ln.startswith("PCI-DEV")})
            noxs = next((ln for ln in lines if ln.startswith("NOXS-PROBE")), "NOXS-PROBE (no output)")
            med = f"{statistics.median(times) * 1000:7.0f} ms" if times else "   no boot"
            spread = f"[{min(times) * 1000:.0f}-{max(times) * 1000:.0f}]" if times else ""
            print(f"{name:22s} /init after {med} {spread:12s} ok {len(times)}/{args.runs}  pci {pci}  {noxs[11:]}")
            if args.show:
                print("\n".join("  " + s for s in lines))
            if failed:
                tail = [ln.strip() for ln in failed.strip().splitlines()[-6:]]
                print(f"  a failed boot's console ends: {tail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
