"""lightvmd's side of templates (lightvm/mobility/template.py): ``restore`` of a template
folder and ``clone``, through prepared ``-incoming`` shells that map the template's RAM.

A template is a flavour of the incoming pool (lightvm/daemon/restore_pool.py) of its
own: its shells are spawned with the RAM file mapped private (checked when the shell is
spawned, QEMU inherits the fd), the saved NoXS region written, the ~70 KiB device state
loaded (the same for every VM of the template) and the guest resumed under a placeholder
identity, idle (restore_pool.prepare_template_shell). A restore or a clone taken from one
is: the template's check (kept per folder while its files keep their identity), the VM's
identity written into the shell's page, the NMI doorbell, the guest's acknowledgement;
the record after the reply. No QEMU start, no stream, no ``cont``, no RAM copied. A restore
teaches the pool the template (like any checkpoint kind); ``lightvm daemon start
--incoming DIR`` does it up front, and ``--incoming-size N`` keeps N shells of it (a
clone of N takes N; beyond the ready ones, clones are spawned cold, as ``lightvm clone``
does without a daemon).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lightvm.daemon import api
from lightvm.daemon.events import EventLog, Watcher
from lightvm.daemon.pending import Pending
from lightvm.daemon.restore_pool import IncomingFlavour, IncomingPool, prepare_from_shell
from lightvm.errors import SpecError

if TYPE_CHECKING:
    from lightvm.mobility.restore import PreparedRestore


class Operations(Protocol):
    """What this module uses of lightvmd's operations (lightvm/daemon/operations.py, which
    calls in here: naming the class itself would make the two import each other)."""

    incoming: IncomingPool | None
    events: EventLog
    watcher: Watcher

    def _toolstack(self, timeout: float | None = None) -> Any: ...

    pending: Pending


class TemplateShells:
    """Takes a template's shell for each VM started from it (or spawns one cold)."""

    def __init__(self, ops: Operations, tdir: Path, checked: dict[str, Any], timeout: float) -> None:
        self.ops, self.timeout = ops, timeout
        self.flavour = IncomingFlavour.of(checked, tdir)
        self.lock = threading.Lock()
        self.pool_hits = 0

    def prepare(self, tdir: Path, name: str | None, meta: dict[str, Any]) -> PreparedRestore:
        """One VM of the template, named ``name``, with the identity in ``meta``."""
        from lightvm.mobility.template import STATE, prepare_from_template, stat_identity

        incoming = self.ops.incoming
        shell = incoming.take(self.flavour) if incoming is not None else None
        ts = self.ops._toolstack(self.timeout)
        if shell is None:
            return prepare_from_template(ts, tdir, name, self.timeout, meta=meta)[0]
        assert incoming is not None
        try:
            same = shell.loaded == stat_identity(tdir / STATE)
        except OSError:
            same = False
        if not same:  # it loaded another version of the state file (replaced since): cold
            shell.discard()
            incoming.done()
            return prepare_from_template(ts, tdir, name, self.timeout, meta=meta)[0]
        with self.lock:
            self.pool_hits += 1
        prepared = prepare_from_shell(ts, shell, meta, name, str(tdir), self.timeout, provisional=True)
        prepared.commit_on_resume = True  # the folder moves to vms/NAME while the guest wakes
        return prepared

    def over(self, learn: bool = True) -> None:
        """The request is over: the pool may refill (not before: a shell spawned while
        the taken ones resume competes with them for the CPU); with ``learn``, the next
        VM of this template finds a shell."""
        if self.ops.incoming is None:
            return
        for _ in range(self.pool_hits):
            self.ops.incoming.done()
        if learn and self.flavour is not None:
            self.ops.incoming.learn(self.flavour)


CHECKED_MAX = 64
# template folder -> (identities of its files when the check passed, or None; header; offset)
_CHECKED: dict[Path, tuple[tuple[Any, ...] | None, dict[str, Any], int]] = {}
_CHECKED_LOCK = threading.Lock()  # the daemon's worker threads share it


def _identities(tdir: Path, meta: dict[str, Any]) -> tuple[Any, ...]:
    """The identity (template.stat_identity) of every file a template's check reads:
    state.lvm, the RAM file, the QEMU binary this host would run, the image files, the
    checkpoint key file.

    :raise OSError: one of them cannot be stat'ed.
    """
    from lightvm.mobility.format import KEY_ENV
    from lightvm.mobility.template import RAM, STATE, qemu_for_microvm, stat_identity

    info = meta["template"]
    files = [tdir / STATE, tdir / str(info.get("ram", RAM)), Path(qemu_for_microvm())]
    files += [Path(entry["path"]) for entry in (info.get("image") or {}).values()]
    if os.environ.get(KEY_ENV):
        files.append(Path(os.environ[KEY_ENV]))
    return tuple((str(f), *stat_identity(f)) for f in files)


