"""Free TCP ports on 127.0.0.1 for the benchmarks' published forwards (QEMU's slirp binds
them): one port, or a run of N consecutive ports for N clones (``--publish`` P+i)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from lightvm.errors import LightVMError
from lightvm.tcpprobe import free_port

__all__ = ["RUN_PORTS_FROM", "ephemeral_ports", "free_port", "free_port_run", "port_run_is_free"]


RUN_PORTS_FROM = 10000  # runs of published ports are sought from here up to the ephemeral range


def ephemeral_ports() -> tuple[int, int]:
    """``net.ipv4.ip_local_port_range``: where the kernel picks client connections' ports."""
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return low, high


def port_run_is_free(first: int, count: int) -> bool:
    """Whether ports ``first`` .. ``first + count - 1`` on 127.0.0.1 are free for a listener
    (bound with SO_REUSEADDR, as slirp binds its forwards)."""
    socks: list[socket.socket] = []
    try:
        for port in range(first, first + count):
            sock = socket.socket()
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()


def free_port_run(count: int) -> int:
    """A first port P with P .. P+count-1 free on 127.0.0.1 now (clones publish P+i).

    Sought below the ephemeral range: there, every finished client connection leaves its
    port in TIME_WAIT for a minute, and a fleet's thousands of daytime queries made a free
    run of 50 rare (1,000 clones failed to find one in 100 tries).

    :raise LightVMError: no such run was found in 100 tries.
    """
    top = ephemeral_ports()[0] - count
    for _ in range(100):
        first = random.randrange(RUN_PORTS_FROM, top) if top > RUN_PORTS_FROM else free_port()
        if first + count <= 65000 and port_run_is_free(first, count):
            return first
    raise LightVMError(f"no run of {count} free ports on 127.0.0.1")
