"""``lightvm clone``: N running copies of a VM, a checkpoint or a template, each with an
identity of its own.

A clone is a VM started from a template (lightvm/mobility/template.py): its RAM maps the
template's RAM file private, so N clones share every page none of them wrote. A running
VM or a checkpoint is first made into a template in ``STATE/templates/.clone-ID.partial-PID``
(the VM keeps running), which is deleted once the clones run: what keeps their pages
alive is their own mappings (template.py's docstring), and the deletion on every clone
command is the standing proof of it.

Identity, per clone, before its guest runs: a name from PATTERN (``{name}`` the source's
name, ``{i}`` the clone's index; default ``{name}-{i}``), a new uuid, a new MAC
(:func:`clone_mac`, on QEMU's command line and in the NoXS page), and with ``publish``
its own host port (``ADDR:PORT:GUESTPORT`` gives clone *i* ``PORT+i``); the source's own
host forwards are dropped (they are the source's addresses). Restore then writes the
page (name, uuid, vif config, ``host_time_ns``) and bumps its generation: the guest
re-bases its wall clock on it (the NMI doorbell wakes it at once) and acknowledges it.

Only VMs on user networking (or none) are cloned: on a tap network a clone needs its own
IP, which the guest configured at boot from its page and does not re-read (refused with
a clear error). A unikernel's virtio-net keeps the template's MAC in its device state
(a Tinyx guest takes the clone's from its rewritten page: tinyx/init); on user networking
every VM has a network of its own, so nobody sees two.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import os
import re
import secrets
import shutil
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError, SpecError
from lightvm.mobility.restore import PreparedRestore, RestoreResult
from lightvm.mobility.template import TemplateError, check_layout, create_template, is_template
from lightvm.toolstack import Toolstack

TEMPLATES_DIR = "templates"
Prepare = Callable[[Path, str, dict[str, Any]], PreparedRestore]
Layout = Callable[[Path], tuple[dict[str, Any], int]]  # a template -> its header, its stream's offset
PREPARE_JOBS = 4  # clones in flight at once (a cold one starts a QEMU: ~20 ms of CPU; 2 cores here)
CLONE_MAX = 4096


@dataclass
class CloneResult:
    source: str
    clones: list[dict[str, Any]]  # each: name, id, pid, mac, publish
    template_ms: float  # making the template (0 when SOURCE is one)
    clone_ms: float  # template checked -> every clone running
    total_ms: float

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def clone_mac(base: int, index: int, vif: int) -> str:
    """The MAC of vif ``vif`` (< 8) of clone ``index``: locally administered unicast
    52:54:01:xx:xx:xx, ``base`` (24 random bits per clone command) + index * 8 + vif, so
    the clones of one command never share one (hashing each name would, by the birthday
    bound: 4,096 names in 24 bits collide 4 times in 10)."""
    low = (base + index * 8 + vif) & 0xFFFFFF
    return "52:54:01:" + ":".join(f"{(low >> s) & 0xFF:02x}" for s in (16, 8, 0))


_PUBLISH = re.compile(r"^(?:(?P<addr>[0-9.]+):)?(?P<port>\d{1,5}):(?P<guest>\d{1,5})(?:/(?P<proto>tcp|udp))?$")


def parse_publish(text: str, count: int) -> tuple[str, str, int, int]:
    """``[ADDR:]PORT:GUESTPORT[/udp]`` -> (proto, addr, first port, guest port).

    :raise SpecError: malformed, or ``PORT + count - 1`` beyond 65535.
    """
    match = _PUBLISH.match(text)
    if not match:
        raise SpecError(f"--publish {text!r}: give [ADDR:]PORT:GUESTPORT[/udp] (clone i gets PORT+i)")
    port, guest = int(match["port"]), int(match["guest"])
    if not port > 0 or port + count - 1 > 65535 or not 0 < guest <= 65535:
        raise SpecError(f"--publish {text!r}: ports {port}..{port + count - 1} are not all valid ports")
    return match["proto"] or "tcp", match["addr"] or "127.0.0.1", port, guest


def clone_meta(
    meta: dict[str, Any], name: str, index: int, publish: tuple[str, str, int, int] | None, base: int = 0
) -> dict[str, Any]:
    """The template header ``meta`` with the identity of clone ``index`` named ``name``:
    new MACs, the source's forwards replaced by ``publish`` (port + index) on vif 0. The
    header keeps the source's name: restore gives a VM named otherwise a new uuid."""
    out = copy.deepcopy(meta)
    macs: dict[str, str] = {}
    for i, vif in enumerate(out["vifs"]):
        mac = clone_mac(base, index, i)
        if vif.get("mac"):
            macs[str(vif["mac"]).lower()] = mac
        vif["mac"] = mac
        if i < len(out["page"].get("vifs", [])):
            out["page"]["vifs"][i]["mac"] = mac
        vif["publish"] = []
    args = list(out.get("qemu_args") or [])
    first_netdev = True
    for j, arg in enumerate(args):
        prev = args[j - 1] if j else ""
        if prev == "-netdev" and arg.startswith("user,"):
            parts = [p for p in arg.split(",") if not p.startswith("hostfwd=")]
            if publish is not None and first_netdev:
                proto, addr, port, guest = publish
                parts.append(f"hostfwd={proto}:{addr}:{port + index}-:{guest}")
            first_netdev = False
            args[j] = ",".join(parts)
        elif prev == "-device" and arg.startswith("virtio-net"):
            parts = arg.split(",")
            for k, part in enumerate(parts):
                if part.startswith("mac="):
                    parts[k] = "mac=" + macs.get(part[4:].lower(), part[4:])
            args[j] = ",".join(parts)
    out["qemu_args"] = args
    return out


