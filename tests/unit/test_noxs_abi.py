"""noxs_abi.h (C, the source of truth) against its Python mirror lightvm/noxs.py.

A C program generated from the mirror's ``_fields_`` (walked recursively, so a
new field is covered the moment it is added) prints sizeof/offsetof of every
field as JSON; every value must match ctypes. Field lists and constants are
compared in both directions, so a field or constant added on one side only
fails here.
"""

from __future__ import annotations

import ctypes
import enum
import json
import re
import subprocess
from pathlib import Path

import pytest

from lightvm import noxs

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "noxs-virtio" / "include" / "noxs_abi.h"

# ctypes mirror class -> C struct name
STRUCTS: dict[type[ctypes.Structure], str] = {
    noxs.DevEntry: "noxs_dev_entry",
    noxs.DevicePage: "noxs_device_page",
    noxs.CtrlHdr: "noxs_ctrl_hdr",
    noxs.BootRecordRaw: "noxs_boot_record",
    noxs.SysctlCtrl: "noxs_sysctl_ctrl",
    noxs.VifCtrl: "noxs_vif_ctrl",
    noxs.VbdCtrl: "noxs_vbd_ctrl",
}

# Python constant -> C macro
CONSTANTS = {
    "MAGIC": "NOXS_MAGIC",
    "ABI_VERSION": "NOXS_ABI_VERSION",
    "PAGE_SIZE": "NOXS_PAGE_SIZE",
    "MAX_DEVICES": "NOXS_MAX_DEVICES",
    "REGION_MIN": "NOXS_REGION_MIN",
    "REGION_MAX": "NOXS_REGION_MAX",
    "CTRL_GUEST_OFFSET": "NOXS_CTRL_GUEST_OFFSET",
    "NAME_LEN": "NOXS_NAME_LEN",
    "IFNAME_LEN": "NOXS_IFNAME_LEN",
    "MESSAGE_LEN": "NOXS_MESSAGE_LEN",
    "APP_LEN": "NOXS_APP_LEN",
    "FEAT_TSC_HZ": "NOXS_FEAT_TSC_HZ",
    "FEAT_NMI_DOORBELL": "NOXS_FEAT_NMI_DOORBELL",
    "FEAT_WAIT_CONFIG": "NOXS_FEAT_WAIT_CONFIG",
    "FEAT_CONSOLE_BELL": "NOXS_FEAT_CONSOLE_BELL",
    "VBD_RO": "NOXS_VBD_RO",
    "VBD_RW": "NOXS_VBD_RW",
}

# Python enum -> C macro prefix (member NAME <-> PREFIX_NAME)
ENUMS: dict[type[enum.IntEnum] | type[enum.IntFlag], str] = {
    noxs.DevType: "NOXS_DEV_",
    noxs.XenbusState: "NOXS_STATE_",
    noxs.Sysctl: "NOXS_SYSCTL_",
    noxs.BootState: "NOXS_BOOT_",
    noxs.GuestErrorCode: "NOXS_ERR_",
    noxs.TscSource: "NOXS_TSC_",
}


def _walk(cls: type[ctypes.Structure], prefix: str = "") -> list[tuple[str, int, int]]:
    """(dotted path, offset, size) of every field, recursing into nested structs."""
    out = []
    for name, ctype, *_ in cls._fields_:
        desc = getattr(cls, name)
        path = f"{prefix}{name}"
        out.append((path, desc.offset, desc.size))
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
            out += [(p, desc.offset + o, s) for p, o, s in _walk(ctype, path + ".")]
    return out


