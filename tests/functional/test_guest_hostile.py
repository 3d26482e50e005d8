"""Hostile or broken NoXS pages: the guest prints FATAL, powers off (status 3), never crashes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lightvm.noxs import BootState, PageConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from guestlib import (
    EXIT_FATAL,
    HOSTILE_PAGES,
    SHM_PREFIX,
    Guest,
    build_images,
    hostile_base_config,
)

pytestmark = pytest.mark.functional


@pytest.fixture(scope="session")
def images() -> Path:
    return build_images("noop.elf")


def _fatal_lines(g: Guest) -> list[str]:
    return [line for line in g.console_lines() if line.startswith("FATAL: ")]


@pytest.mark.parametrize("case", list(HOSTILE_PAGES))
def test_hostile_page(images: Path, case: str) -> None:
    mutate, expected = HOSTILE_PAGES[case]
    with Guest(images / "noop.elf", device_count=2) as g:
        assert g.region is not None
        g.write_config(hostile_base_config())
        mutate(g.region)
        g.launch()
        assert g.wait_exit(timeout=20) == EXIT_FATAL, g.console()
        fatal = _fatal_lines(g)
        assert len(fatal) == 1 and expected in fatal[0], g.console()
        assert "READY" not in g.console()
        # The page was never trusted, so the guest wrote nothing into it.
        assert g.boot_record().state == BootState.UNKNOWN


def test_no_noxs_device(images: Path) -> None:
    with Guest(images / "noop.elf", region=False) as g:
        g.launch()
        assert g.wait_exit(timeout=20) == EXIT_FATAL
        assert _fatal_lines(g) == ["FATAL: noxs: no NoXS device (ivshmem-plain 1af4:1110) on the PCI bus"]


def test_bar_smaller_than_a_region(images: Path) -> None:
    path = Path("/dev/shm") / f"{SHM_PREFIX}{os.getpid()}-tiny"
    path.write_bytes(b"NOXS" + bytes(4092))
    try:
        extra = [
            "-object", f"memory-backend-file,id=noxs,mem-path={path},size=4096,share=on",
            "-device", "ivshmem-plain,memdev=noxs",
        ]  # fmt: skip
        with Guest(images / "noop.elf", region=False, extra_args=extra) as g:
            g.launch()
            assert g.wait_exit(timeout=20) == EXIT_FATAL
            assert _fatal_lines(g) == ["FATAL: noxs: BAR2 is 4096 bytes (want >= 8192)"]
    finally:
        path.unlink(missing_ok=True)


def test_valid_page_after_hostile_baseline(images: Path) -> None:
    """The unmodified baseline page boots: every hostile case differs by one defect."""
    with Guest(images / "noop.elf", device_count=2) as g:
        g.write_config(hostile_base_config())
        g.launch()
        g.wait_boot_state(BootState.READY, timeout=20)


def test_region_larger_than_needed(images: Path) -> None:
    """A region bigger than its devices need (BAR 64 KiB, 1 device) is fine."""
    with Guest(images / "noop.elf", device_count=12) as g:
        g.write_config(PageConfig(name="big"))
        g.launch()
        g.wait_boot_state(BootState.READY, timeout=20)
