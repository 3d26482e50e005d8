"""The execute phase of a boot: queue ``cont`` (or ring a pool shell's bell), watch the
NoXS boot record until READY.

Shared by the toolstack (every create) and the accelerator probe. The host polls the
boot state word in the shared page it already has mapped, and the QMP socket in the
same ``select`` (replies timestamp "QEMU up" and "resumed"; EOF means QEMU exited).

Boot breakdown, all in ms from the start of the create (``t0``):

* ``qemu_up``      QMP answered ``qmp_capabilities`` (QEMU initialised, main loop up)
* ``resumed``      QEMU acknowledged ``cont`` (vCPUs running)
* ``guest_entry``  first guest instruction
* ``devices_up``   the guest's devices were all up
* ``ready``        the host observed READY in the boot record

``guest_entry`` and ``devices_up`` come from the guest's TSC stamps, anchored at the
host's READY observation: ready - (tsc_ready - tsc_x) / tsc_hz. They are upper bounds
by at most one poll interval; None when the guest gave no usable stamps.

``qemu_up`` and ``resumed`` are upper bounds too: the host reads QMP replies when its
poll loop gets to them, and ``cont`` is never waited on, so a fast guest can enter
before its reply is read. The steps are causally ordered (the vCPU resumed no later
than the guest's first instruction), so each is capped by the step after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lightvm.bootsteps import BOOT_STEP_KEYS as BOOT_STEP_KEYS  # re-exported: the CLI imports them alone
from lightvm.bootsteps import BOOT_STEPS as BOOT_STEPS
from lightvm.errors import GuestError, LightVMError, QMPError
from lightvm.machine import Machine
from lightvm.noxs import BootRecord, BootState, NoxsRegion
from lightvm.util import Deadline, last_line, tail

POLL_INTERVAL = 0.0002
# A pool shell's guest woken by its bell writes READY within ~0.3-0.6 ms: polling it every
# 50 us instead of 200 us measured ~70 us less from request to reply (docs/lightvmd.md).
# A cold boot (tens of ms) keeps the coarser step: 4x the wake-ups would buy it nothing.
WOKEN_POLL_INTERVAL = 0.00005
REPLY_GRACE_S = 0.1  # after READY, for QMP replies still on their way


@dataclass
class BootTimes:
    qemu_up: float | None = None
    resumed: float | None = None
    guest_entry: float | None = None
    devices_up: float | None = None
    ready: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {k: (round(v, 3) if v is not None else None) for k, v in vars(self).items()}


def boot(
    machine: Machine,
    region: NoxsRegion,
    t0: float,
    timeout: float,
    woken_at: float | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[BootTimes, BootRecord]:
    """Resume a launched (paused) machine, or follow a guest already woken, until READY.

    ``woken_at``: no ``cont``: the guest already runs, a pool shell's guest whose bell
    was rung at this ``time.perf_counter()`` (reported as ``resumed``). The host polls
    as for any boot: busy-checking the page instead was measured 3x slower on 2 cores
    (it takes the CPU that QEMU's main loop needs to deliver the wake-up).
    ``meanwhile``: host work to do while the guest boots (called once it was started;
    what it raises propagates, the machine left as it is).

    :raise GuestError: if the guest reports ERROR or powers off, QEMU exits, or READY
        does not come within ``timeout`` seconds; the message quotes the console.
    """
    times = BootTimes()
    qmp = machine.qmp
    # A shell negotiated at prepare time has no "QEMU up" step left in this boot.
    negotiate_id = qmp.negotiate_id if qmp.negotiate_id is not None and not qmp.negotiated else -1
    cont_id = -1
    if woken_at is not None:
        times.resumed = (woken_at - t0) * 1000
    else:
        try:
            region.stamp_host_time()  # the guest's wall clock starts here, not before QEMU's start-up
            cont_id = machine.resume(wait=False)
        except QMPError:
            machine.wait(1.0)  # QEMU died before we could even queue cont
            raise _guest_failed(machine, region, "QEMU exited while starting (before the guest ran)") from None
    if meanwhile is not None:
        meanwhile()
    deadline = Deadline(timeout)
    interval = WOKEN_POLL_INTERVAL if woken_at is not None else POLL_INTERVAL
    ready_state = int(BootState.READY)
    final_states = (int(BootState.ERROR), int(BootState.HALTED))
    while True:
        state = region.boot_state()
        if state == ready_state:
            times.ready = (time.perf_counter() - t0) * 1000
            break
        if state in final_states:
            raise _guest_failed(machine, region, "stopped during boot")
        alive = qmp.pump(interval)
        if times.qemu_up is None and qmp.reply(negotiate_id) is not None:
            times.qemu_up = (time.perf_counter() - t0) * 1000
        if times.resumed is None and qmp.reply(cont_id) is not None:
            times.resumed = (time.perf_counter() - t0) * 1000
        if not alive:
            # One last look: a guest may write READY and exit within one poll.
            if region.boot_state() == ready_state:
                continue
            machine.wait(1.0)
            where = "during boot" if times.qemu_up is not None else "while starting (before the guest ran)"
            raise _guest_failed(machine, region, f"QEMU exited {where}")
        if deadline.expired():
            raise _guest_failed(machine, region, f"not READY after {timeout:.1f} s")
    record = region.boot_record()
    # The replies are certain to come (the guest ran, so QEMU handled cont), but a loaded
    # host can deschedule QEMU's main loop between starting the vCPU and writing them:
    # wait for them briefly (capped below by READY) rather than report a hole.
    grace = Deadline(REPLY_GRACE_S)
    while times.resumed is None or (negotiate_id >= 0 and times.qemu_up is None):
        alive = qmp.pump(POLL_INTERVAL)
        now = (time.perf_counter() - t0) * 1000
        if times.qemu_up is None and qmp.reply(negotiate_id) is not None:
            times.qemu_up = now
        if times.resumed is None and qmp.reply(cont_id) is not None:
            times.resumed = now
        if not alive or grace.expired():
            break
    _anchor_guest_times(times, record)
    return times, record


def _anchor_guest_times(times: BootTimes, record: BootRecord) -> None:
    assert times.ready is not None
    for attr, stamp in (("guest_entry", record.tsc_entry), ("devices_up", record.tsc_devices_up)):
        delta = record.tsc_delta_ms(stamp, record.tsc_ready)
        if delta is not None and 0 <= delta <= times.ready:
            setattr(times, attr, times.ready - delta)
    _cap_by_later_steps(times)


def _cap_by_later_steps(times: BootTimes) -> None:
    """Cap each observed step by the earliest later one (see the module docstring)."""
    later: float | None = None
    for attr in ("ready", "devices_up", "guest_entry", "resumed", "qemu_up"):
        value = getattr(times, attr)
        if value is None:
            continue
        if later is not None and value > later:
            setattr(times, attr, later)
        else:
            later = value


def _guest_failed(machine: Machine, region: NoxsRegion, what: str) -> LightVMError:
    record = region.boot_record()
    console = tail(machine.config.console_path, 1024)
    detail = record.message or last_line(console) or last_line(tail(machine.config.log_path, 600))
    code = machine.exitcode
    if record.state is BootState.ERROR:
        what = f"guest error {record.error.name}"
    elif record.state is BootState.HALTED:
        # Not the exit code alone: QEMU's own startup errors exit with 1 as well.
        what = "guest powered off during boot"
    if code is not None:
        what += f" (QEMU exit code {code})"
    err = GuestError(f"{machine.name}: {what}: {detail or 'no console output'}")
    err.console = console  # type: ignore[attr-defined]
    return err
