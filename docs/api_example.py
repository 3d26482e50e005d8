"""A tour of lightvm's Python API (docs/api.md): boot a VM, pause it, save and restore it,
list, read the events lightvmd saw (when one runs), destroy.

    python3 docs/api_example.py [STATE_DIR [ACCEL]]

STATE_DIR defaults to lightvm's (``$LIGHTVM_STATE_DIR``, ...); ACCEL to auto. Whatever
happens, the VM it made is destroyed before it exits. tests/functional/test_python_api.py
runs it with and without a lightvmd.
"""

from __future__ import annotations

import os
import sys
import tempfile

import lightvm


def main(argv: list[str]) -> int:
    state_dir = argv[1] if len(argv) > 1 else None
    accel = argv[2] if len(argv) > 2 else "auto"
    with lightvm.connect(state_dir) as lv:
        print(f"lightvm {lightvm.__version__}, {'through lightvmd' if lv.via_daemon else 'in this process'}")
        # "noop" is a packaged example; memory= overrides its config's key (docs/config.md).
        (vm,) = lv.create("noop", name="api-demo", accel=accel, memory="8M")
        name = vm["name"]
        try:
            print(f"{name}: READY in {vm['boot_ms']['ready']:.1f} ms (pid {vm['pid']}, {vm['accel']})")
            info = lv.info(name)
            print(f"{name}: {info['status']}, {info['spec']['memory']} MiB")
            print(f"{name}: paused in {lv.pause(name):.2f} ms, resumed in {lv.unpause(name):.2f} ms")
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = os.path.join(tmp, f"{name}.lvm")
                saved = lv.save(name, checkpoint)  # the VM is destroyed after the save
                print(f"{name}: saved {saved['bytes']} bytes in {saved['save_ms']:.1f} ms")
                restored = lv.restore(checkpoint)
                print(f"{name}: restored in {restored['restore_ms']:.1f} ms, pid {restored['pid']}")
            print("VMs: " + ", ".join(f"{v['name']} {v['status']}" for v in lv.list()))
            if lv.via_daemon:
                kinds = [e["event"] for e in lv.events(vm=name)]
                print(f"{name}: events {' '.join(kinds)}")
        finally:  # on every path: the VM may be gone already (a failed restore after the save)
            if any(v["name"] == name for v in lv.list()):
                lv.destroy(name)
        print(f"{name}: destroyed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