def clone_names(pattern: str, source: str, count: int) -> list[str]:
    """The clones' names: ``pattern`` with ``{name}`` and ``{i}``.

    :raise SpecError: the pattern has no ``{i}`` for more than one clone, or another field.
    """
    if count > 1 and "{i}" not in pattern:
        raise SpecError(f"--name {pattern!r}: give a pattern with {{i}} (the clone's index) for -n {count}")
    try:
        names = [pattern.format(name=source, i=i) for i in range(count)]
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(f"--name {pattern!r}: only {{name}} and {{i}} can be used ({exc})") from exc
    return names


def clone(
    toolstack: Toolstack,
    source: str,
    count: int = 1,
    pattern: str = "{name}-{i}",
    publish: str | None = None,
    timeout: float = 10.0,
    jobs: int = PREPARE_JOBS,
    prepare: Prepare | None = None,
    layout: Layout | None = None,
) -> CloneResult:
    """Start ``count`` clones of ``source`` (a running VM's name, a checkpoint file or a
    template folder), all or none: a failure destroys the clones already made.

    :raise SpecError: bad count, pattern or publish; a source on a tap network.
    :raise TemplateError, CheckpointError: the source cannot be made or used as a template.
    :raise ExistsError: a clone's name is taken.

    ``prepare(tdir, name, meta)`` makes one clone's PreparedRestore (default: a QEMU
    spawned now, :func:`~lightvm.mobility.template.prepare_from_template`; lightvmd takes
    a prepared shell of the template, lightvm/daemon/templates.py). ``layout(tdir)`` checks
    a template folder given as ``source`` (default :func:`~lightvm.mobility.template.check_layout`: the whole check;
    lightvmd passes the check it keeps per template); a template made here from a VM or a
    checkpoint is always checked in full.
    """
    t0 = time.perf_counter()
    if not 1 <= count <= CLONE_MAX:
        raise SpecError(f"-n {count}: clone 1 .. {CLONE_MAX} copies at a time")
    forward = parse_publish(publish, count) if publish else None
    base = secrets.randbits(24)
    temp: Path | None = None
    tdir = Path(source)
    try:
        if not is_template(tdir):
            root = toolstack.state.root / TEMPLATES_DIR
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Named like a partial build: if this process is killed, the next template build
            # or clone in this folder removes it (template.py _clean_stale_dirs).
            temp = root / f".clone-{uuidlib.uuid4().hex[:12]}.partial-{os.getpid()}"
            create_template(toolstack, source, temp)
            tdir = temp
        t_template = time.perf_counter()
        meta, offset = (layout if layout is not None and temp is None else check_layout)(tdir)
        if any(v.get("mode") != "user" for v in meta["vifs"]):
            raise SpecError(
                f"{source}: only VMs on user networking can be cloned (a clone on a tap network needs its own IP,"
                " which the guest does not re-read after a restore)"
            )
        names = clone_names(pattern, str(meta["name"]), count)
        if prepare is None:
            from lightvm.mobility.template import prepare_from_template

            def prepare(tdir: Path, name: str, meta: dict[str, Any]) -> PreparedRestore:
                return prepare_from_template(toolstack, tdir, name, timeout, meta=meta)[0]

        metas = [clone_meta(meta, name, i, forward, base) for i, name in enumerate(names)]
        made = start_all(toolstack, tdir, list(zip(names, metas, strict=True)), offset, jobs, prepare)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)  # the clones' mappings keep its pages
    t_end = time.perf_counter()
    clones = [
        {
            "name": r.name,
            "id": r.id,
            "pid": r.pid,
            "mac": clone_mac(base, i, 0) if meta["vifs"] else None,
            "publish": f"{forward[1]}:{forward[2] + i}" if forward else None,
        }
        for i, r in enumerate(made)
    ]
    return CloneResult(
        source=source,
        clones=clones,
        template_ms=(t_template - t0) * 1000 if temp is not None else 0.0,
        clone_ms=(t_end - t_template) * 1000,
        total_ms=(t_end - t0) * 1000,
    )


