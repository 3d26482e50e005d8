"""lightvm.bench.ports: port runs (clones publish P .. P+N-1)."""

from __future__ import annotations

import socket

from lightvm.bench.ports import RUN_PORTS_FROM, ephemeral_ports, free_port_run, port_run_is_free


def test_a_listening_port_is_not_free() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        assert not port_run_is_free(port, 1)
        assert not port_run_is_free(port - 1, 2)


def test_a_run_is_free_and_below_the_ephemeral_range() -> None:
    """Client connections' ports (in TIME_WAIT a minute after each query) never land there."""
    low, _ = ephemeral_ports()
    for _ in range(20):
        first = free_port_run(50)
        assert first >= RUN_PORTS_FROM and first + 50 <= low
        assert port_run_is_free(first, 50)
