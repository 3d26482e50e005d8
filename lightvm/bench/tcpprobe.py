"""Is an app serving? One request/answer exchange over TCP, retried until it succeeds.

Why its own module: the Tinyx suite times "create -> first answer" for a VM (on a port
QEMU forwards) and for a container (inside the crun worker's process, so that the
worker's reply is not in the timing); both must probe the same way. The probe speaks
the app's own protocol (the recipe's ``[probe]``, e.g. redis' ``PING\\r\\n`` ->
``+PONG``) rather than running a client program: no redis-cli on the host, and no
process start inside the timed span.

A connect that succeeds is not enough: QEMU's user networking accepts on the host
port before the guest listens (and then closes the connection), so only the expected
answer counts.
"""

from __future__ import annotations

import socket
import time

from lightvm.errors import LightVMError

ATTEMPT_TIMEOUT_S = 2.0
RETRY_S = 0.002


def exchange(
    port: int, send: bytes, expect: bytes, timeout: float = ATTEMPT_TIMEOUT_S, host: str = "127.0.0.1"
) -> bool:
    """Send ``send`` to ``host``:``port``; True when the answer starts with ``expect``."""
    got = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(send)
            while len(got) < len(expect):
                chunk = sock.recv(256)
                if not chunk:
                    break
                got += chunk
    except OSError:
        return False
    return got.startswith(expect)


def wait_serving(
    port: int, send: bytes, expect: bytes, t0: float, timeout: float = 60.0, host: str = "127.0.0.1"
) -> float:
    """Retry :func:`exchange` until it succeeds; the ms from ``t0`` (a perf_counter) to then.

    :raise LightVMError: no good answer within ``timeout`` s.
    """
    deadline = time.perf_counter() + timeout
    while True:
        if exchange(port, send, expect, host=host):
            return (time.perf_counter() - t0) * 1000
        if time.perf_counter() > deadline:
            raise LightVMError(
                f"{host}:{port} did not answer {send!r} with {expect!r} within {timeout:.0f} s "
                "(is the app up? see its console log)"
            )
        time.sleep(RETRY_S)  # a poll for a condition another process brings about
