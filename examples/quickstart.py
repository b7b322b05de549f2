"""Split a 64 KiB TCP super-packet as the kernel would, then coalesce it back.

Runs anywhere (no device, no root): python examples/quickstart.py
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import tunoffload as t

if TYPE_CHECKING:  # collections.abc.Buffer from Python 3.12 on
    from typing_extensions import Buffer


def csum_fold(data: Buffer, start: int = 0) -> int:
    """The folded 16-bit ones' complement sum of any bytes-like ``data``."""
    s = start
    words = bytes(data)
    if len(words) % 2:
        words += b"\0"
    for (w,) in struct.iter_unpack("!H", words):
        s += w
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def super_packet(payload_len: int) -> bytes:
    """An IPv4/TCP packet as a TUN reader gets it with TSO: one header, a big payload, and
    the pseudo-header sum in the TCP checksum field (the kernel completes it per segment)."""
    total = 20 + 20 + payload_len
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            1,
            0x4000,
            64,
            6,
            0,
            bytes([10, 0, 0, 1]),
            bytes([10, 0, 0, 2]),
        )
    )
    struct.pack_into("!H", ip, 10, 0xFFFF ^ csum_fold(bytes(ip)))
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x18, 65535, 0, 0))
    pseudo = csum_fold(ip[12:20] + struct.pack("!HH", 6, 20 + payload_len))
    struct.pack_into("!H", tcp, 16, pseudo)
    return bytes(ip + tcp + bytes(i % 251 for i in range(payload_len)))


def main() -> None:
    pkt = super_packet(65535 - 40)
    hdr = t.VirtioNetHdr(
        flags=t.VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type=t.VIRTIO_NET_HDR_GSO_TCPV4,
        gso_size=1448,
        csum_start=20,
        csum_offset=16,
    )
    offset = t.VIRTIO_NET_HDR_LEN
    out = [bytearray(offset + 1500) for _ in range(64)]
    sizes = [0] * len(out)
    n = t.gso_split(pkt, hdr, out, sizes, offset)
    print(f"gso_split: one {len(pkt)}-byte super-packet -> {n} segments of {sizes[0]} bytes")

    # Trim each buffer to its packet, as a forwarder would before writing them out.
    batch = [out[i][: offset + sizes[i]] for i in range(n)]
    table = t.GroTable()
    to_write = t.handle_gro(batch, offset, table)
    merged = t.VirtioNetHdr.decode(batch[to_write[0]])
    print(
        f"handle_gro: {n} segments -> {len(to_write)} packet(s); first: "
        f"{len(batch[to_write[0]]) - offset} bytes, {merged!r}"
    )
    again = [bytearray(1500) for _ in range(64)]
    m = t.gso_split(batch[to_write[0]][offset:], merged, again, sizes)
    same = all(again[i][: sizes[i]] == out[i][offset : offset + sizes[i]] for i in range(m))
    print(f"round trip: {m} segments, identical to the first split: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
