"""Templates: a saved VM whose guest RAM is a file that new VMs map private, so starting
one copies no memory and every VM started from it shares the pages it has not written.

A template is a folder (``lightvm template create SOURCE DIR``)::

    DIR/ram        the guest's RAM, raw (``memory`` MiB, sparse where the guest never wrote), mode 0400
    DIR/state.lvm  a checkpoint file (format.py, version 2: header digest, trailer, SHA-256 or
                   HMAC) whose stream holds device state and vCPUs only, and whose header
                   carries a ``template`` object (below)

How it is built (:func:`create_template`): the source checkpoint (or a running VM, saved
``--keep-running`` into the partial folder first) is restored, paused, into a QEMU whose
RAM is ``memory-backend-file share=on`` on ``DIR/ram``: loading the stream writes the
guest's RAM into the file. Then QEMU saves again with the migration capability
``x-ignore-shared``: RAM blocks mapped shared (the RAM file and the NoXS region) are left
out, the stream is device state only (~10 KiB for a daytime guest). The NoXS region, which
the stream no longer carries, goes into the header (base64), with the digests of the RAM
file, of the QEMU binary and of the kernel and firmware. The folder is built as
``.DIR.partial-PID`` and renamed at the end; any failure removes it.

Starting a VM from it (:func:`prepare_from_template`, then ``PreparedRestore.finish``):
before anything is spawned, the header's digest is checked (format.py), then the RAM
file's size and digest, and the QEMU binary's and the image's digests against the
header: a truncated or altered file, another QEMU or another kernel are refused with one
line naming what differs. The RAM file is opened by lightvm and QEMU inherits that fd
(``mem-path=/proc/self/fd/N``, ``share=off``: MAP_PRIVATE), so QEMU maps the very inode
that was checked and needs no permission on it (it opens backends before -runas/-chroot).
The NoXS file is pre-filled with the saved region, the device stream is fed with
``x-ignore-shared`` set on the incoming side too, then restore rewrites the host's half of
the page (new name, uuid, ``host_time_ns``, generation bumped: the guest re-bases its
clock) and resumes, as every restore does.

Digests of big files (the RAM, QEMU: ~15 ms for the slim build) are remembered per
process by the file's identity (device, inode, size, mtime, ctime): a file written again
changes its ctime, which nobody can set back, so a daemon checks a template once and
then in microseconds. A one-shot command (clone, restore, a create from an image's
snapshot) reads and writes them in its state dir (:func:`remembered_digests`): a digest
from there is taken only when it is the one the template expects, any other answer is
computed again from the file, so a stale or damaged entry costs a hash, never a wrong
verdict.

Deleting a template while VMs run from it does not harm them: each QEMU holds its
mapping of the RAM file, which keeps the inode and its page-cache pages alive after the
unlink; pages a VM wrote are its own anonymous copies. lightvm never rewrites a template
in place (a new one is built beside it and renamed): truncating the RAM file of running
clones would make their unwritten pages fault (SIGBUS); ``ram`` is mode 0400 for that.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import struct
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.mobility.format import CheckpointError, Sealer, checkpoint_key, encode_header, read_layout
from lightvm.mobility.restore import PreparedRestore, RestoreResult, prepare_incoming, restore
from lightvm.mobility.save import _seal, _write_all, clean_stale_partials, save
from lightvm.mobility.stream import VerifiedFeed, stream_out, wait_incoming, wait_migration
from lightvm.toolstack import Toolstack
from lightvm.util import NotRegularFileError, open_regular, owner_gone

STATE = "state.lvm"
RAM = "ram"
TEMPLATE_VERSION = 1
CHUNK = 1 << 20


class TemplateError(CheckpointError):
    """A template cannot be built, or does not match this host (names the folder and what differs)."""


# (path, dev, ino, size, mtime_ns, ctime_ns, key digest) -> hex digest
_DIGESTS: dict[tuple[Any, ...], str] = {}  # computed by this process
_REMEMBERED: dict[tuple[Any, ...], str] = {}  # read from a state dir: trusted only when expected
DIGESTS_FILE = "digests.json"
DIGESTS_KEPT = 256  # entries a state dir keeps (the newest)


def identity_of(st: os.stat_result) -> tuple[int, ...]:
    """What tells one version of a file from another: device, inode, size, mtime, ctime
    (a write moves the ctime, which nobody can set back)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stat_identity(path: Path) -> tuple[int, ...]:
    """:func:`identity_of` the file at ``path``.

    :raise OSError: it cannot be stat'ed."""
    return identity_of(os.stat(path))


