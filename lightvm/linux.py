"""What a Linux guest (a Tinyx image) needs from QEMU that a unikernel does not.

lightvm boots both kinds the same way (PVH entry, NoXS page over ivshmem, isa-debug-exit),
and a spec with an ``initrd`` is a Linux guest (lightvm/spec.py). This module imports
nothing of lightvm's, so the spec parser stays cheap to import. Five things differ, each
measured on QEMU's microvm under TCG (docs/tinyx.md, docs/tinyx-size.md):

* ``tsc_early_khz=``: without it Linux calibrates the TSC against the PIT and, under TCG,
  about one boot in five hangs for good ("Unable to calibrate against PIT"). Under TCG the
  guest TSC runs at the host's rate, which lightvm already knows (hostfacts.tsc_hz).
* ``tsc=reliable``: Linux's clocksource watchdog compares the TSC against jiffies, and
  under TCG on a loaded host the timer ticks come late, so it finds a "skew too large",
  marks the TSC unstable and runs the guest on ``refined-jiffies`` (4 ms resolution) for
  good: 4 boots in 5 here at load 5-11, none with ``tsc=reliable``. Under TCG the guest
  TSC is the host's own counter, at the rate ``tsc_early_khz=`` already asserts.
* ``rtc=on``: Linux 6.1 reads the CMOS clock at boot and waits up to a second for it when
  there is none; the unikernels take their wall clock from the NoXS page and keep
  ``rtc=off``, which starts QEMU a little sooner.
* entropy: Linux 6.1 makes the first reader of /dev/urandom (redis at start-up) wait while
  it gathers jitter entropy, ~1 s under TCG. QEMU's TCG implements RDRAND from the host's
  getrandom(), so a Linux guest's TCG CPU gets ``+rdrand`` and the kernel
  ``random.trust_cpu=on``: the generator is seeded at boot (redis: READY 2.2 s -> 1.2 s
  here, docs/tinyx.md). Under KVM the guest has the host CPU's RDRAND.
* memory: 128 MiB by default (the kernel, the unpacked initramfs and the app), and with it
  QEMU's default TCG translation cache (lightvm.machine.SMALL_GUEST_MIB).
"""

from __future__ import annotations

LINUX_MEMORY_MIB = 128
# Serial console (lightvm's console file), no boot chatter on it (each line costs under
# TCG), the CPU's RDRAND trusted to seed the random generator, and the TSC kept as the
# clocksource (see above).
LINUX_CMDLINE = "console=ttyS0 quiet random.trust_cpu=on tsc=reliable"
LINUX_TCG_CPU = "qemu64,+rdrand"


def linux_machine(microvm: str) -> str:
    """lightvm's microvm machine string (lightvm.machine.MICROVM) with the CMOS clock on."""
    return microvm.replace("rtc=off", "rtc=on")


def linux_cmdline(extra: str, tsc_hz: int) -> str:
    """The kernel command line of a Linux guest: lightvm's part, then the spec's ``extra``."""
    parts = [LINUX_CMDLINE]
    if tsc_hz > 0:
        parts.append(f"tsc_early_khz={tsc_hz // 1000}")
    if extra:
        parts.append(extra)
    return " ".join(parts)


__all__ = ["LINUX_CMDLINE", "LINUX_MEMORY_MIB", "LINUX_TCG_CPU", "linux_cmdline", "linux_machine"]
