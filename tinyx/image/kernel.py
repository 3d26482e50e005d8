"""The kernel for the image: tinyx.kernel.build's cached vmlinux.

The fragment is the app's own, tinyx/kconfig/APP.config (what the kernel trimming loop,
tinyx/kernel/loop.py, kept for APP), when there is one; else the platform fragment,
tinyx/kconfig/qemu-microvm.config. The fragment's bytes are in the cache key, so an
app's kernel and the platform kernel are separate cache entries.

tinyx.kernel.build takes no lock: called while another process builds the same
kernel, it would remove that build's ``kernel-<key>.tmp`` and start over (6 minutes
lost for both). So this looks at the cache first: a finished build is used at once; a
``.tmp`` folder written to in the last minutes is taken for a build in progress and
waited for; only otherwise is the build started here.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from lightvm.errors import TinyxError
from tinyx.image.proc import Progress

ACTIVE_WINDOW = 300.0  # a .tmp touched this recently is a build in progress
WAIT_LIMIT = 3600.0


def _newest_mtime(top: Path) -> float:
    """The newest mtime of ``top`` and the folders two levels below it (cheap: no full walk)."""
    newest = 0.0
    for dirpath, dirnames, _ in os.walk(top):
        with contextlib.suppress(OSError):
            newest = max(newest, os.stat(dirpath).st_mtime)
        if len(Path(dirpath).relative_to(top).parts) >= 2:
            dirnames[:] = []
    return newest


def kernel_fragment(app: str | None) -> Path:
    """tinyx/kconfig/APP.config when the loop left one for ``app``, else the platform fragment."""
    from tinyx.kernel import build as kb

    if app:
        own = kb.DEFAULT_FRAGMENT.parent / f"{app}.config"
        if own.is_file():
            return own
    return kb.DEFAULT_FRAGMENT


def platform_kernel(progress: Progress, app: str | None = None) -> tuple[Path, str]:
    """(vmlinux path, "cached" | "built" | "waited") of ``app``'s kernel (kernel_fragment)."""
    from tinyx.kernel import build as kb

    fragment = kernel_fragment(app)
    if fragment != kb.DEFAULT_FRAGMENT:
        progress.log(f"kernel config: {fragment.name} (the trimming loop's result for {app})")

    try:
        version = kb.source_version()
    except kb.BuildError as e:
        raise TinyxError(str(e)) from e
    key = kb.cache_key(version, fragment.read_bytes(), Path(kb.__file__).read_bytes())
    vmlinux = kb.BUILD / f"kernel-{key}" / "vmlinux"
    tmp = kb.BUILD / f"kernel-{key}.tmp"
    if vmlinux.is_file():
        progress.hit("kernel", "cached", f"kernel-{key}")
        return vmlinux, "cached"
    if tmp.is_dir() and time.time() - _newest_mtime(tmp) < ACTIVE_WINDOW:
        progress.hit("kernel", "waiting", f"another process is building kernel-{key}; waiting for it")
        deadline = time.monotonic() + WAIT_LIMIT
        last = time.monotonic()
        while not vmlinux.is_file():
            if not tmp.is_dir() and not vmlinux.is_file():
                raise TinyxError(
                    f"the other build of kernel-{key} stopped without a vmlinux; "
                    "run python -m tinyx.kernel.build to see why"
                )
            if time.monotonic() > deadline:
                raise TinyxError(f"kernel-{key} has been building for over {WAIT_LIMIT:.0f}s; check that build")
            if time.monotonic() - last > 30:
                last = time.monotonic()
                progress.log("  still waiting for the kernel build")
            time.sleep(2)
        progress.cache["kernel"] = "waited"
        return vmlinux, "waited"
    progress.hit("kernel", "building", "tinyx.kernel.build: about 6 minutes on 2 cores")
    try:
        return kb.build(fragment), "built"
    except kb.BuildError as e:
        raise TinyxError(f"the platform kernel build failed: {e}") from e
