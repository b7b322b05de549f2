"""The Internet checksum (RFC 1071) of the benchmarks' hand-built packets."""

from __future__ import annotations

import struct


def inet_sum(b: bytes) -> int:
    """The 16-bit one's-complement sum of ``b`` (padded to an even length), folded; a
    checksum field holds ``0xFFFF ^`` it."""
    if len(b) % 2:
        b += b"\0"
    s = sum(w for (w,) in struct.iter_unpack("!H", b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s