def checked_layout(tdir: Path) -> tuple[dict[str, Any], int]:
    """The header of the template ``tdir`` once checked (template.py's check_template) and
    the offset of its device-state stream in ``state.lvm``, from that same check.

    A daemon checks a template once: the result is kept with the identities of every
    file the check read, taken before and after a check that passed (equal: nothing
    changed while it ran), and used while they stay the same (a rewrite moves a file's
    ctime, which nobody can set back). A hit costs a few stats (~0.05 ms) instead of the
    header digest and the opens (0.45-0.7 ms of the request -> READY, measured).

    :raise TemplateError, CheckpointError: refused (nothing is spawned).
    """
    from lightvm.mobility.template import check_layout

    with _CHECKED_LOCK:
        known = _CHECKED.get(tdir)
    before = None
    if known is not None:
        try:
            before = _identities(tdir, known[1])
        except (OSError, KeyError, TypeError):
            before = None
        if before is not None and before == known[0]:
            return known[1], known[2]
    meta, offset = check_layout(tdir)
    try:
        after = _identities(tdir, meta)
    except (OSError, KeyError, TypeError):
        after = None
    with _CHECKED_LOCK:
        if len(_CHECKED) >= CHECKED_MAX and tdir not in _CHECKED:
            _CHECKED.pop(next(iter(_CHECKED)))  # the oldest (a clone of a VM uses a new folder each time)
        _CHECKED[tdir] = (after if after is not None and after == before else None, meta, offset)
    return meta, offset


def checked_template(tdir: Path) -> dict[str, Any]:
    """The header of the template ``tdir`` once checked (:func:`checked_layout`).

    :raise TemplateError, CheckpointError: refused (nothing is spawned).
    """
    return checked_layout(tdir)[0]


def op_restore_template(ops: Operations, file: str, name: str | None, timeout: float) -> api.Deferred:
    """``restore`` of a template folder. It answers once the guest runs; the VM's record
    is written right after the reply (as a pooled create's: lightvm/daemon/execute.py),
    and operations on its name wait for that meanwhile."""
    from lightvm.mobility.template import STATE

    t0 = time.perf_counter()
    tdir = Path(file)
    checked, offset = checked_layout(tdir)
    vm_name = name or str(checked["name"])
    shells = TemplateShells(ops, tdir, checked, timeout)
    ops.pending.begin(vm_name)
    try:
        prepared = shells.prepare(tdir, name, checked)
        prepared.t0 = t0
        prepared.defer_record = True
        result = prepared.finish(tdir / STATE, offset)
    except BaseException:
        shells.over()
        ops.pending.settled(vm_name)
        raise
    out: dict[str, Any] = result.as_dict()
    out["path"] = "pool" if shells.pool_hits else "cold"
    out["daemon_ms"] = round((time.perf_counter() - t0) * 1000, 3)

    def after() -> None:  # the refill too: a QEMU spawned now would compete with the reply
        try:
            prepared.settle()
        finally:
            shells.over()
            ops.pending.settled(vm_name)
        ops.events.emit("restored", result.name, file=file, path=out["path"])
        ops.watcher.watch(result.name, result.pid)

    return api.Deferred(out, after)


def op_clone(ops: Operations, args: dict[str, Any]) -> dict[str, Any]:
    """``clone``: source* (a VM's name, or the absolute path of a checkpoint or template
    folder), count, name (pattern), publish, timeout -> CloneResult + pool_hits."""
    from lightvm.mobility.clone import clone
    from lightvm.mobility.template import is_template

    source = args.get("source")
    if not isinstance(source, str) or not source:
        raise SpecError("clone: give source (a VM's name, or an absolute path)")
    if os.sep in source and not os.path.isabs(source):
        raise SpecError(f"source {source!r}: give an absolute path (the daemon has its own working dir)")
    count = int(args.get("count") or 1)
    pattern = str(args.get("name") or "{name}-{i}")
    publish = args.get("publish")
    timeout = float(args.get("timeout") or 10.0)
    shells: list[TemplateShells] = []

    def prepare(tdir: Path, name: str, meta: dict[str, Any]) -> PreparedRestore:
        with lock:
            if not shells:
                shells.append(TemplateShells(ops, tdir, checked_template(tdir), timeout))
        return shells[0].prepare(tdir, name, meta)

    lock = threading.Lock()
    ts = ops._toolstack(timeout)
    try:
        result = clone(
            ts,
            source,
            count,
            pattern,
            publish if isinstance(publish, str) else None,
            timeout,
            prepare=prepare,
            layout=checked_layout,  # kept per template: a clone request checks it once, not twice
        )
    finally:
        if shells:  # a temporary template (from a VM) is not worth shells
            shells[0].over(learn=is_template(source))
    out: dict[str, Any] = result.as_dict()
    out["pool_hits"] = shells[0].pool_hits if shells else 0
    for c in result.clones:
        ops.watcher.watch(c["name"], c["pid"])
        ops.events.emit("cloned", c["name"], source=source)
    return out


__all__ = ["TemplateShells", "checked_layout", "checked_template", "op_clone", "op_restore_template"]
