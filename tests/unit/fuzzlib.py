"""Shared settings of the fuzzers (hypothesis): bounded examples in CI, more at night.

``LIGHTVM_FUZZ_EXAMPLES=N`` runs N examples per fuzzer with a random seed (the nightly
job's long run); without it each fuzzer runs its small CI budget, derandomized so a CI
failure reproduces. Every example has a deadline (no hang) and the fuzzers measure the
peak of Python allocations around the code under test (no unbounded allocation).
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, settings

T = TypeVar("T")

NIGHTLY = int(os.environ.get("LIGHTVM_FUZZ_EXAMPLES", "0") or 0)
ALLOC_LIMIT = 8 << 20  # bytes: far above what parsing a bounded input needs


def fuzz(ci_examples: int, deadline_ms: int = 2000) -> settings:
    """Hypothesis settings: ``ci_examples`` in CI, ``LIGHTVM_FUZZ_EXAMPLES`` at night."""
    return settings(
        max_examples=NIGHTLY or ci_examples,
        deadline=deadline_ms,
        derandomize=not NIGHTLY,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def bounded(fn: Callable[[], T], limit: int = ALLOC_LIMIT) -> T:
    """Run ``fn``; fail if its Python allocations peaked above ``limit`` bytes. Its
    exception, if any, propagates after the check."""
    tracemalloc.start()
    try:
        try:
            return fn()
        finally:
            _, peak = tracemalloc.get_traced_memory()
            assert peak < limit, f"allocated {peak} bytes at peak (limit {limit})"
    finally:
        tracemalloc.stop()
