"""tinyx/image/elfdeps.py: the NEEDED closure of host binaries, resolved inside a root the
way a chroot would (the host's / here, a copied tree in tmp_path), symlinks recorded."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from lightvm.errors import TinyxError
from tinyx.image import elfdeps
from tinyx.image.elfdeps import Root, closure, parse_objdump, read_elf

LS = Path(shutil.which("ls") or "/bin/ls").resolve()
PYTHON = Path(os.path.realpath(sys.executable))


def names(c: elfdeps.Closure) -> set[str]:
    return {lib.name for lib in c.libraries.values()}


def ls_libraries() -> set[str]:
    """What ls needs, transitively, on this host (libselinux brings libpcre2 on Debian)."""
    return names(closure(Path("/"), [str(LS)])) - {"ld-linux-x86-64.so.2"}


def test_read_elf_sees_an_x86_64_program_and_its_loader() -> None:
    info = read_elf(LS)
    assert info is not None and info.loadable and info.machine == elfdeps.EM_X86_64
    assert info.interp == "/lib64/ld-linux-x86-64.so.2"


def test_read_elf_refuses_what_is_not_elf(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\x7fELF")
    assert read_elf(Path("/etc/passwd")) is None
    assert read_elf(tmp_path / "short") is None
    assert read_elf(tmp_path / "missing") is None


def test_parse_objdump_reads_needed_rpath_and_runpath() -> None:
    text = """
Dynamic Section:
  NEEDED               libssl.so.3
  NEEDED               libc.so.6
  RUNPATH              $ORIGIN/../lib:/opt/x/lib
  RPATH                /old
  SONAME               libfoo.so.1
"""
    dyn = parse_objdump(text)
    assert dyn.needed == ("libssl.so.3", "libc.so.6")
    assert dyn.runpath == ("$ORIGIN/../lib", "/opt/x/lib") and dyn.rpath == ("/old",)


def test_the_closure_of_ls_on_the_host_has_libc_and_the_loader_with_their_links() -> None:
    c = closure(Path("/"), [str(LS)])
    assert {"libc.so.6", "ld-linux-x86-64.so.2"} <= names(c)
    loader = next(lib for lib in c.libraries.values() if lib.name == "ld-linux-x86-64.so.2")
    assert loader.found == "/lib64/ld-linux-x86-64.so.2"
    # /lib64 is a link on a /usr-merged Debian: the closure names the canonical file and the
    # links it crossed, so an image can hold both.
    assert Path(loader.path).resolve() == Path("/lib64/ld-linux-x86-64.so.2").resolve()
    assert not Path(loader.path).is_symlink()
    for link, target in c.links.items():
        assert Path(link).is_symlink() and os.readlink(link) == target
    libc = next(lib for lib in c.libraries.values() if lib.name == "libc.so.6")
    assert str(LS) in libc.needed_by
    assert c.missing == []


def test_the_closure_of_python_is_transitive() -> None:
    c = closure(Path("/"), [str(PYTHON)])
    assert "libc.so.6" in names(c)
    # every library found is itself followed: nothing it needs is left out
    for lib in c.libraries.values():
        for needed in elfdeps.dynamic(Path(lib.path)).needed:
            assert needed in names(c), f"{lib.path} needs {needed}"


def _tree_with(root: Path, libs: set[str]) -> None:
    """A /usr-merged tree: ls, the loader through lib64 -> usr/lib64 and an absolute link,
    and the host's copies of ``libs``."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib64").mkdir(parents=True)
    for top in ("bin", "lib", "lib64"):
        (root / top).symlink_to(f"usr/{top}")
    shutil.copy2(LS, root / "usr/bin/ls")
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    host = Path("/lib/x86_64-linux-gnu")
    for name in libs | {"ld-linux-x86-64.so.2"}:
        shutil.copy2(host / name, root / "usr/lib/x86_64-linux-gnu" / name)


def test_the_closure_inside_a_copied_tree_resolves_absolute_links_inside_it(tmp_path: Path) -> None:
    needed = ls_libraries()
    _tree_with(tmp_path, needed)
    c = closure(tmp_path, ["/bin/ls"])
    assert names(c) == needed | {"ld-linux-x86-64.so.2"}
    assert set(c.libraries) == {f"/usr/lib/x86_64-linux-gnu/{n}" for n in names(c)}
    assert c.links["/lib64"] == "usr/lib64"
    assert c.links["/usr/lib64/ld-linux-x86-64.so.2"] == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert c.links["/lib"] == "usr/lib"


def test_a_missing_library_is_one_error_naming_it_and_who_needs_it(tmp_path: Path) -> None:
    needed = set(elfdeps.dynamic(LS).needed)
    _tree_with(tmp_path, {"libc.so.6"})
    missing = sorted(needed - {"libc.so.6"})
    assert missing, "ls links against more than libc on Debian (libselinux)"
    with pytest.raises(TinyxError) as err:
        closure(tmp_path, ["/usr/bin/ls"])
    msg = str(err.value)
    assert "\n" not in msg and f"{missing[0]} (needed by /usr/bin/ls)" in msg and "install the package" in msg
    relaxed = closure(tmp_path, ["/usr/bin/ls"], strict=False)
    assert f"{missing[0]} (needed by /usr/bin/ls)" in relaxed.missing
    assert "libc.so.6" in names(relaxed)


def test_a_library_of_another_machine_is_skipped_like_ld_so_does(tmp_path: Path) -> None:
    _tree_with(tmp_path, ls_libraries())
    # a look-alike libc that is not ELF in the first search directory
    (tmp_path / "usr/lib/x86_64-linux-gnu/libc.so.6").rename(tmp_path / "usr/lib/libc.so.6")
    (tmp_path / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"not a library")
    c = closure(tmp_path, ["/usr/bin/ls"])
    libc = next(lib for lib in c.libraries.values() if lib.name == "libc.so.6")
    assert libc.path == "/usr/lib/libc.so.6" and libc.found == "/lib/libc.so.6"


def test_a_non_elf_input_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\n")
    with pytest.raises(TinyxError, match="/script is not an ELF file"):
        closure(tmp_path, ["/script"])


def test_root_resolve_stays_inside_the_root_and_stops_link_loops(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/abs").symlink_to("/etc/target")
    (tmp_path / "up").symlink_to("../../../../etc")
    (tmp_path / "loop").symlink_to("loop")
    r = Root(tmp_path)
    assert r.resolve("/etc/abs") == "/etc/target"
    assert r.resolve("/up/abs") == "/etc/target"
    assert r.resolve("/etc/abs", follow_last=False) == "/etc/abs"
    assert r.links == {"/etc/abs": "/etc/target", "/up": "../../../../etc"}
    with pytest.raises(TinyxError, match="too many levels of symbolic links"):
        r.resolve("/loop/x")
