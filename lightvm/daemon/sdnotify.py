"""Tell a service manager (systemd ``Type=notify``) how lightvmd is doing: sd_notify(3).

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). lightvmd
sends ``READY=1`` once its socket accepts connections and its pools are started (so a
unit ordered after lightvmd.service finds a daemon that answers), ``STATUS=`` lines a
``systemctl status`` shows, and ``STOPPING=1`` when it begins to shut down. Without
``$NOTIFY_SOCKET`` (not under a service manager) nothing is sent. A failure to notify is
never fatal: the daemon serves either way, and the manager's start timeout says the rest.
"""

from __future__ import annotations

import os
import socket

ENV = "NOTIFY_SOCKET"
TIMEOUT = 1.0


def notify(**fields: str | int) -> str | None:
    """Send ``fields`` (``ready=1`` -> ``READY=1``); None if sent or not asked for, else why not."""
    address = os.environ.get(ENV)
    if not address:
        return None
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return f"{ENV}={address!r}: neither a path nor an abstract socket name"
    message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(message, address)
    except OSError as exc:
        return f"cannot notify {os.environ[ENV]}: {exc.strerror or exc}"
    return None


__all__ = ["ENV", "notify"]