def file_digest(fd: int, path: str, key: bytes | None, expect: str | None = None) -> str:
    """The hex SHA-256 (HMAC-SHA256 with ``key``) of the open file ``fd``, remembered by the
    file's identity: a rewrite changes its ctime (module docstring). ``expect``: the
    digest the caller will compare with; a digest remembered in a state dir is used only
    when it is that one."""
    st = os.fstat(fd)
    keyid = hashlib.sha256(key).hexdigest() if key is not None else ""
    ident = (path, *identity_of(st), keyid)
    known = _DIGESTS.get(ident)
    if known is not None:
        return known
    if expect is not None and _REMEMBERED.get(ident) == expect:
        return expect
    sealer = Sealer(key)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while pos < st.st_size:
        n = os.preadv(fd, [view[: min(CHUNK, st.st_size - pos)]], pos)
        if n <= 0:
            raise TemplateError(f"{path}: the file shrank while its digest was computed")
        sealer.update(view[:n])
        pos += n
    digest = sealer.digest().hex()
    _DIGESTS[ident] = digest
    return digest


def path_digest(path: str | Path, key: bytes | None = None, expect: str | None = None) -> str:
    """:func:`file_digest` of a file by name (QEMU's binary, a kernel).

    :raise TemplateError: it cannot be read.
    """
    try:
        fd = open_regular(Path(path))
    except (OSError, NotRegularFileError) as exc:
        raise TemplateError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        return file_digest(fd, str(path), key, expect)
    finally:
        os.close(fd)


@contextlib.contextmanager
def remembered_digests(state_root: Path) -> Iterator[None]:
    """Digests a one-shot command computed, kept in ``STATE/digests.json`` for the next
    one: a create from an image's snapshot hashes its 128 MiB of RAM, its kernel, initramfs
    and QEMU (~110 ms) once per file version instead of every time. Best effort both ways:
    an unreadable or damaged file is an empty memo, a failed write is dropped (written as
    a temporary file and renamed: concurrent commands lose entries, never corrupt it)."""
    path = Path(state_root) / DIGESTS_FILE
    try:
        rows = json.loads(path.read_bytes())
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, list) and len(row) == 8 and all(isinstance(v, int | str) for v in row):
                _REMEMBERED[tuple(row[:7])] = str(row[7])
    except (OSError, ValueError):
        pass
    before = len(_DIGESTS)
    try:
        yield
    finally:
        if len(_DIGESTS) != before:
            rows = [[*k, v] for k, v in {**_REMEMBERED, **_DIGESTS}.items()][-DIGESTS_KEPT:]
            tmp = path.with_name(f".{DIGESTS_FILE}.{os.getpid()}")
            with contextlib.suppress(OSError):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as out:
                    json.dump(rows, out)
                os.rename(tmp, path)
            with contextlib.suppress(OSError):
                tmp.unlink()


def qemu_for_microvm() -> str:
    """The QEMU binary a VM started now would run (machine.py's choice), symlinks resolved."""
    from lightvm.machine import QEMU_BINARY

    found = shutil.which(QEMU_BINARY) if os.sep not in QEMU_BINARY else QEMU_BINARY
    if not found:
        raise TemplateError(f"cannot find the QEMU binary {QEMU_BINARY}")
    return str(Path(found).resolve())


def image_files(spec: dict[str, Any]) -> dict[str, str]:
    """The files of the guest's image a template depends on: kernel, firmware, initrd."""
    return {k: str(spec[k]) for k in ("kernel", "firmware", "initrd") if spec.get(k)}


