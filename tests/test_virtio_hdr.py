"""VirtioNetHdr and the module constants, per API.md."""

from __future__ import annotations

import struct

import pytest
import tunoffload as t
from _kinds import refused

FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
WIDTH = {
    "flags": 8,
    "gso_type": 8,
    "hdr_len": 16,
    "gso_size": 16,
    "csum_start": 16,
    "csum_offset": 16,
}
SAMPLE = {
    "flags": 1,
    "gso_type": 4,
    "hdr_len": 74,
    "gso_size": 1428,
    "csum_start": 40,
    "csum_offset": 16,
}


def native(**f) -> bytes:
    return struct.pack("=BBHHHH", *(f.get(k, 0) for k in FIELDS))


def test_constants():
    assert t.VIRTIO_NET_HDR_LEN == 10
    assert t.IDEAL_BATCH_SIZE == 128
    assert t.VIRTIO_NET_HDR_GSO_NONE == 0
    assert t.VIRTIO_NET_HDR_GSO_TCPV4 == 1
    assert t.VIRTIO_NET_HDR_GSO_UDP == 3
    assert t.VIRTIO_NET_HDR_GSO_TCPV6 == 4
    assert t.VIRTIO_NET_HDR_GSO_UDP_L4 == 5
    assert t.VIRTIO_NET_HDR_GSO_ECN == 0x80
    assert t.VIRTIO_NET_HDR_F_NEEDS_CSUM == 1
    assert t.VIRTIO_NET_HDR_F_DATA_VALID == 2


def test_defaults():
    h = t.VirtioNetHdr()
    for k in FIELDS:
        assert getattr(h, k) == 0, k
    assert bytes(h) == bytes(10)


def test_constructor_positional_and_keyword():
    h1 = t.VirtioNetHdr(*(SAMPLE[k] for k in FIELDS))
    h2 = t.VirtioNetHdr(**SAMPLE)
    for k in FIELDS:
        assert getattr(h1, k) == SAMPLE[k]
        assert getattr(h2, k) == SAMPLE[k]
    assert h1 == h2


@pytest.mark.parametrize("field", FIELDS)
def test_attribute_read_write(field):
    h = t.VirtioNetHdr(**SAMPLE)
    top = (1 << WIDTH[field]) - 1
    for v in (0, 1, top, top // 2):
        setattr(h, field, v)
        assert getattr(h, field) == v
        for other in FIELDS:
            if other != field:
                assert getattr(h, other) == SAMPLE[other], "another field changed"
    assert bytes(h) == native(**dict(SAMPLE, **{field: top // 2}))


@pytest.mark.parametrize("field", FIELDS)
def test_out_of_range(field):
    top = 1 << WIDTH[field]
    for bad in (top, -1, 1 << 40):
        # OverflowError for every field, naming it and its range (the papercut was
        # "out of range integral type conversion attempted").
        msg = f"^{field} must be in 0..={top - 1}, got {bad}$"
        refused(lambda: t.VirtioNetHdr(**{field: bad}), OverflowError, msg)  # noqa: B023
        h = t.VirtioNetHdr(**SAMPLE)
        refused(lambda: setattr(h, field, bad), OverflowError, msg)  # noqa: B023
        assert getattr(h, field) == SAMPLE[field], "a rejected value was stored"
    # The largest value fits.
    assert getattr(t.VirtioNetHdr(**{field: top - 1}), field) == top - 1


def test_decode_native_byte_order():
    raw = native(**SAMPLE)
    for buf in (raw, bytearray(raw), memoryview(raw), raw + b"\xff" * 20):
        h = t.VirtioNetHdr.decode(buf)
        for k in FIELDS:
            assert getattr(h, k) == SAMPLE[k], (type(buf), k)
    # byte order really is native: hdr_len 0x0102 laid out as the host stores it
    h = t.VirtioNetHdr.decode(struct.pack("=BBHHHH", 0, 0, 0x0102, 0x0304, 0x0506, 0x0708))
    assert (h.hdr_len, h.gso_size, h.csum_start, h.csum_offset) == (0x0102, 0x0304, 0x0506, 0x0708)


def test_decode_from_slice_of_larger_buffer():
    big = bytearray(b"\xee" * 5 + native(**SAMPLE) + b"\xdd" * 5)
    assert t.VirtioNetHdr.decode(memoryview(big)[5:]) == t.VirtioNetHdr(**SAMPLE)


@pytest.mark.parametrize("n", [0, 1, 9])
def test_decode_too_short(n):
    for buf in (bytes(n), bytearray(n), memoryview(bytes(n))):
        e = refused(
            lambda: t.VirtioNetHdr.decode(buf),  # noqa: B023
            "virtio_hdr_too_short",
            f"^virtio_net_hdr needs 10 bytes, got {n}$",
        )
        assert getattr(e, "index", "missing") is None


def test_encode_writes_first_ten_bytes_only():
    h = t.VirtioNetHdr(**SAMPLE)
    buf = bytearray(b"\xaa" * 16)
    h.encode(buf)
    assert bytes(buf[:10]) == native(**SAMPLE)
    assert bytes(buf[10:]) == b"\xaa" * 6
    exact = bytearray(10)
    h.encode(exact)
    assert bytes(exact) == native(**SAMPLE)


def test_encode_into_memoryview_slice():
    h = t.VirtioNetHdr(**SAMPLE)
    big = bytearray(b"\xaa" * 30)
    h.encode(memoryview(big)[7:17])
    assert bytes(big[7:17]) == native(**SAMPLE)
    assert bytes(big[:7]) == b"\xaa" * 7 and bytes(big[17:]) == b"\xaa" * 13


@pytest.mark.parametrize("n", [0, 1, 9])
def test_encode_too_short(n):
    buf = bytearray(b"\xaa" * n)
    refused(
        lambda: t.VirtioNetHdr(**SAMPLE).encode(buf),
        "virtio_hdr_too_short",
        f"^virtio_net_hdr needs 10 bytes of room, got {n}$",
    )
    assert bytes(buf) == b"\xaa" * n


def test_encode_read_only():
    h = t.VirtioNetHdr(**SAMPLE)
    for buf in (bytes(16), memoryview(bytearray(16)).toreadonly()):
        with pytest.raises((TypeError, BufferError)):
            h.encode(buf)


def test_bytes_roundtrip():
    h = t.VirtioNetHdr(**SAMPLE)
    b = bytes(h)
    assert isinstance(b, bytes) and len(b) == 10
    assert b == native(**SAMPLE)
    assert t.VirtioNetHdr.decode(b) == h


def test_equality():
    a = t.VirtioNetHdr(**SAMPLE)
    b = t.VirtioNetHdr(**SAMPLE)
    assert a == b and not (a != b)
    for k in FIELDS:
        c = t.VirtioNetHdr(**dict(SAMPLE, **{k: SAMPLE[k] + 1}))
        assert a != c and not (a == c), k
    assert t.VirtioNetHdr() == t.VirtioNetHdr.decode(bytes(10))


def test_repr_shows_fields():
    r = repr(t.VirtioNetHdr(**SAMPLE))
    for k in FIELDS:
        assert k in r, (k, r)
    for v in ("74", "1428", "40", "16"):
        assert v in r, (v, r)