def start_all(
    toolstack: Toolstack,
    tdir: Path,
    vms: list[tuple[str, dict[str, Any]]],
    offset: int,
    jobs: int,
    prepare_one: Prepare,
) -> list[RestoreResult]:
    """Start a VM from the template ``tdir`` per (name, header) of ``vms`` (the header
    with the VM's identity: :func:`clone_meta`), ``jobs`` at a time, each from prepare to running (its
    steps wait on its QEMU and guest most of the time: several in flight overlap those
    waits); on any failure start no more and destroy every one (prepared or running)."""
    from lightvm.mobility.template import STATE

    names = [name for name, _ in vms]
    metas = [meta for _, meta in vms]
    prepared: list[PreparedRestore | None] = [None] * len(names)
    done: list[RestoreResult | None] = [None] * len(names)
    failed = threading.Event()

    def start(i: int) -> None:
        if failed.is_set():
            return
        try:
            one = prepared[i] = prepare_one(tdir, names[i], metas[i])
            done[i] = one.finish(tdir / STATE, offset)
        except BaseException:
            failed.set()
            raise

    error: BaseException | None = None
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="clone") as pool:
            for future in [pool.submit(start, i) for i in range(len(names))]:
                try:
                    future.result()
                except BaseException as exc:  # keep the first; the others are cleaned below
                    error = error or exc
        if error is not None:
            raise error
    except BaseException:
        failed.set()
        for p in prepared:
            if p is not None:
                p.abort()  # a no-op for a finished one
        for r in done:
            if r is not None:
                with contextlib.suppress(LightVMError):
                    toolstack.destroy(r.name)
        raise
    return [r for r in done if r is not None]


__all__ = [
    "CloneResult",
    "TemplateError",
    "clone",
    "clone_mac",
    "clone_meta",
    "clone_names",
    "parse_publish",
    "start_all",
]
