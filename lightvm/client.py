"""The Python API: ``lightvm.connect()`` -> a :class:`Connection` to one state dir that
creates, lists, pauses, saves, restores, migrates and destroys VMs, with or without lightvmd.

Why a facade: a program driving VMs had to pick between the Toolstack (one-shot, in this
process) and lightvmd's JSON protocol (prepared shells, kept SSH sessions, events), each
with its own calls and result types. A Connection makes the choice the CLI makes (through
lightvmd when one answers on the state dir's socket, else in this process; ``daemon=`` to
insist either way) and returns the same plain data either way: the dicts ``lightvm ...
--json`` prints. Errors are lightvm's (:class:`lightvm.errors.LightVMError` and its
subclasses, re-raised as the same class when lightvmd raised them). docs/api.md.

Imported by ``lightvm.connect`` on first use only: ``import lightvm`` stays cheap.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lightvm.daemon import proto
from lightvm.errors import LightVMError, StateError

Progress = Callable[[dict[str, Any]], None]

CALL_SLACK = 30.0  # seconds a daemon call may take beyond the operation's own timeout
EVENTS_IDLE_S = 30.0  # a quiet event stream is read again; the daemon ends it with {"end": true}


def connect(state_dir: str | os.PathLike[str] | None = None, daemon: bool | None = None) -> Connection:
    """A :class:`Connection` to ``state_dir`` (default: ``$LIGHTVM_STATE_DIR``, /run/lightvm
    as root, else ``$XDG_RUNTIME_DIR/lightvm``, as the CLI's).

    ``daemon``: None (default) goes through lightvmd when one answers on the state dir,
    else works in this process (``LIGHTVM_NO_DAEMON=1`` forces that, as for the CLI); True
    requires lightvmd; False never uses it.

    :raise DaemonUnavailable: ``daemon=True`` and no lightvmd answers.
    """
    from lightvm.state import default_state_dir

    root = Path(state_dir) if state_dir is not None else default_state_dir()
    use = daemon
    if use is None:
        use = not os.environ.get("LIGHTVM_NO_DAEMON") and os.path.exists(proto.socket_file(root))
    if use:
        try:
            with proto.Client.connect(root, timeout=2.0) as client:
                client.call("ping", timeout=10.0)
        except proto.DaemonUnavailable:
            if daemon:
                raise
            use = False  # a dead daemon's socket file
    return Connection(root, bool(use))


class Connection:
    """VM operations on one state dir, through lightvmd (``via_daemon``) or in this process.

    Results are JSON-shaped dicts, the same whichever does the work (lightvmd adds a
    ``path``: pool or cold). Usable as a context manager; it holds nothing open between
    calls (each daemon call is one short connection), so :meth:`close` is a formality.
    """

    def __init__(self, state_dir: Path, via_daemon: bool) -> None:
        self.state_dir = state_dir
        self.via_daemon = via_daemon

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (kept for the context manager and for symmetry)."""

    def __repr__(self) -> str:
        return f"<lightvm.Connection {self.state_dir} via {'lightvmd' if self.via_daemon else 'this process'}>"

    # ------------------------------------------------------------------ plumbing

    def _toolstack(self, timeout: float = 10.0) -> Any:
        from lightvm.toolstack import Toolstack

        return Toolstack(self.state_dir, boot_timeout=timeout)

    def _call(self, op: str, args: dict[str, Any] | None = None, timeout: float = CALL_SLACK) -> Any:
        with proto.Client.connect(self.state_dir, timeout=2.0) as client:
            return client.call(op, args, timeout=timeout)

    def _streamed(self, op: str, args: dict[str, Any], timeout: float, progress: Progress) -> dict[str, Any]:
        with proto.Client.connect(self.state_dir, timeout=2.0) as client:
            result: dict[str, Any] = client.call_with_progress(op, args, timeout, progress)
            return result

    # ------------------------------------------------------------------ VMs

    def create(
        self,
        config: str | os.PathLike[str],
        name: str | None = None,
        *,
        count: int = 1,
        accel: str = "auto",
        timeout: float = 10.0,
        publish: list[str] | tuple[str, ...] = (),
        **overrides: Any,
    ) -> list[dict[str, Any]]:
        """Create ``count`` VMs from ``config`` (a file, or an example's name: "noop",
        "daytime") and wait until each is READY; one result per VM (``name``, ``pid``,
        ``boot_ms``, ...). ``overrides`` replace the config's keys as ``create cfg
        KEY=VALUE`` does (``memory="64M"``, ``vcpus=2``, ``cmdline="..."``; docs/config.md).
        All or nothing: if one fails, none is left.

        :raise SpecError: a bad config or override (nothing created).
        :raise ExistsError: a name is taken.
        """
        from lightvm.paths import resolve_config
        from lightvm.spec import check_overrides

        path = resolve_config(config).resolve()
        checked = check_overrides(
            {k: os.path.abspath(v) if k in ("kernel", "initrd", "firmware") else v for k, v in overrides.items()}
        )
        if self.via_daemon:
            request: dict[str, Any] = {
                "config": str(path),
                "name": name,
                "count": count,
                "accel": accel,
                "timeout": timeout,
                "publish": list(publish),
            }
            if checked:
                request["overrides"] = checked
            results: list[dict[str, Any]] = self._call("create", request, timeout * max(1, count) + CALL_SLACK)
            return results
        from lightvm.spec import load_spec

        spec = load_spec(path, overrides=checked)
        if publish:
            spec = spec.with_publish(list(publish), count)
        made = self._toolstack(timeout).create(spec, name=name, count=count, accel=accel)
        return [r.as_dict() for r in made]

    def list(self) -> list[dict[str, Any]]:
        """Every VM of the state dir: ``name``, ``status`` (creating, running, paused,
        halted, crashed, incomplete), ``pid``, ``memory_mib``, ... (``lightvm list --json``)."""
        if self.via_daemon:
            infos: list[dict[str, Any]] = self._call("list")
            return infos
        return [i.as_dict() for i in self._toolstack().list()]

    def info(self, name: str) -> dict[str, Any]:
        """Everything known about VM ``name`` (``lightvm info --json``).

        :raise NotFoundError: no such VM.
        """
        if self.via_daemon:
            info: dict[str, Any] = self._call("info", {"name": name})
            return info
        result: dict[str, Any] = self._toolstack().info(name)
        return result

    def destroy(self, *names: str) -> builtins.list[str]:
        """Stop each VM at once and remove every trace of it; the names destroyed.

        :raise NotFoundError: no such VM (the ones before it are destroyed).
        """
        if self.via_daemon:
            done: builtins.list[str] = self._call("destroy", {"names": [*names]}, timeout=600.0)["destroyed"]
            return done
        ts = self._toolstack()
        for n in names:
            ts.destroy(n)
        return [*names]

    def destroy_all(self) -> builtins.list[str]:
        """Destroy every VM of the state dir; their names."""
        if self.via_daemon:
            done: builtins.list[str] = self._call("destroy", {"all": True}, timeout=600.0)["destroyed"]
            return done
        names: builtins.list[str] = self._toolstack().destroy_all()
        return names

    def shutdown(self, name: str, keep: bool = False, timeout: float = 5.0) -> float:
        """Clean guest poweroff, then destroy (``keep``: leave it listed as halted); ms taken."""
        if self.via_daemon:
            args = {"name": name, "keep": keep, "timeout": timeout}
            return float(self._call("shutdown", args, timeout + CALL_SLACK)["ms"])
        return float(self._toolstack().shutdown(name, keep=keep, timeout=timeout))

    def pause(self, name: str) -> float:
        """Stop the VM's vCPUs; ms taken."""
        if self.via_daemon:
            return float(self._call("pause", {"name": name})["ms"])
        return float(self._toolstack().pause(name))

    def unpause(self, name: str) -> float:
        """Resume a paused VM's vCPUs (its wall clock re-based); ms taken."""
        if self.via_daemon:
            return float(self._call("unpause", {"name": name})["ms"])
        return float(self._toolstack().unpause(name))

    def console(self, name: str) -> str:
        """What the guest has written on its serial console so far."""
        path: Path = self._toolstack().console_path(name)
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ mobility

    def save(
        self,
        name: str,
        file: str | os.PathLike[str],
        keep_running: bool = False,
        timeout: float = 30.0,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Save VM ``name`` to ``file`` (new), then destroy it unless ``keep_running``.
        Done in this process even when lightvmd runs (it has no save operation).
        ``progress`` gets ``{"status", "transferred", "remaining", "total", "mbps"}``
        every 0.25 s and at the end.

        :raise CheckpointError: the file cannot be written; no file is left, the VM runs on.
        """
        from lightvm.daemon.events import notify_saved
        from lightvm.mobility.save import save

        ts = self._toolstack()
        result = save(
            ts,
            name,
            Path(file),
            keep_running=keep_running,
            timeout=timeout,
            progress=progress,
            on_saved=lambda path: notify_saved(ts.state.root, name, str(path)),
        )
        return result.as_dict()

    def restore(
        self,
        file: str | os.PathLike[str],
        name: str | None = None,
        timeout: float = 10.0,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Start a VM from a checkpoint ``file`` (named as saved, or ``name``); the guest
        continues where it was. ``progress`` as :meth:`save`'s (the file's stream fed).

        :raise CheckpointError: not a checkpoint, or corrupted (nothing is left).
        """
        if self.via_daemon:
            request = {"file": os.path.realpath(file), "name": name, "timeout": timeout}
            if progress is not None:
                return self._streamed("restore", request, timeout + CALL_SLACK, progress)
            result: dict[str, Any] = self._call("restore", request, timeout + CALL_SLACK)
            return result
        from lightvm.mobility.restore import restore

        return restore(self._toolstack(timeout), Path(file), name=name, timeout=timeout, progress=progress).as_dict()

    def migrate(
        self,
        name: str,
        target: str,
        *,
        port: int | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        identity: str | os.PathLike[str] | None = None,
        ssh_config: str | os.PathLike[str] | None = None,
        remote_command: str = "lightvm",
        remote_state_dir: str | None = None,
        direct: bool = False,
        bandwidth_mib: float | None = None,
        downtime_ms: int | None = None,
        timeout: float = 30.0,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Live-migrate VM ``name`` to ``[user@]host`` over SSH (encrypted unless
        ``direct``), as ``lightvm migrate``; ``~/.ssh/config`` (or ``ssh_config``) applies.
        On any failure the VM keeps running here.

        :raise MigrationError: naming the phase that failed.
        """
        from lightvm.mobility import DEFAULT_BANDWIDTH_MIB, DEFAULT_DOWNTIME_MS
        from lightvm.mobility.sshconfig import resolve

        where = resolve(target, port, Path(identity) if identity else None, Path(ssh_config) if ssh_config else None)
        request: dict[str, Any] = {
            "name": name,
            "target": where.target,
            "port": where.port,
            "known_hosts": os.path.realpath(known_hosts) if known_hosts else None,
            "identity": str(where.identity.resolve()) if where.identity else None,
            "remote_command": remote_command,
            "remote_state_dir": remote_state_dir,
            "tunnel": not direct,
            "bandwidth_mib": DEFAULT_BANDWIDTH_MIB if bandwidth_mib is None else bandwidth_mib,
            "downtime_ms": DEFAULT_DOWNTIME_MS if downtime_ms is None else downtime_ms,
            "timeout": timeout,
        }
        if self.via_daemon:
            if progress is not None:
                return self._streamed("migrate", request, timeout * 4 + CALL_SLACK, progress)
            result: dict[str, Any] = self._call("migrate", request, timeout * 4 + CALL_SLACK)
            return result
        from lightvm.mobility import migrate

        done = migrate.migrate(
            self._toolstack(timeout),
            name,
            request["target"],
            port=request["port"],
            known_hosts=Path(request["known_hosts"]) if request["known_hosts"] else None,
            identity=Path(request["identity"]) if request["identity"] else None,
            remote_command=remote_command,
            remote_state_dir=remote_state_dir,
            tunnel=not direct,
            bandwidth_mib=request["bandwidth_mib"],
            downtime_ms=request["downtime_ms"],
            timeout=timeout,
            progress=progress,
        )
        return done.as_dict()

    # ------------------------------------------------------------------ events

    def events(self, vm: str | None = None, since: int = 0, follow: bool = False) -> Iterator[dict[str, Any]]:
        """What lightvmd saw happen (created, ready, paused, resumed, saved, destroyed, restored,
        migrated, crashed with its exit status, ...), each ``{"seq", "time", "event", "vm",
        ...}``: the past ones after ``since``; with ``follow``, then each new one as it
        happens until lightvmd stops (close the generator to stop earlier).

        :raise StateError: no lightvmd: only a daemon outlives the commands to see events.
        """
        if not self.via_daemon:
            raise StateError(
                f"events need lightvmd on {self.state_dir} (start one: lightvm daemon start), "
                "and a Connection made while it runs"
            )
        return self._events(vm, since, follow)

    def _events(self, vm: str | None, since: int, follow: bool) -> Iterator[dict[str, Any]]:
        with proto.Client.connect(self.state_dir, timeout=2.0) as client:
            result = client.call("events", {"since": since, "vm": vm, "follow": follow}, timeout=10.0)
            yield from result["events"] if follow else result
            while follow:
                line = client.next_line(EVENTS_IDLE_S)
                if line is None:
                    continue
                event: dict[str, Any] = json.loads(line)
                if event.get("end"):
                    return
                yield event


__all__ = ["Connection", "LightVMError", "connect"]
