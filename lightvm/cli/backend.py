"""Who does the work of a VM command: this process (the Toolstack) or lightvmd (its API).

The commands print once, from the plain data (dicts) a :class:`Backend` returns: the
local one and the daemon's client give the same shapes (the daemon adds ``path``).
Routing rule: ``create``, ``list``, ``info``, ``destroy``, ``shutdown``, ``pause``,
``unpause``, ``restore`` and ``migrate`` go through lightvmd when one answers on the
state dir's socket (a note on stderr says so), else one-shot; ``LIGHTVM_NO_DAEMON=1``
forces one-shot. Heavy modules (toolstack, mobility) are imported only when used:
every CLI start pays for what this module imports.
"""

from __future__ import annotations

import os
import sys

# What this module imports at run time is paid by every ``lightvm create``/``list``, whose
# whole command is meant to cost no more than ``python3 -c pass`` (docs/cli-startup.md):
# os and sys only; typing, pathlib and argparse for the type checker alone.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any, Protocol

    from lightvm.daemon.proto import Client
    from lightvm.toolstack import Toolstack

    Progress = Callable[[dict[str, Any], int, int], None]

    class Backend(Protocol):
        """The operations of the routed commands; results are JSON-shaped data."""

        routed: bool  # True: lightvmd did the work (results carry its ``path``)

        def create(self, request: dict[str, Any], progress: Progress) -> list[dict[str, Any]]:
            """Create ``request["count"]`` VMs; ``progress(result, done, count)`` as each is READY."""
            ...

        def list_vms(self) -> list[dict[str, Any]]: ...

        def info(self, name: str) -> dict[str, Any]: ...

        def destroy(self, names: list[str] | None) -> tuple[list[str], list[str]]:
            """Destroy ``names`` (None: all); (destroyed, errors) - the errors are raised after the print."""
            ...

        def shutdown(self, name: str, keep: bool, timeout: float) -> float: ...

        def pause(self, name: str) -> float: ...

        def unpause(self, name: str) -> float: ...

        def restore(
            self, file: Path, name: str | None, timeout: float, progress: Callable[[dict[str, Any]], None] | None = None
        ) -> dict[str, Any]: ...

        def migrate(
            self, request: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None
        ) -> dict[str, Any]: ...


ROUTED = ("create", "list", "info", "destroy", "shutdown", "pause", "unpause", "restore", "migrate")


def state_root(args: argparse.Namespace) -> Path:
    """The state dir of this invocation (``--state-dir``, else the default)."""
    from pathlib import Path

    from lightvm.state import default_state_dir

    state_dir = getattr(args, "state_dir", None)
    return Path(state_dir) if state_dir is not None else default_state_dir()


def toolstack(args: argparse.Namespace) -> Toolstack:
    """A Toolstack on the state dir of ``args`` (``args.timeout``, if any, as its boot timeout)."""
    from pathlib import Path

    from lightvm.toolstack import Toolstack

    state_dir = getattr(args, "state_dir", None)  # a Path from argparse, a str from the thin path
    if state_dir is not None:
        state_dir = Path(state_dir)
        # The network commands (and children) read the same dir from the environment.
        os.environ["LIGHTVM_STATE_DIR"] = str(state_dir)
    return Toolstack(state_dir, boot_timeout=getattr(args, "timeout", 10.0))


