"""The steps of the boot breakdown, in order: (key, label, what marks it).

The CLI prints them and the bench records them; a pool shell's boot has no ``qemu_up``
(its QEMU was up). Apart from lightvm/boot.py (which re-exports them) because ``lightvm
create`` through lightvmd prints them and must not import the boot machinery (dataclasses,
QMP, NoXS) to do so (docs/cli-startup.md).
"""

BOOT_STEPS: tuple[tuple[str, str, str], ...] = (
    ("qemu_up", "QEMU up", "QMP answered"),
    ("resumed", "vCPU resumed", "cont acknowledged"),
    ("guest_entry", "guest entry", "first guest instruction (guest TSC)"),
    ("devices_up", "devices up", "guest devices initialised (guest TSC)"),
    ("ready", "READY", "seen by the host in the NoXS boot record"),
)
BOOT_STEP_KEYS = tuple(key for key, _, _ in BOOT_STEPS)