@dataclass
class TemplateResult:
    path: str
    ram_bytes: int  # the RAM file's size (sparse: the blocks it uses are fewer)
    state_bytes: int  # state.lvm: header (with the NoXS region) and device state
    build_ms: float

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _partial(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial-{os.getpid()}")


def _clean_stale_dirs(directory: Path) -> None:
    """Remove the ``.NAME.partial-PID`` folders of template builds that were killed."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            name = entry.name
            if not (name.startswith(".") and ".partial-" in name and entry.is_dir(follow_symlinks=False)):
                continue
            if owner_gone(name.rsplit(".partial-", 1)[1]):
                shutil.rmtree(entry.path, ignore_errors=True)


def create_template(
    toolstack: Toolstack, source: str, dest: Path, timeout: float = 30.0, note: dict[str, Any] | None = None
) -> TemplateResult:
    """Build the template ``dest`` (a new folder) from ``source``: a checkpoint file, or the
    name of a running VM (saved ``--keep-running`` first; it keeps running). ``note``: kept
    in the header's ``template`` object as ``note`` (what made it: an image's snapshot).

    :raise TemplateError, CheckpointError: the source cannot be read, or a step failed
        (nothing is left: no partial folder, no VM).
    """
    t0 = time.perf_counter()
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise TemplateError(f"{dest} exists; remove it or pick another name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_dirs(dest.parent)
    work = _partial(dest)
    try:
        work.mkdir(mode=0o700)
    except OSError as exc:
        raise TemplateError(f"cannot create {work}: {exc.strerror or exc}") from exc
    try:
        src = Path(source)
        if not src.is_file():
            clean_stale_partials(work)
            src = work / "source.lvm"
            save(toolstack, source, src, keep_running=True, timeout=timeout)
        meta, layout = read_layout(src)
        _build(toolstack, src, meta, layout, work, timeout, note)
        (work / "source.lvm").unlink(missing_ok=True)
        os.chmod(work, 0o755)  # readable like an image; the files inside say who may write
        os.rename(work, dest)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError):
            raise TemplateError(f"cannot build template {dest}: {exc.strerror or exc}") from exc
        raise
    return TemplateResult(
        path=str(dest),
        ram_bytes=(dest / RAM).stat().st_size,
        state_bytes=(dest / STATE).stat().st_size,
        build_ms=(time.perf_counter() - t0) * 1000,
    )


def _build(
    toolstack: Toolstack,
    src: Path,
    meta: dict[str, Any],
    layout: Any,
    work: Path,
    timeout: float,
    note: dict[str, Any] | None = None,
) -> None:
    """Load ``src`` into a QEMU whose RAM is ``work/ram`` (shared), then write the device
    state with ``x-ignore-shared`` into ``work/state.lvm``."""
    if meta.get("template"):
        raise TemplateError(f"{src} is a template's device state, not a full checkpoint")
    if meta["spec"].get("disks"):
        raise TemplateError(f"{src}: a VM with disks cannot be a template (its disks are not part of it)")
    memory_mib = int(meta["spec"].get("memory", 0))
    key = checkpoint_key()
    ram_path = work / RAM
    ram_fd = os.open(ram_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(ram_fd, memory_mib << 20)
        launch = {"ram_path": Path(f"/proc/self/fd/{ram_fd}"), "ram_share": True, "ram_fd": ram_fd}
        builder = f"template-{uuidlib.uuid4().hex[:12]}"
        # The builder holds no host port: the source VM may still run with its forwards.
        quiet = dict(meta, qemu_args=without_forwards(list(meta.get("qemu_args") or [])))
        prepared = prepare_incoming(toolstack, quiet, builder, str(src), timeout, launch=launch)
        try:
            feed = VerifiedFeed.open(src, layout)
            feed.start(prepared.machine)
            wait_incoming(prepared.machine, timeout, f"template from {src}")
            feed.verify(timeout)
            noxs = bytes(prepared.region.raw())
            tmeta = dict(meta)
            tmeta["saved_at"] = time.time()
            tmeta["template"] = {
                "version": TEMPLATE_VERSION,
                "ram": RAM,
                "ram_size": memory_mib << 20,
                "ram_digest": file_digest(ram_fd, str(ram_path), key),
                "noxs": base64.b64encode(noxs).decode(),
                "qemu": {"binary": qemu_for_microvm(), "digest": path_digest(qemu_for_microvm())},
                "image": {k: {"path": p, "digest": path_digest(p)} for k, p in image_files(meta["spec"]).items()},
            }
            if note is not None:
                tmeta["template"]["note"] = note
            head = encode_header(tmeta, key)
            out = os.open(work / STATE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_all(out, head)
                stream_out(prepared.machine, out, ignore_shared=True)
                wait_migration(prepared.machine, timeout, "template device state")
                _unpin_noxs(out, len(head), int(meta["noxs_size"]))
                _seal(out, head, key)
            finally:
                os.close(out)
        finally:
            prepared.abort()
        os.fchmod(ram_fd, 0o400)
        os.chmod(work / STATE, 0o444)
    finally:
        os.close(ram_fd)


def without_forwards(args: list[str]) -> list[str]:
    """QEMU device args with the user networks' ``hostfwd=`` rules left out."""
    out = list(args)
    for i, arg in enumerate(out):
        if i and out[i - 1] == "-netdev" and arg.startswith("user,"):
            out[i] = ",".join(p for p in arg.split(",") if not p.startswith("hostfwd="))
    return out


