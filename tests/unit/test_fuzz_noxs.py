"""Fuzz what the host reads from the NoXS region the guest can write (lightvm/noxs.py):
the boot record and status words, the devices' frontend states, the page's feature bits
and generation. The guest is not trusted: whatever it wrote, the host gets validated
values or a NoxsError, never another exception, a hang or an unbounded allocation."""

from __future__ import annotations

import contextlib
import random
import tempfile
from pathlib import Path

from fuzzlib import bounded, fuzz
from hypothesis import given
from hypothesis import strategies as st

from lightvm.mobility.restore import page_generation
from lightvm.noxs import BootState, GuestErrorCode, NoxsError, NoxsRegion, TscSource, XenbusState


def read_everything(region: NoxsRegion, devices: int) -> None:
    record = region.boot_record()
    assert isinstance(record.state, BootState) and isinstance(record.error, GuestErrorCode)
    assert isinstance(record.tsc_source, TscSource)
    assert isinstance(record.app, str) and len(record.app) <= 256
    assert isinstance(record.message, str) and len(record.message) <= 1024
    for start, end in ((record.tsc_entry, record.tsc_ready), (record.tsc_devices_up, record.tsc_ready)):
        delta = record.tsc_delta_ms(start, end)
        assert delta is None or delta >= 0
    assert isinstance(region.boot_state(), int)
    assert isinstance(region.rings_nmi_doorbell(), bool)
    assert 0 <= page_generation(region) < 1 << 64
    for i in range(devices + 2):  # two past the end: refused, not read out of the region
        with contextlib.suppress(NoxsError):
            assert isinstance(region.frontend_state(i), XenbusState)


@fuzz(ci_examples=150)
@given(
    st.integers(min_value=1, max_value=4),
    st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=512)), max_size=30),
    st.none() | st.integers(min_value=0, max_value=2**32),
)
def test_host_reads_survive_any_guest_writes(devices: int, writes: list[tuple[int, bytes]], fill: int | None) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lightvm-fuzz-noxs-"))
    region = NoxsRegion.create(folder / "region", devices)
    try:
        raw = region.raw()
        if fill is not None:  # every byte the guest could write, from a seed hypothesis shrinks
            raw[:] = random.Random(fill).randbytes(region.size)
        for at, data in writes:
            at %= region.size
            chunk = data[: region.size - at]
            raw[at : at + len(chunk)] = chunk
        bounded(lambda: read_everything(region, devices))
    finally:
        region.close()
        region.unlink()
        folder.rmdir()
