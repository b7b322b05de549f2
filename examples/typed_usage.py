"""A typed tour of the tunoffload API; checked in CI with ``mypy --strict``.

Run it as ``python examples/typed_usage.py``: it builds a TCP/IPv4 super-packet by hand,
splits it with ``gso_split`` (as after a TUN read with offload), coalesces the segments
again with ``handle_gro`` (as before a TUN write) and prints what happened. With
``--tun`` (needs CAP_NET_ADMIN) it also creates a TUN device with offload; add ``--pump``
to forward one read from it back into it. Importing this module does nothing.
"""

from __future__ import annotations

import socket
import struct
import sys

import tunoffload as t

HDR_LEN: int = t.VIRTIO_NET_HDR_LEN  # 10: struct virtio_net_hdr, without num_buffers
MSS = 1000

GSO_NAMES: dict[int, str] = {
    t.VIRTIO_NET_HDR_GSO_NONE: "NONE",
    t.VIRTIO_NET_HDR_GSO_TCPV4: "TCPV4",
    t.VIRTIO_NET_HDR_GSO_UDP: "UDP",
    t.VIRTIO_NET_HDR_GSO_TCPV6: "TCPV6",
    t.VIRTIO_NET_HDR_GSO_UDP_L4: "UDP_L4",
}


def ones_complement_sum(data: bytes, start: int = 0) -> int:
    """The folded 16-bit ones' complement sum of ``data`` (big-endian words)."""
    if len(data) % 2:
        data += b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = start + sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp4_super_packet(payload: bytes) -> tuple[bytes, t.VirtioNetHdr]:
    """A TCP/IPv4 packet carrying ``payload`` and the GSO header a TUN read would give it.

    Like the kernel's CHECKSUM_PARTIAL, the TCP checksum field holds the (uncomplemented)
    pseudo-header sum and the header asks for the rest with ``F_NEEDS_CSUM``.
    """
    src, dst = socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2")
    tcp_len = 20 + len(payload)
    ip = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 0x1234, 0x4000, 64, 6, 0, src, dst)
    )
    struct.pack_into("!H", ip, 10, 0xFFFF - ones_complement_sum(bytes(ip)))
    pseudo = ones_complement_sum(src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, tcp_len))
    # ports, seq, ack, data offset 5 words, ACK|PSH, window, checksum, urgent pointer
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 1, 5 << 4, 0x18, 65535, pseudo, 0)
    hdr = t.VirtioNetHdr(
        flags=t.VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type=t.VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len=40,
        gso_size=MSS,
        csum_start=20,
        csum_offset=16,
    )
    return bytes(ip) + tcp + payload, hdr


def describe(hdr: t.VirtioNetHdr) -> str:
    """A short human-readable form of a virtio header."""
    gso = hdr.gso_type & ~t.VIRTIO_NET_HDR_GSO_ECN
    flags: list[str] = []
    if hdr.flags & t.VIRTIO_NET_HDR_F_NEEDS_CSUM:
        flags.append("NEEDS_CSUM")
    if hdr.flags & t.VIRTIO_NET_HDR_F_DATA_VALID:
        flags.append("DATA_VALID")
    if hdr.gso_type & t.VIRTIO_NET_HDR_GSO_ECN:
        flags.append("ECN")
    return (
        f"gso={GSO_NAMES.get(gso, hex(gso))} gso_size={hdr.gso_size} hdr_len={hdr.hdr_len} "
        f"csum_start={hdr.csum_start} csum_offset={hdr.csum_offset} flags={'|'.join(flags)}"
    )


def split_segments(packet: bytes, hdr: t.VirtioNetHdr) -> list[bytearray]:
    """Segment ``packet`` with ``gso_split``; each result has ``HDR_LEN`` bytes headroom."""
    out_bufs: list[bytearray] = [bytearray(HDR_LEN + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
    sizes: list[int] = [0] * t.IDEAL_BATCH_SIZE
    n: int = t.gso_split(packet, hdr, out_bufs, sizes, out_offset=HDR_LEN, is_v6=False)
    return [out_bufs[i][: HDR_LEN + sizes[i]] for i in range(n)]


def coalesce(bufs: list[bytearray], table: t.GroTable) -> list[int]:
    """Coalesce ``bufs`` (packets after ``HDR_LEN`` bytes of headroom) with ``handle_gro``."""
    return t.handle_gro(bufs, HDR_LEN, table, can_udp_gro=True)


def engine_demo() -> None:
    """Split a super-packet into segments and coalesce them back; print each step."""
    packet, hdr = tcp4_super_packet(bytes(range(256)) * 12)  # 3072 bytes: 4 segments
    wire = bytearray(HDR_LEN)
    hdr.encode(wire)
    assert t.VirtioNetHdr.decode(wire) == hdr
    assert bytes(hdr) == bytes(wire)
    print(f"super-packet: {len(packet)} bytes, {describe(hdr)}")

    segments = split_segments(packet, hdr)
    for i, seg in enumerate(segments):
        print(f"  segment {i}: {len(seg) - HDR_LEN} bytes")

    table = t.GroTable()
    indices = coalesce(segments, table)
    for i in indices:
        out_hdr = t.VirtioNetHdr.decode(segments[i])
        print(f"write {i}: {len(segments[i]) - HDR_LEN} bytes, {describe(out_hdr)}")
    # In-order segments of one flow coalesce back into the original super-packet.
    same = len(indices) == 1 and bytes(segments[indices[0]][HDR_LEN:]) == packet
    print(f"coalesced back to the original super-packet: {same}")

    plain = t.VirtioNetHdr()
    plain.gso_type = t.VIRTIO_NET_HDR_GSO_NONE
    print(f"a header that asks for nothing: {plain!r}")


def pump_once(dev: t.TunDevice, table: t.GroTable) -> int:
    """Read once from ``dev`` (one super-packet at most) and write the segments back."""
    original = bytearray(HDR_LEN + 65535)
    bufs: list[bytearray] = [bytearray(HDR_LEN + 1500) for _ in range(t.IDEAL_BATCH_SIZE)]
    sizes: list[int] = [0] * t.IDEAL_BATCH_SIZE
    n = dev.recv_multiple(original, bufs, sizes, HDR_LEN)
    packets = [bufs[i][: HDR_LEN + sizes[i]] for i in range(n)]
    sent: int = dev.send_multiple(table, packets, HDR_LEN)
    return sent


def tun_demo(pump: bool) -> None:
    """Create a TUN device with offload in this network namespace (needs CAP_NET_ADMIN)."""
    with t.TunDevice("tunoffdemo0", offload=True) as dev:
        name: str = dev.name
        fd: int = dev.fileno()
        print(f"created {name} (fd {fd}) with offload")
        if pump:
            print(f"forwarded {pump_once(dev, t.GroTable())} bytes")


if __name__ == "__main__":
    engine_demo()
    if "--tun" in sys.argv[1:]:
        try:
            tun_demo(pump="--pump" in sys.argv[1:])
        except PermissionError as exc:
            print(f"TunDevice needs CAP_NET_ADMIN: {exc}", file=sys.stderr)
            sys.exit(1)
