"""lightvm.bench.ringtrace's reading of a perf trace (the tracing itself needs root, perf and a QEMU)."""

from __future__ import annotations

from lightvm.bench.ringtrace import analyse

# Two creates as `perf script -F comm,tid,cpu,time,event,trace` prints them: the first with
# QEMU's main thread on the daemon's CPU (1), the second with it on the other one; a timer
# wake-up of a QEMU thread by QEMU itself and an interrupt before the bell are not the bell's.
TRACE = """\
          python  4000 [000] 100.000000: syscalls:sys_enter_getsid: pid: 0x00000000
 qemu-system-x86  5000 [000] 100.000010: sched:sched_waking: comm=qemu-system-x86 pid=5003 prio=120 target_cpu=000
 qemu-system-x86  5003 [000] 100.000020: lightvm_ringtrace:x86_cpu_exec_interrupt: (55d0c0ffee00)
          python  4001 [001] 100.000100: sched:sched_waking: comm=qemu-system-x86 pid=5000 prio=120 target_cpu=001
          python  4001 [001] 100.000300: sched:sched_switch: prev_comm=python prev_pid=4001 prev_state=S ==> \
next_comm=qemu-system-x86 next_pid=5000
 qemu-system-x86  5000 [001] 100.000350: lightvm_ringtrace:fd_chr_read: (55d0c0ffee10)
 qemu-system-x86  5003 [000] 100.000450: lightvm_ringtrace:x86_cpu_exec_interrupt: (55d0c0ffee00)
          python  4000 [000] 100.001000: syscalls:sys_enter_getsid: pid: 0x00000000
          python  4000 [000] 101.000000: syscalls:sys_enter_getsid: pid: 0x00000000
          python  4001 [001] 101.000100: sched:sched_waking: comm=qemu-system-x86 pid=5000 prio=120 target_cpu=000
 qemu-system-x86  5000 [000] 101.000160: lightvm_ringtrace:fd_chr_read: (55d0c0ffee10)
 qemu-system-x86  5003 [001] 101.000260: lightvm_ringtrace:x86_cpu_exec_interrupt: (55d0c0ffee00)
          python  4000 [000] 101.001000: syscalls:sys_enter_getsid: pid: 0x00000000
          python  4000 [000] 102.000000: syscalls:sys_enter_getsid: pid: 0x00000000
          python  4001 [001] 102.000100: sched:sched_waking: comm=qemu-system-x86 pid=5000 prio=120 target_cpu=000
          python  4000 [000] 102.001000: syscalls:sys_enter_getsid: pid: 0x00000000
"""


def test_each_create_between_its_markers() -> None:
    first, second = analyse(TRACE)  # the third lost its probe events: left out
    assert first == {
        "ring_to_read_us": 250.0,
        "read_to_interrupt_us": 100.0,
        "ring_to_interrupt_us": 350.0,
        "read_on_ringing_cpu": True,
    }
    assert second["ring_to_read_us"] == 60.0 and second["read_to_interrupt_us"] == 100.0
    assert second["read_on_ringing_cpu"] is False


def test_nothing_to_read() -> None:
    assert analyse("") == [] and analyse("not a perf line\n") == []
