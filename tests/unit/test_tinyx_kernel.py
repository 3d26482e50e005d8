"""tinyx/kernel/build.py without building a kernel: the fragment, the cache key, the check."""

from __future__ import annotations

import pytest

from tinyx.kernel.build import DEFAULT_FRAGMENT, BuildError, cache_key, check_config, parse_fragment


def test_the_platform_fragment_parses_and_asks_for_pvh_without_modules() -> None:
    opts = parse_fragment(DEFAULT_FRAGMENT.read_text())
    assert opts["CONFIG_PVH"] == "y"
    assert opts["CONFIG_64BIT"] == "y"
    assert opts["CONFIG_SERIAL_8250_CONSOLE"] == "y"
    assert opts["CONFIG_VIRTIO_MMIO"] == "y"
    assert opts["CONFIG_PCI"] == "y" and opts["CONFIG_ACPI"] == "y"
    assert opts["CONFIG_MODULES"] == "n"
    assert opts["CONFIG_SWAP"] == "n"


def test_parse_fragment_reads_values_and_not_set_lines() -> None:
    text = '# a comment\nCONFIG_A=y\n\nCONFIG_B="str"\nCONFIG_C=0x10\n# CONFIG_D is not set\n'
    assert parse_fragment(text) == {"CONFIG_A": "y", "CONFIG_B": '"str"', "CONFIG_C": "0x10", "CONFIG_D": "n"}


@pytest.mark.parametrize("line", ["PVH=y", "CONFIG_PVH", "CONFIG_PVH=", "CONFIG_P-VH=y"])
def test_parse_fragment_rejects_what_is_not_an_option(line: str) -> None:
    with pytest.raises(BuildError, match="line 2"):
        parse_fragment(f"CONFIG_A=y\n{line}\n")


def test_the_cache_key_changes_with_each_input() -> None:
    base = cache_key("6.1.192-3", b"CONFIG_PVH=y\n", b"script")
    assert base == cache_key("6.1.192-3", b"CONFIG_PVH=y\n", b"script")
    assert len(base) == 16
    others = {
        cache_key("6.1.193-1", b"CONFIG_PVH=y\n", b"script"),
        cache_key("6.1.192-3", b"CONFIG_PVH=y\nCONFIG_NET=y\n", b"script"),
        cache_key("6.1.192-3", b"CONFIG_PVH=y\n", b"script2"),
        # no ambiguity between where one input ends and the next begins
        cache_key("6.1.192-3C", b"ONFIG_PVH=y\n", b"script"),
    }
    assert base not in others and len(others) == 4


def test_check_config_names_what_olddefconfig_dropped() -> None:
    wanted = {"CONFIG_PVH": "y", "CONFIG_MODULES": "n", "CONFIG_PCI_MMCONFIG": "y"}
    got = {"CONFIG_PVH": "y", "CONFIG_PCI_MMCONFIG": "n"}
    assert check_config(wanted, got) == ["CONFIG_PCI_MMCONFIG: wanted y, got n"]
    assert check_config({"CONFIG_X": "y"}, {}) == ["CONFIG_X: wanted y, got n"]
