"""Is an app serving? One request/answer exchange over TCP, retried until it succeeds.

Why its own module: the Tinyx suite times "create -> first answer" for a VM (on a port
QEMU forwards) and for a container (inside the crun worker's process, so that the
worker's reply is not in the timing); both must probe the same way. An image's snapshot
(lightvm/mobility/snapshot.py) is taken after the same exchange has been answered once. The probe speaks
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
ANSWER_MAX = 64 << 10  # an answer without ``expect`` in its first 64 KiB is not the one


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (QEMU binds it for a hostfwd)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exchange(
    port: int, send: bytes, expect: bytes, timeout: float = ATTEMPT_TIMEOUT_S, host: str = "127.0.0.1"
) -> bool:
    """Send ``send`` to ``host``:``port``; True when the answer holds ``expect`` (a
    recipe's probe, as the kernel loop reads it: redis' ``+PONG`` starts its answer, an
    HTTP ``200 OK`` follows the version). Reads until it is there, the peer closes, or
    ANSWER_MAX bytes came."""
    got = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(send)
            while expect not in got and len(got) < ANSWER_MAX:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
    except OSError:
        return False
    return expect in got


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
