"""A migration target as OpenSSH would reach it: ``~/.ssh/config`` applied to ``[USER@]HOST``.

Users name their hosts by the aliases they already use with ``ssh``; lightvm resolves
Host aliases, ``HostName``, ``User``, ``Port`` and ``IdentityFile`` the same way, with
the command line first (``user@`` in the target, ``--port``, ``--identity``), then the
config file, then SSH's defaults (port 22, the local user, the agent and ~/.ssh keys).

The resolution happens in the client that the user runs, not in lightvmd: the daemon
may run as another user (a service) whose ~/.ssh/config is not the user's, so the
request it receives already names the real host, user, port and key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lightvm.mobility.migrate import MigrationError

DEFAULT_PORT = 22


def default_config() -> Path:
    return Path(os.path.expanduser("~")) / ".ssh" / "config"


@dataclass(frozen=True)
class Resolved:
    target: str  # [user@]hostname, the alias replaced by its HostName
    port: int
    identity: Path | None
    alias: str | None  # the Host alias that matched, when the config changed anything


def resolve(target: str, port: int | None, identity: Path | None, config: Path | None = None) -> Resolved:
    """Apply the SSH config file (``config``, default ``~/.ssh/config`` when it exists).

    :raise MigrationError: the config file exists but cannot be read or parsed, or names a
        port that is not a number.
    """
    user, _, host = target.rpartition("@")
    path = config if config is not None else default_config()
    found: dict[str, object] = {}
    if config is not None or path.is_file():
        found = _lookup(path, host)
    hostname = str(found.get("hostname") or host)
    user = user or str(found.get("user") or "")
    if port is None:
        port = _port(found.get("port"), path) if found.get("port") else DEFAULT_PORT
    if identity is None:
        identity = next((Path(f) for f in _files(found.get("identityfile")) if Path(f).is_file()), None)
    changed = hostname != host or bool(found.get("user") or found.get("port") or found.get("identityfile"))
    return Resolved(f"{user}@{hostname}" if user else hostname, port, identity, host if changed else None)


def _lookup(path: Path, host: str) -> dict[str, object]:
    import paramiko  # only when a config file is there: it costs ~0.1 s to import

    try:
        text = path.read_text()
    except OSError as exc:
        raise MigrationError(f"SSH config {path}: {exc.strerror or exc}") from exc
    try:
        return dict(paramiko.SSHConfig.from_text(text).lookup(host))
    except Exception as exc:  # paramiko raises plain exceptions of several kinds on bad syntax
        raise MigrationError(f"SSH config {path}: cannot parse it: {exc}") from exc


def _port(value: object, path: Path) -> int:
    try:
        port = int(str(value))
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise MigrationError(f"SSH config {path}: Port {value!r} is not a TCP port")
    return port


def _files(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value] if value else []
    return [os.path.expanduser(str(item)) for item in items]