NOXS_BLOCK = b"/noxs"  # the NoXS region's RAM block id ends so: "0000:00:01.0/noxs" (ivshmem, id=noxs)
STREAM_HEAD = 64 << 10  # the RAM section's block list is at the start of the stream


def _unpin_noxs(fd: int, offset: int, noxs_size: int) -> None:
    """Zero the guest-physical address QEMU wrote for the NoXS block in the stream's
    block list, so that the stream loads into a QEMU whose ivshmem BAR is not mapped yet.

    Why: with ``x-ignore-shared`` QEMU 7.2 writes each RAM block's guest address next to
    its length and the loading side refuses an ignored block whose address differs
    ("Mismatched GPAs for block 0000:00:01.0/noxs 3221225472!= 0", migration/ram.c). The
    NoXS region is a PCI BAR that the guest placed (0xc0000000); in a new QEMU it is
    mapped only when the PCI device's state is loaded, after the RAM section, so its
    address there is 0 at the check. The entry is ``len, id, be64 length, be64 address``;
    exactly one entry must match the NoXS block's id and length.

    :raise TemplateError: the block list is not found once (another QEMU's stream layout).
    """
    head = os.pread(fd, STREAM_HEAD, offset)
    needle = NOXS_BLOCK + struct.pack(">Q", noxs_size)
    at = head.find(needle)
    if at < 0 or head.find(needle, at + 1) >= 0 or at + len(needle) + 8 > len(head):
        raise TemplateError("cannot find the NoXS block once in QEMU's RAM block list (unknown stream layout)")
    os.pwrite(fd, bytes(8), offset + at + len(needle))


