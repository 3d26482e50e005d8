"""The operations of lightvmd's API: argument checks and the ``op_*`` handlers.

Kept apart from :mod:`lightvm.daemon.server` (lock, socket, worker threads, start-up
and shutdown): what a request does is one concern, how it reaches the daemon another.
:class:`Operations` is mixed into :class:`lightvm.daemon.server.Daemon`, whose pools,
SSH sessions and state dir the handlers use. Each handler takes the request's ``args``
and returns its result (or an :class:`lightvm.daemon.api.Deferred` /
:class:`lightvm.daemon.api.Takeover`); an error it raises becomes the structured error
of the reply (lightvm/daemon/api.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightvm.daemon import api
from lightvm.daemon.events import EventLog, Watcher, note
from lightvm.daemon.pending import Pending
from lightvm.daemon.pool import Pool
from lightvm.daemon.restore_pool import IncomingFlavour, IncomingPool
from lightvm.daemon.shells import POOL_DIR
from lightvm.daemon.ssh_sessions import Sessions
from lightvm.daemon.warmcli import WarmCLI
from lightvm.errors import LightVMError, SpecError
from lightvm.state import StateDir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lightvm.spec import VMSpec


class Operations:
    """The API's handlers; mixed into the Daemon, which provides the attributes below."""

    state: StateDir
    log: Callable[[str], None]
    started: float
    pool: Pool | None
    incoming: IncomingPool | None
    sessions: Sessions
    events: EventLog
    watcher: Watcher
    warm_cli: WarmCLI
    _tsc_hz: int
    pending: Pending  # bookkeeping after a reply (lightvm/daemon/pending.py)
    _spec_cache: dict[str, tuple[tuple[Any, ...], Any]]

    def _handlers(self) -> dict[str, api.Handler]:
        return {
            "ping": self.op_ping,
            "create": self.op_create,
            "list": self.op_list,
            "info": self.op_info,
            "destroy": self.op_destroy,
            "shutdown": self.op_shutdown,
            "pause": self.op_pause,
            "unpause": self.op_unpause,
            "pool": self.op_pool,
            "restore": self.op_restore,
            "clone": self.op_clone,
            "migrate-in": self.op_migrate_in,
            "migrate": self.op_migrate,
            "ssh": self.op_ssh,
            "events": self.op_events,
            "note": lambda args: note(self.events, self.state.vms_root, args),
        }

    def _toolstack(self, timeout: float | None = None) -> Any:
        from lightvm.toolstack import DEFAULT_BOOT_TIMEOUT, Toolstack

        return Toolstack(self.state.root, boot_timeout=timeout or DEFAULT_BOOT_TIMEOUT)

    def op_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "daemon": "lightvmd",
            "v": api.VERSION,
            "pid": os.getpid(),
            "started": self.started,
            "state_dir": str(self.state.root),
            "pool": self.pool.stats() if self.pool else None,
            "incoming": self.incoming.stats() if self.incoming else [],
            "ssh": self.sessions.stats(),
            "warm_cli": self.warm_cli.stats(),
        }

    def op_pool(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.pool.stats() if self.pool else {}

    def op_create(self, args: dict[str, Any]) -> list[dict[str, Any]] | api.Deferred:
        t0 = time.perf_counter()
        from lightvm import accel as accelmod
        from lightvm.spec import create_names

        config = _arg(args, "config", str, required=True)
        if not os.path.isabs(config):
            raise SpecError(f"config {config!r}: give an absolute path (the daemon has its own working dir)")
        name = _arg(args, "name", str)
        count = _arg(args, "count", int)
        count = 1 if count is None else count  # not `or 1`: -n 0 must be refused, not create one
        accel = _arg(args, "accel", str) or "auto"
        timeout = float(_arg(args, "timeout", (int, float)) or 10.0)
        publish = _arg(args, "publish", list) or []
        use_pool = _arg(args, "pool", bool)
        use_pool = True if use_pool is None else use_pool
        use_snapshot = _arg(args, "snapshot", bool) is not False  # create --no-snapshot: False
        if not all(isinstance(p, str) for p in publish):
            raise SpecError("'publish' must be a list of strings")
        if not 0 < timeout <= 3600:
            raise SpecError(f"timeout {timeout}: between 0 and 3600 s")
        overrides = _arg(args, "overrides", dict)
        if overrides:  # checked again here (spec.check_overrides): a client's word is not enough
            from lightvm.spec import load_spec

            spec = load_spec(config, overrides=overrides)
        else:
            spec = self._load_spec(config)
        config_spec = spec  # what the pool keeps each flavour's verdict for (Pool.take)
        if publish:
            spec = spec.with_publish(publish, count)
        names = create_names(name or spec.name, count)
        verdict = accelmod.select(accel)  # resolved once per request; its reason goes with each result
        choice = verdict.accel
        pool = self.pool if use_pool else None
        out: list[dict[str, Any]] = []
        made: list[str] = []
        finish: Callable[[], None] | None = None
        try:
            for n in names:
                shell = pool.take(spec, choice, config_spec) if pool is not None else None
                if shell is not None:
                    from lightvm.daemon.execute import execute_deferred

                    assert pool is not None
                    self.pending.begin(n)
                    try:
                        result, finish = execute_deferred(
                            shell, self.state, spec, n, self._tsc_hz, t0, timeout, pool.net_context
                        )
                    except BaseException:
                        self._end(n)
                        raise
                    if len(names) > 1:  # only a single create answers before its bookkeeping
                        self._finish(n, finish)
                        finish = None
                    path, reason = "pool", ""
                    take_ms: float | None = shell.take_ms
                else:
                    reason = _cold_reason(pool, use_pool, spec, choice)
                    entry, path, unfit = self._unpooled(spec, n, choice, timeout, use_snapshot)
                    reason = "; ".join(r for r in (reason, unfit) if r)
                    take_ms = None
                if self.pool is not None:
                    self.pool.last_path = f"{path} ({reason})" if reason else path
                made.append(n)
                if path == "pool":
                    entry = result.as_dict()
                entry["accel_reason"] = verdict.reason  # not the cold path's "requested" (it got kvm|tcg)
                entry["path"] = path
                if reason:
                    entry["path_reason"] = reason
                if take_ms is not None:  # waiting for a shell being prepared included (pool.TAKE_WAIT_S)
                    entry["pool_take_ms"] = round(take_ms, 3)
                entry["daemon_ms"] = round((time.perf_counter() - t0) * 1000, 3)  # handler start -> reply
                out.append(entry)
                t0 = time.perf_counter()
        except BaseException:
            if finish is not None:  # a single pool create that failed after READY
                self._finish(names[0], finish)
            for n in made:  # all or nothing, as in one-shot mode
                with contextlib.suppress(LightVMError):
                    self._toolstack().destroy(n)
            raise
        if finish is not None:
            deferred, name0 = finish, names[0]

            def after() -> None:  # the events too, after the reply (microseconds, but not on its path)
                self._finish(name0, deferred)
                self._created(out)

            return api.Deferred(out, after)
        self._created(out)
        return out

    def _unpooled(
        self, spec: VMSpec, name: str, accel: str, timeout: float, use_snapshot: bool
    ) -> tuple[dict[str, Any], str, str]:
        """A create no shell served: (result, path, why its snapshot was not used)."""
        if spec.snapshot is not None:  # an image's booted VM (lightvm/mobility/snapshot.py)
            from lightvm.mobility.snapshot import create_or_boot

            ts = self._toolstack(timeout)
            (entry,) = create_or_boot(ts, spec, name, 1, accel, timeout, use_snapshot=use_snapshot)
            return entry, entry["path"], entry.get("path_reason", "")
        (result,) = self._toolstack(timeout).create(spec, name=name, count=1, accel=accel)
        return result.as_dict(), "cold", ""

    def _created(self, results: list[dict[str, Any]]) -> None:
        for entry in results:
            ready = (entry.get("boot_ms") or {}).get("ready")
            self.events.emit("created", entry["name"], path=entry["path"], accel=entry["accel"])
            self.events.emit("ready", entry["name"], boot_ms=ready, app=entry.get("app", ""))
            if entry.get("pid"):
                self.watcher.watch(entry["name"], int(entry["pid"]))

    def op_events(self, args: dict[str, Any]) -> Any:
        """The events after ``since`` (seq, default 0), of ``vm`` if given; with ``follow``,
        the connection then streams each new one as a JSON line (lightvm/daemon/events.py)."""
        from lightvm.daemon.events import stream

        return stream(
            self.events, _arg(args, "since", int) or 0, _arg(args, "vm", str), bool(_arg(args, "follow", bool))
        )

    def _end(self, name: str) -> None:
        self.pending.settled(name)
        if self.pool is not None:
            self.pool.done()  # the refill may spawn again (taken in pool.take)

    def _finish(self, name: str, finish: Callable[[], None]) -> None:
        try:
            finish()
        finally:
            self._end(name)

    def _load_spec(self, config: str) -> Any:
        """``load_spec`` cached on the (config, kernel, firmware) files' identity and mtime:
        parsing TOML and checking the kernel's PVH note cost ~0.4 ms of the execute path.

        :raise SpecError: as load_spec.
        """
        from lightvm.spec import load_spec

        def sig(path: str | Path | None) -> tuple[int, int, int] | None:
            if path is None:
                return None
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)

        cached = self._spec_cache.get(config)
        if cached is not None:
            sigs, spec = cached
            if sigs == (sig(config), sig(spec.kernel), sig(spec.firmware)) and sigs[0] is not None:
                return spec
        spec = load_spec(config)
        if len(self._spec_cache) > 256:
            self._spec_cache.clear()
        self._spec_cache[config] = ((sig(config), sig(spec.kernel), sig(spec.firmware)), spec)
        return spec

    def op_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        self.pending.wait()  # a VM answered READY a moment ago lists as running, not creating
        return [i.as_dict() for i in self._toolstack().list()]

    def op_info(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _arg(args, "name", str, required=True)
        self.pending.wait([name])
        info: dict[str, Any] = self._toolstack().info(name)
        return info

    def op_destroy(self, args: dict[str, Any]) -> dict[str, Any]:
        ts = self._toolstack()
        if _arg(args, "all", bool):
            self.pending.wait()
            for vm in ts.list():
                self.watcher.expect_exit(vm.name)
            gone = ts.destroy_all()
            for n in gone:
                self.events.emit("destroyed", n)
            return {"destroyed": gone}
        names = _arg(args, "names", list, required=True)
        if not all(isinstance(n, str) for n in names):
            raise SpecError("'names' must be a list of strings")
        self.pending.wait(names)
        errors = []
        done = []
        for n in names:
            try:
                self.watcher.expect_exit(n)
                ts.destroy(n)
                done.append(n)
                self.events.emit("destroyed", n)
            except LightVMError as exc:
                errors.append(exc)
        if errors:
            if len(errors) == 1 and not done:
                raise errors[0]
            raise LightVMError("; ".join(str(e) for e in errors))
        return {"destroyed": done}

    def op_shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _arg(args, "name", str, required=True)
        self.pending.wait([name])
        self.watcher.expect_exit(name)
        ms = self._toolstack().shutdown(
            name,
            keep=bool(_arg(args, "keep", bool)),
            timeout=float(_arg(args, "timeout", (int, float)) or 5.0),
        )
        self.events.emit("shutdown", name, ms=ms)
        return {"ms": ms}

    def op_pause(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _arg(args, "name", str, required=True)
        self.pending.wait([name])
        ms = self._toolstack().pause(name)
        self.events.emit("paused", name)
        return {"ms": ms}

    def op_unpause(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _arg(args, "name", str, required=True)
        self.pending.wait([name])
        ms = self._toolstack().unpause(name)
        self.events.emit("resumed", name)
        return {"ms": ms}

    # ------------------------------------------------------------------ checkpoints

    def _prepare_restore(
        self, meta: dict[str, Any], name: str | None, where: str, timeout: float, provisional: bool = False
    ) -> tuple[Any, bool]:
        """A PreparedRestore from a ready ``-incoming`` shell if one fits, else a cold one;
        and whether a pool shell was taken (then :meth:`_restore_done` must follow).

        ``provisional`` (an incoming migration): the VM stays in the pool folder until the
        source commits, so that a kill -9 of this daemon leaves nothing the next one does not
        discard; without a ready shell one is spawned now for it (when the kind is poolable).
        """
        from lightvm.daemon import restore_pool
        from lightvm.mobility.restore import prepare_incoming

        ts = self._toolstack(timeout)
        flavour = IncomingFlavour.of(meta)
        shell = self.incoming.take(flavour) if self.incoming is not None else None
        taken = shell is not None
        try:
            if shell is None and provisional and flavour is not None:
                shell = restore_pool.prepare_restore_shell(self.state.root / POOL_DIR, flavour, timeout)
            if shell is not None:
                return restore_pool.prepare_from_shell(ts, shell, meta, name, where, timeout, provisional), taken
            return prepare_incoming(ts, meta, name, where, timeout), False
        except BaseException:
            self._restore_done(meta, taken)
            raise

    def _restore_done(self, meta: dict[str, Any], used_shell: bool) -> None:
        if self.incoming is None:
            return
        if used_shell:
            self.incoming.done()
        flavour = IncomingFlavour.of(meta)
        if flavour is not None:
            self.incoming.learn(flavour)  # the next restore of this kind finds a shell

    def op_restore(self, args: dict[str, Any]) -> dict[str, Any] | api.Deferred | api.Takeover:
        """Restore a checkpoint file. With ``progress``, as ``migrate``'s: the connection
        then carries ``{"progress": {...}}`` lines while QEMU loads the stream and one
        ``{"result": ...}`` or ``{"error": ...}`` line at the end."""
        if not _arg(args, "progress", bool):
            return self._restore(args, None)

        def run(conn: socket.socket, rest: bytes) -> bytes | None:
            def say(message: dict[str, Any]) -> None:
                conn.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

            conn.settimeout(10.0)
            try:
                out = self._restore(args, lambda p: say({"progress": p}))
            except Exception as exc:  # the stream's reply, like a request's error
                with contextlib.suppress(OSError):
                    say({"error": api.error_body(exc)})
                return rest
            deferred = out if isinstance(out, api.Deferred) else None  # a template's: record after the answer
            with contextlib.suppress(OSError):
                say({"result": deferred.result if deferred is not None else out})
            if deferred is not None:
                deferred.after()
            return rest

        return api.Takeover({"stream": "progress"}, run)

    def _restore(
        self, args: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any] | api.Deferred:
        from lightvm.mobility.format import read_header

        t0 = time.perf_counter()
        file = _arg(args, "file", str, required=True)
        if not os.path.isabs(file):
            raise SpecError(f"file {file!r}: give an absolute path (the daemon has its own working dir)")
        name = _arg(args, "name", str)
        timeout = float(_arg(args, "timeout", (int, float)) or 10.0)
        if os.path.isdir(file):  # a template folder (lightvm/daemon/templates.py)
            from lightvm.daemon import templates

            return templates.op_restore_template(self, file, name, timeout)
        meta, offset = read_header(Path(file))
        prepared, used_shell = self._prepare_restore(meta, name, file, timeout)
        try:
            prepared.t0 = t0
            result = prepared.finish(Path(file), offset, progress)
        finally:
            self._restore_done(meta, used_shell)
        out: dict[str, Any] = result.as_dict()
        out["path"] = "pool" if used_shell else "cold"
        out["daemon_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        self.events.emit("restored", result.name, file=file, path=out["path"])
        self.watcher.watch(result.name, result.pid)
        return out

    def op_clone(self, args: dict[str, Any]) -> dict[str, Any]:
        from lightvm.daemon import templates

        return templates.op_clone(self, args)

    def op_migrate_in(self, args: dict[str, Any]) -> api.Takeover:
        """The receiving end of a migration: this connection becomes its control channel
        (lightvm/mobility/migrate.py's protocol after the first answer, ``{"port": N}``)."""
        from lightvm.mobility import migrate, receive

        meta, name, listen = receive.parse_hello(args)
        timeout = float(_arg(args, "timeout", (int, float)) or 30.0)
        ts = self._toolstack(timeout)
        prepared, used_shell = self._prepare_restore(meta, name, f"<migration of {name}>", timeout, provisional=True)
        try:
            server = socket.create_server((listen, 0))
        except BaseException as exc:
            prepared.abort()
            self._restore_done(meta, used_shell)
            if isinstance(exc, OSError):
                raise migrate.MigrationError(f"{name}: cannot listen on {listen}: {exc.strerror or exc}") from exc
            raise

        def run(conn: socket.socket, rest: bytes) -> bytes | None:
            control = receive.Control(conn.fileno(), conn.sendall, rest)
            try:
                receive.run_incoming(ts, prepared, server, control, name, timeout)
                self.events.emit("migrated-in", name)
                with contextlib.suppress(LightVMError):
                    self.watcher.watch(name, int(ts.info(name).get("pid") or 0))
                return control.rest()
            except Exception as exc:
                self.log(f"migrate-in {name}: {exc}")
                with contextlib.suppress(OSError):
                    control.say({"error": str(exc)})
                return None  # the conversation's state is unknown: close the connection
            finally:
                server.close()
                self._restore_done(meta, used_shell)

        receiver = "lightvmd-pool" if used_shell else "lightvmd-cold"
        return api.Takeover({"port": server.getsockname()[1], "receiver": receiver}, run)

    def _target(self, args: dict[str, Any]) -> Any:
        from lightvm.daemon.ssh_sessions import Target

        paths = {}
        for key in ("known_hosts", "identity"):
            value = _arg(args, key, str)
            if value is not None and not os.path.isabs(value):
                raise SpecError(f"{key} {value!r}: give an absolute path (the daemon has its own working dir)")
            paths[key] = value
        return Target(
            target=_arg(args, "target", str, required=True),
            port=_arg(args, "port", int) or 22,
            known_hosts=paths["known_hosts"],
            identity=paths["identity"],
            remote_command=_arg(args, "remote_command", str) or "lightvm",
            remote_state_dir=_arg(args, "remote_state_dir", str),
        )

    def op_migrate(self, args: dict[str, Any]) -> api.Deferred | api.Takeover:
        """Migrate a VM over this daemon's kept SSH connection to the destination. With
        ``progress``, the connection then carries ``{"progress": {...}}`` lines while the
        stream runs and one ``{"result": ...}`` or ``{"error": ...}`` line at the end."""
        if not _arg(args, "progress", bool):
            out, after = self._migrate(args, None)
            return api.Deferred(out, after)

        def run(conn: socket.socket, rest: bytes) -> bytes | None:
            def say(message: dict[str, Any]) -> None:
                conn.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

            conn.settimeout(10.0)
            try:
                out, after = self._migrate(args, lambda p: say({"progress": p}))
            except Exception as exc:  # the stream's reply, like a request's error
                with contextlib.suppress(OSError):
                    say({"error": api.error_body(exc)})
                return rest
            try:
                say({"result": out})
            finally:
                after()
            return rest

        return api.Takeover({"stream": "progress"}, run)

    def _migrate(
        self, args: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None
    ) -> tuple[dict[str, Any], Callable[[], None]]:
        from lightvm.daemon import ssh_sessions
        from lightvm.mobility import DEFAULT_BANDWIDTH_MIB, DEFAULT_DOWNTIME_MS
        from lightvm.mobility.migrate import MigrationError

        t0 = time.perf_counter()
        name = _arg(args, "name", str, required=True)
        target = self._target(args)
        timeout = float(_arg(args, "timeout", (int, float)) or 30.0)
        self.pending.wait([name])
        ts = self._toolstack(timeout)
        try:
            session = self.sessions.get(target)
        except MigrationError as exc:
            raise MigrationError(
                f"{name}: migration to {target.target} failed: {exc}; the VM keeps running here"
            ) from exc
        result, teardown = ssh_sessions.migrate_warm(
            ts,
            session,
            name,
            tunnel=_arg(args, "tunnel", bool) is not False,  # encrypted unless asked otherwise
            bandwidth_mib=float(_arg(args, "bandwidth_mib", (int, float)) or DEFAULT_BANDWIDTH_MIB),
            downtime_ms=int(_arg(args, "downtime_ms", int) or DEFAULT_DOWNTIME_MS),
            timeout=timeout,
            t0=t0,
            progress=progress,
        )
        self.pending.begin(name)  # list/info/destroy of the name wait for the teardown

        def after() -> None:
            t1 = time.perf_counter()
            self.watcher.expect_exit(name)
            self.events.emit("migrated", name, destination=target.target)
            try:
                teardown()
            finally:
                self.pending.settled(name)
            self.log(f"migrated {name}: source removed {(time.perf_counter() - t1) * 1000:.1f} ms after the reply")
            session.keep_spare()

        out = result.as_dict()
        out["teardown_ms"] = None  # after the reply (see the log)
        return out, after

    def op_ssh(self, args: dict[str, Any]) -> Any:
        """Kept SSH sessions: ``action`` list (default), connect (open one now, with a
        spare relay), or drop."""
        action = _arg(args, "action", str) or "list"
        if action == "list":
            return self.sessions.stats()
        target = self._target(args)
        if action == "connect":
            session = self.sessions.get(target)
            session.keep_spare()
            return session.stats()
        if action == "drop":
            return {"dropped": self.sessions.drop(target)}
        raise SpecError(f"ssh action {action!r}: one of list, connect, drop")


def _arg(args: dict[str, Any], key: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
    """``args[key]`` checked against ``kind``; None when absent and optional.

    :raise SpecError: missing or of the wrong JSON type.
    """
    if key not in args or args[key] is None:
        if required:
            raise SpecError(f"missing argument {key!r}")
        return None
    value = args[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise SpecError(f"argument {key!r} must be {'/'.join(k.__name__ for k in kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise SpecError(f"argument {key!r} must be {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    return value


def _cold_reason(pool: Pool | None, use_pool: bool, spec: Any, accel: str) -> str:
    """Why a create through the daemon takes the cold path (``path: cold (REASON)``)."""
    if not use_pool:
        return "the request asked for no pool"
    if pool is None:
        return "lightvmd runs without a pool (lightvm daemon start --pool CONFIG)"
    return pool.why_cold(spec, accel)


__all__ = ["Operations"]
