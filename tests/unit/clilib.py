"""What the CLI's unit tests share: run ``lightvm ARGV`` in process against a fake
backend (patched in where the VM commands open theirs), and capture what it printed; a
fake lightvmd serving the real protocol in a thread (:class:`FakeDaemon`)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lightvm.cli import main as cli
from lightvm.cli import vm
from lightvm.daemon import api
from lightvm.errors import NotFoundError
from lightvm.lineio import short_unix_path


def run_with(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], backend: Any, *argv: str
) -> tuple[int, str, str]:
    """``lightvm ARGV`` with ``backend`` doing the VM commands' work: (exit status, stdout, stderr)."""

    @contextlib.contextmanager
    def fake(args: Any) -> Iterator[Any]:
        yield backend

    monkeypatch.setattr(vm, "open_backend", fake)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class FakeDaemon:
    """The real protocol (api.serve_connection) on STATE/lightvmd.sock, canned results."""

    BOOT: ClassVar[dict[str, float | None]] = {
        "qemu_up": None,
        "resumed": 1.25,
        "guest_entry": None,
        "devices_up": 1.5,
        "ready": 1.75,
    }

    def __init__(self, state: Path) -> None:
        self.state = state
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.many = 0  # list answers this many VMs more (a long output)
        self.hold = False  # pause waits until close(): a command that runs for a while
        self.released = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, dirfd = short_unix_path(api.socket_path(state))  # a deep state dir: via /proc/self/fd
        try:
            self.sock.bind(address)
        finally:
            if dirfd is not None:
                os.close(dirfd)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            api.serve_connection(conn, self.handlers(), lambda line: None)

    def handlers(self) -> dict[str, api.Handler]:
        def record(op: str, result: Any) -> api.Handler:
            def handler(args: dict[str, Any]) -> Any:
                self.requests.append((op, args))
                if args.get("name") == "ghost" or "ghost" in args.get("names", []):
                    raise NotFoundError(f"no VM named 'ghost' in {self.state} (see `lightvm list`)")
                return result(args) if callable(result) else result

            return handler

        vm = {"name": "a", "status": "running", "id": "1", "pid": 7, "accel": "tcg", "memory_mib": 4, "vcpus": 1,
              "created": 1.0, "ready_ms": 1.75, "detail": ""}  # fmt: skip

        def created(args: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"name": args["name"] or "noop", "id": "1", "accel": "tcg", "accel_reason": "requested",
                     "pid": 7, "app": "noop", "network": None, "boot_ms": self.BOOT, "path": "pool"}]  # fmt: skip

        self.vms = [vm, *({**vm, "name": f"vm{i}"} for i in range(self.many))]
        return {
            "list": record("list", lambda args: self.vms),
            "info": record("info", {**vm, "boot_ms": self.BOOT, "guest": {"state": "READY"}}),
            "create": record("create", created),
            "destroy": record("destroy", lambda args: {"destroyed": args.get("names", ["a"])}),
            "pause": record("pause", self._pause),
            "unpause": record("unpause", {"ms": 0.25}),
            "shutdown": record("shutdown", {"ms": 3.0}),
        }

    def _pause(self, args: dict[str, Any]) -> dict[str, float]:
        if self.hold:
            self.released.wait(60)
        return {"ms": 0.5}

    def close(self) -> None:
        self.released.set()
        self.stop.set()
        self.sock.close()
        self.thread.join(5)
        api.socket_path(self.state).unlink(missing_ok=True)