def check_template(tdir: Path, image: dict[str, str] | None = None) -> tuple[dict[str, Any], Any, int]:
    """Check a template against its header and this host before anything is spawned:
    header digest and trailer (format.py), the RAM file's size and digest, the QEMU
    binary and the image files. Returns the header, the layout of ``state.lvm`` and an
    open fd of the RAM file (the caller closes it; QEMU inherits it).

    ``image``: the image files to check against the header's digests (kind -> path)
    instead of the paths the header names: an image's snapshot travels with its folder
    (lightvm/mobility/snapshot.py), so its own files are the ones that must match.

    :raise TemplateError, CheckpointError: one line naming the file and what differs.
    """
    tdir = Path(tdir)
    if not tdir.is_dir():
        raise TemplateError(f"{tdir}: not a template folder (no such folder)")
    if not (tdir / STATE).exists():
        raise TemplateError(
            f"{tdir}: a folder, but not a template (no {STATE}); make one with `lightvm template create`"
        )
    meta, layout = read_layout(tdir / STATE)
    info = meta.get("template")
    if not isinstance(info, dict) or info.get("version") != TEMPLATE_VERSION:
        raise TemplateError(f"{tdir / STATE}: not a lightvm template (version {TEMPLATE_VERSION}) header")
    qemu = info.get("qemu") or {}
    here = qemu_for_microvm()
    if path_digest(here, expect=qemu.get("digest")) != qemu.get("digest"):
        raise TemplateError(
            f"{tdir}: the template was made with another QEMU ({qemu.get('binary')}), this host runs {here}:"
            " a template's device state loads only into the QEMU that wrote it; build it again here"
        )
    saved = info.get("image") or {}
    if image is not None and set(image) != set(saved):
        raise TemplateError(f"{tdir}: made from an image of {', '.join(sorted(saved))}, not {', '.join(sorted(image))}")
    for kind, entry in saved.items():
        where = image[kind] if image is not None else entry["path"]
        if path_digest(where, expect=entry["digest"]) != entry["digest"]:
            raise TemplateError(
                f"{tdir}: the {kind} {where} is not the one the template was made with (its digest differs);"
                " build the template again"
            )
    ram = tdir / str(info.get("ram", RAM))
    try:
        fd = open_regular(ram)
    except (OSError, NotRegularFileError) as exc:
        raise TemplateError(f"{ram}: cannot open the template's RAM: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        size = os.fstat(fd).st_size
        if size != info.get("ram_size"):
            raise TemplateError(
                f"{ram}: truncated or extended template RAM ({size} bytes, saved {info.get('ram_size')})"
            )
        if file_digest(fd, str(ram), layout.key, info.get("ram_digest")) != info.get("ram_digest"):
            raise TemplateError(f"{ram}: corrupted template RAM: its digest does not match the template's header")
    except BaseException:
        os.close(fd)
        raise
    return meta, layout, fd


def check_layout(tdir: Path) -> tuple[dict[str, Any], int]:
    """:func:`check_template` for a caller that maps no RAM itself: the header and where
    the device-state stream starts in ``state.lvm``.

    :raise TemplateError, CheckpointError: as check_template.
    """
    meta, layout, ram_fd = check_template(tdir)
    os.close(ram_fd)
    return meta, int(layout.offset)


def prepare_from_template(
    toolstack: Toolstack,
    tdir: Path,
    name: str | None = None,
    timeout: float = 10.0,
    meta: dict[str, Any] | None = None,
    image: dict[str, str] | None = None,
) -> tuple[PreparedRestore, Path, int]:
    """Check ``tdir`` (:func:`check_template`, with ``image``) and spawn its VM's QEMU on
    ``-incoming defer`` with the RAM file mapped private: a PreparedRestore whose
    ``finish(path, offset)`` (the returned path and offset) feeds the device state and
    resumes. ``meta``: the header with another identity (a clone's:
    lightvm/mobility/clone.py).

    :raise TemplateError, CheckpointError: the template is refused (nothing spawned).
    :raise LightVMError: a step failed (nothing is left).
    """
    checked, layout, ram_fd = check_template(tdir, image)
    meta = checked if meta is None else meta
    try:
        noxs = base64.b64decode(checked["template"]["noxs"])
        launch = {"ram_path": Path(f"/proc/self/fd/{ram_fd}"), "ram_share": False, "ram_fd": ram_fd}
        prepared = prepare_incoming(toolstack, meta, name, str(tdir), timeout, launch=launch, noxs_init=noxs)
    finally:
        os.close(ram_fd)  # QEMU holds its own mapping (or was not spawned)
    prepared.ignore_shared = True
    return prepared, Path(tdir) / STATE, layout.offset


def restore_template(toolstack: Toolstack, tdir: Path, name: str | None = None, timeout: float = 10.0) -> RestoreResult:
    """Start a VM from the template ``tdir`` (named as saved, or ``name``).

    :raise TemplateError, CheckpointError: the template is refused or its stream fails.
    :raise ExistsError: a VM of that name exists.
    :raise GuestError: the guest does not come back.
    """
    t0 = time.perf_counter()
    prepared, path, offset = prepare_from_template(toolstack, tdir, name, timeout)
    prepared.t0 = t0
    return prepared.finish(path, offset)


def is_template(path: str | Path) -> bool:
    """Whether ``path`` is a template folder (what ``lightvm restore`` uses to pick the path)."""
    return (Path(path) / STATE).is_file()


def restore_path(
    toolstack: Toolstack,
    path: Path,
    name: str | None = None,
    timeout: float = 10.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> RestoreResult:
    """``lightvm restore PATH``: a checkpoint file (its RAM copied into the new QEMU), or a
    template folder (its RAM mapped private: no stream worth a progress line). Here, not in
    restore.py, which the template code builds on.
    """
    if Path(path).is_dir():
        return restore_template(toolstack, Path(path), name, timeout)
    return restore(toolstack, Path(path), name=name, timeout=timeout, progress=progress)


__all__ = [
    "TemplateError",
    "TemplateResult",
    "check_layout",
    "check_template",
    "create_template",
    "file_digest",
    "is_template",
    "prepare_from_template",
    "remembered_digests",
    "restore_path",
    "restore_template",
    "stat_identity",
]
