"""tinyx/image/kernel.py: the platform kernel is taken from the cache, waited for when
another process is building it, and built here only when nobody is (tinyx.kernel.build
takes no lock: a second build would restart the first)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from lightvm.errors import TinyxError
from tinyx.image import kernel as ik
from tinyx.image.proc import Progress
from tinyx.kernel import build as kb


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(kb, "BUILD", tmp_path)
    monkeypatch.setattr(kb, "source_version", lambda: "6.1.0-test")
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: real_sleep(min(s, 0.02)))  # the 2 s poll, shortened
    return tmp_path


def key() -> str:
    return kb.cache_key("6.1.0-test", kb.DEFAULT_FRAGMENT.read_bytes(), Path(kb.__file__).read_bytes())


def no_build(fragment: Path | None = None) -> Path:
    raise AssertionError("tinyx.kernel.build.build() must not run here")


def test_a_cached_kernel_is_used_as_it_is(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "build", no_build)
    (cache / f"kernel-{key()}").mkdir()
    (cache / f"kernel-{key()}/vmlinux").write_bytes(b"\x7fELF")
    progress = Progress(quiet=True)
    assert ik.platform_kernel(progress) == (cache / f"kernel-{key()}/vmlinux", "cached")
    assert progress.cache["kernel"] == "cached"


def test_a_build_in_progress_elsewhere_is_waited_for(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "build", no_build)
    tmp = cache / f"kernel-{key()}.tmp"
    (tmp / "obj").mkdir(parents=True)

    def finish() -> None:
        time.sleep(0.2)
        out = cache / f"kernel-{key()}"
        out.mkdir()
        (out / "vmlinux").write_bytes(b"\x7fELF")

    t = threading.Thread(target=finish)
    t.start()
    progress = Progress(quiet=True)
    try:
        assert ik.platform_kernel(progress)[1] == "waited"
    finally:
        t.join()
    assert progress.cache["kernel"] == "waited"


def test_a_stale_tmp_folder_is_not_waited_for(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = cache / "built-vmlinux"
    monkeypatch.setattr(kb, "build", lambda fragment: built if fragment == kb.DEFAULT_FRAGMENT else None)
    tmp = cache / f"kernel-{key()}.tmp"
    (tmp / "obj").mkdir(parents=True)
    old = time.time() - ik.ACTIVE_WINDOW - 60
    for p in (tmp, tmp / "obj"):
        os.utime(p, (old, old))
    assert ik.platform_kernel(Progress(quiet=True)) == (built, "built")


def test_a_build_that_stops_without_a_kernel_is_an_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "build", no_build)
    tmp = cache / f"kernel-{key()}.tmp"
    tmp.mkdir()
    threading.Timer(0.1, tmp.rmdir).start()
    with pytest.raises(TinyxError, match="stopped without a vmlinux"):
        ik.platform_kernel(Progress(quiet=True))


def test_a_kernel_build_error_becomes_a_tinyx_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fragment: Path) -> Path:
        raise kb.BuildError("make vmlinux failed")

    monkeypatch.setattr(kb, "build", fail)
    with pytest.raises(TinyxError, match="platform kernel build failed: make vmlinux failed"):
        ik.platform_kernel(Progress(quiet=True))