def _c_program() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        '#include "noxs_abi.h"',
        "int main(void) {",
        '  printf("{\\"structs\\": {");',
    ]
    first_struct = True
    for cls, cname in STRUCTS.items():
        sep = "" if first_struct else ","
        first_struct = False
        lines.append(f'  printf("{sep}\\"{cname}\\": {{\\"size\\": %zu, \\"fields\\": {{", sizeof(struct {cname}));')
        for i, (path, _, _) in enumerate(_walk(cls)):
            fsep = "" if i == 0 else ","
            lines.append(
                f'  printf("{fsep}\\"{path}\\": [%zu, %zu]", offsetof(struct {cname}, {path}), '
                f"sizeof(((struct {cname} *)0)->{path}));"
            )
        lines.append('  printf("}}");')
    lines.append('  printf("}, \\"constants\\": {");')
    macros = list(CONSTANTS.values()) + [
        prefix + member.name
        for cls, prefix in ENUMS.items()
        for member in cls  # type: ignore[attr-defined]
    ]
    for i, macro in enumerate(macros):
        sep = "" if i == 0 else ","
        lines.append(f'  printf("{sep}\\"{macro}\\": %llu", (unsigned long long)({macro}));')
    lines += ['  printf("}}\\n");', "  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("abi")
    src, exe = tmp / "abi.c", tmp / "abi"
    src.write_text(_c_program())
    subprocess.run(
        ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(HEADER.parent), "-o", str(exe), str(src)],
        check=True, timeout=120, capture_output=True, text=True,
    )  # fmt: skip
    result = subprocess.run([str(exe)], check=True, timeout=30, capture_output=True, text=True)
    return json.loads(result.stdout)


def _c_struct_fields(cname: str) -> list[str]:
    """Member names of a struct, parsed from the header (top level only)."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    match = re.search(r"struct\s+" + cname + r"\s*\{(.*?)\};", text, flags=re.S)
    assert match, f"struct {cname} not found in {HEADER}"
    names = []
    for decl in match.group(1).split(";"):
        decl = decl.strip()
        if decl:
            names += [re.sub(r"\[.*", "", part).strip().split()[-1] for part in decl.split(",")]
    return names


@pytest.mark.parametrize("cls", list(STRUCTS), ids=lambda c: c.__name__)
def test_struct_layout(cls: type[ctypes.Structure], c_layout: dict) -> None:
    c = c_layout["structs"][STRUCTS[cls]]
    assert ctypes.sizeof(cls) == c["size"], f"sizeof({STRUCTS[cls]})"
    for path, offset, size in _walk(cls):
        assert c["fields"][path] == [offset, size], f"{STRUCTS[cls]}.{path}: C [offset, size] vs ctypes"


@pytest.mark.parametrize("cls", list(STRUCTS), ids=lambda c: c.__name__)
def test_same_fields_both_sides(cls: type[ctypes.Structure]) -> None:
    assert [f[0] for f in cls._fields_] == _c_struct_fields(STRUCTS[cls])


def test_every_mirror_struct_is_checked() -> None:
    mirrored = {
        obj for obj in vars(noxs).values()
        if isinstance(obj, type) and issubclass(obj, ctypes.Structure) and obj.__module__ == noxs.__name__
    }  # fmt: skip
    assert mirrored == set(STRUCTS)


def test_constants(c_layout: dict) -> None:
    consts = c_layout["constants"]
    for py, macro in CONSTANTS.items():
        assert getattr(noxs, py) == consts[macro], macro
    for cls, prefix in ENUMS.items():
        for member in cls:  # type: ignore[attr-defined]
            assert int(member) == consts[prefix + member.name], prefix + member.name


def test_every_c_macro_is_mirrored() -> None:
    """A #define added to the header must appear in the mirror (or be listed as C-only)."""
    c_only = {"NOXS_ABI_H", "NOXS_PCI_VENDOR", "NOXS_PCI_DEVICE", "NOXS_PCI_BAR", "NOXS_ASSERT"}
    macros = set(re.findall(r"^#define\s+(NOXS_\w+)", HEADER.read_text(), flags=re.M))
    mirrored = set(CONSTANTS.values()) | {
        prefix + member.name
        for cls, prefix in ENUMS.items()
        for member in cls  # type: ignore[attr-defined]
    }
    assert macros - c_only - mirrored == set()