class LocalBackend:
    """One-shot mode: this process runs the Toolstack."""

    routed = False

    def __init__(self, args: argparse.Namespace) -> None:
        self.ts = toolstack(args)

    def create(self, request: dict[str, Any], progress: Progress) -> list[dict[str, Any]]:
        from lightvm.spec import load_spec

        spec = load_spec(request["config"], overrides=request.get("overrides"))
        if request["publish"]:
            spec = spec.with_publish(request["publish"], request["count"])
        if spec.snapshot is not None:  # an image's booted VM (lightvm/mobility/snapshot.py)
            from lightvm.mobility.snapshot import create_or_boot

            return create_or_boot(
                self.ts, spec, request["name"], request["count"], request["accel"], request["timeout"],
                request["jobs"], not request.get("no_snapshot"), progress,
            )  # fmt: skip
        results = self.ts.create(
            spec,
            name=request["name"],
            count=request["count"],
            accel=request["accel"],
            jobs=request["jobs"],
            progress=lambda r, done, count: progress(r.as_dict(), done, count),
        )
        return [r.as_dict() for r in results]

    def list_vms(self) -> list[dict[str, Any]]:
        return [i.as_dict() for i in self.ts.list()]

    def info(self, name: str) -> dict[str, Any]:
        return self.ts.info(name)

    def destroy(self, names: list[str] | None) -> tuple[list[str], list[str]]:
        from lightvm.errors import LightVMError

        done, errors = [], []
        for name in self.ts.state.names() if names is None else names:
            try:
                self.ts.destroy(name)
                done.append(name)
            except LightVMError as exc:
                errors.append(str(exc))
        return done, errors

    def shutdown(self, name: str, keep: bool, timeout: float) -> float:
        return self.ts.shutdown(name, keep=keep, timeout=timeout)

    def pause(self, name: str) -> float:
        return self.ts.pause(name)

    def unpause(self, name: str) -> float:
        return self.ts.unpause(name)

    def restore(
        self, file: Path, name: str | None, timeout: float, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        from lightvm.mobility.template import remembered_digests, restore_path

        self.ts.state.ensure()
        with remembered_digests(self.ts.state.root):  # a template's files: hashed once per version
            return restore_path(self.ts, file, name=name, timeout=timeout, progress=progress).as_dict()

    def migrate(
        self, request: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        from pathlib import Path

        from lightvm.mobility import migrate

        known_hosts, identity = request["known_hosts"], request["identity"]
        result = migrate.migrate(
            self.ts,
            request["name"],
            request["target"],
            port=request["port"],
            known_hosts=Path(known_hosts) if known_hosts else None,
            identity=Path(identity) if identity else None,
            remote_command=request["remote_command"],
            remote_state_dir=request["remote_state_dir"],
            tunnel=request["tunnel"],
            bandwidth_mib=request["bandwidth_mib"],
            downtime_ms=request["downtime_ms"],
            timeout=request["timeout"],
            progress=progress,
        )
        return result.as_dict()


class DaemonBackend:
    """lightvmd does the work (and may use its prepared shells: ``path: pool``)."""

    routed = True

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, request: dict[str, Any], progress: Progress) -> list[dict[str, Any]]:
        args = {k: request[k] for k in ("name", "count", "accel", "timeout", "publish")}
        # the daemon has its own working dir; realpath is str(Path.resolve()) without pathlib
        args["config"] = os.path.realpath(request["config"])
        if request.get("overrides"):
            args["overrides"] = request["overrides"]  # checked again by lightvmd (spec.check_overrides)
        if request.get("no_snapshot"):
            args["snapshot"] = False  # an unpooled create boots (the default: the config's snapshot)
        timeout = request["timeout"] * max(1, request["count"]) + 30.0
        results: list[dict[str, Any]] = self.client.call("create", args, timeout=timeout)
        return results  # one answer for all: no progress to report

    def list_vms(self) -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = self.client.call("list")
        return infos

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.client.call("info", {"name": name})
        return info

    def destroy(self, names: list[str] | None) -> tuple[list[str], list[str]]:
        request: dict[str, Any] = {"all": True} if names is None else {"names": names}
        done: list[str] = self.client.call("destroy", request, timeout=600.0)["destroyed"]
        return done, []  # lightvmd raises what failed

    def shutdown(self, name: str, keep: bool, timeout: float) -> float:
        return float(self.client.call("shutdown", {"name": name, "keep": keep, "timeout": timeout}, timeout + 30)["ms"])

    def pause(self, name: str) -> float:
        return float(self.client.call("pause", {"name": name})["ms"])

    def unpause(self, name: str) -> float:
        return float(self.client.call("unpause", {"name": name})["ms"])

    def restore(
        self, file: Path, name: str | None, timeout: float, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        request = {"file": os.path.realpath(file), "name": name, "timeout": timeout}
        if progress is not None:
            return self._streamed("restore", request, timeout + 30.0, progress)
        result: dict[str, Any] = self.client.call("restore", request, timeout=timeout + 30.0)
        return result

    def migrate(
        self, request: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        timeout = request["timeout"] * 4 + 30.0
        if progress is None:
            result: dict[str, Any] = self.client.call("migrate", request, timeout=timeout)
            return result
        return self._streamed("migrate", request, timeout, progress)

    def _streamed(
        self, op: str, request: dict[str, Any], timeout: float, progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call_with_progress(op, request, timeout, progress)
        return result


# A connection already open to the daemon the command's state dir names: lightvm/cli/warm.py's
# child opens it to decide whether it may run the command, and the command then uses it.
checked_client: Client | None = None


def connect(args: argparse.Namespace) -> Client | None:
    """A connection to the state dir's daemon, or None (one-shot mode)."""
    global checked_client
    if checked_client is not None:
        client, checked_client = checked_client, None
        return client
    if os.environ.get("LIGHTVM_NO_DAEMON"):
        return None
    from lightvm.daemon import proto
    from lightvm.statedir import default_state_path

    state_dir = getattr(args, "state_dir", None)
    root = state_dir if state_dir is not None else default_state_path()
    if not os.path.exists(proto.socket_file(root)):  # the common no-daemon case: one stat
        return None
    try:
        return proto.Client.connect(root, timeout=2.0)
    except proto.DaemonUnavailable:
        return None  # a dead daemon's socket file


class open_backend:  # lower case: called like the function it was (contextlib would cost an import)
    """The backend of a routed command: lightvmd when one answers, else this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client: Client | None = None

    def __enter__(self) -> Backend:
        self.client = connect(self.args)
        if self.client is None:
            return LocalBackend(self.args)
        if not getattr(self.args, "quiet", False):
            print(f"lightvm: via lightvmd ({self.client.path})", file=sys.stderr)
        self.args.served_by_lightvmd = True  # main may end the process without finalization
        return DaemonBackend(self.client)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()


__all__ = ["ROUTED", "DaemonBackend", "LocalBackend", "connect", "open_backend", "state_root", "toolstack"]
