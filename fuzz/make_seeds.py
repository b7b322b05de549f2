#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (fuzz/seeds/<target>/) from real packets.

The packets come from the test suite's scapy builders (tests/packets.py): TCP and UDP
super-packets over IPv4 and IPv6 as a TUN device with offload hands them over (partial
checksum, virtio header), and in-order flows of the kind handle_gro coalesces. The input
formats are documented in fuzz/src/lib.rs (`gso`, `decode_gro`, `decode`).

    python3 fuzz/make_seeds.py          # needs scapy (pip install '.[test]')

The seeds are committed, so running this again is only needed when the formats change.
They are kept few and small; libFuzzer grows its own corpus from them (fuzz/corpus/,
not committed).
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import packets as P  # noqa: E402


def wireguard_seeds() -> dict[str, bytes]:
    """Programs for `wireguard_device` (see `device` in fuzz/src/wireguard.rs): an op byte
    (bit 0 the side, bits 1-3 the operation) and its arguments."""

    def op(kind: int, side: int, flag: int = 0) -> int:
        return flag | kind << 1 | side

    def real(idx: int) -> bytes:
        return bytes([1, idx])

    def flip(idx: int, bit: int) -> bytes:
        return bytes([2, idx]) + struct.pack("<H", bit)

    def cut(idx: int, at: int) -> bytes:
        return bytes([7, idx]) + struct.pack("<H", at)

    def raw(data: bytes) -> bytes:
        return bytes([0, len(data)]) + data

    def packets(*kinds: int, size: int = 40) -> bytes:
        out = bytes([len(kinds) - 1])
        for k in kinds:
            out += bytes([k, size]) + bytes(range(size))
        return out

    def wait(ms: int, seconds: bool = False) -> bytes:
        return bytes([op(3, 0, 16 if seconds else 0)]) + struct.pack("<H", ms)

    # The pool starts as: initiation, response, the staged packet (transport), ...
    replay_and_mutate = (
        bytes([op(0, 1), 5]) + real(2) + real(2) + flip(2, 200) + cut(2, 20)
        + raw(b"\x04\x00\x00\x00" * 9)
        + bytes([op(0, 1, 16), 2]) + flip(0, 1000) + real(0)
    )
    both_ways = (
        bytes([op(2, 0)]) + packets(0, 0, 1, 3)
        + bytes([op(2, 1)]) + packets(0, 2, 0)
        + bytes([op(5, 1), 3, op(5, 0), 5, op(5, 1), 4])
        + wait(10, seconds=True)
    )
    timers = (
        bytes([op(2, 0)]) + packets(0)
        + wait(15, seconds=True) + wait(130, seconds=True) + wait(200, seconds=True)
        + bytes([op(4, 0), 1, 25]) + wait(26, seconds=True) + wait(600, seconds=True)
        + bytes([op(2, 1)]) + packets(0) + wait(6, seconds=True)
    )
    under_load = (
        bytes([op(4, 1), 4]) + bytes([op(1, 1)]) + real(0)
        + bytes([op(4, 0), 3, 7, 0]) + bytes([op(2, 0)]) + packets(0)
        + wait(5400) + bytes([op(4, 1), 0]) + wait(6, seconds=True)
    )
    rng = random.Random(20)
    return {
        "replay-and-mutate": replay_and_mutate,
        "both-ways": both_ways,
        "timers": timers,
        "under-load": under_load,
        "random": bytes(rng.randrange(256) for _ in range(300)),
    }


def gso_seed(pkt: bytes, hdr: dict, ctl: int = 0) -> bytes:
    return bytes([ctl]) + P.hdr_bytes(hdr) + pkt


def gro_seed(pkts: list[bytes], offset: int = 10, can_udp_gro: bool = True) -> bytes:
    """Raw records (tag 0, 16-bit length, bytes), then one spare byte per packet."""
    ctl = (offset - 10) | (8 if can_udp_gro else 0)
    out = bytearray([ctl])
    for p in pkts:
        out += b"\x00" + struct.pack("!H", len(p)) + p
    # Spare room per packet for the fixed-region target: some exact, some roomy.
    out += bytes(i % 6 for i in range(len(pkts)))
    return bytes(out)


def aead_seeds() -> dict[str, bytes]:
    """Records for `aead_open` (see `open` in fuzz/src/aead.rs): sealed messages (tag 0
    + flags, counter, length, plaintext), raw ones (tag 1), replays (tag 2) and
    mutations (tag 3)."""

    def sealed(counter: int, body: bytes, flags: int = 0, extra: bytes = b"") -> bytes:
        rec = bytes([flags & ~3]) + struct.pack("<HH", counter, len(body)) + body
        if flags >> 4 & 3 == 2:
            rec += bytes([len(extra)]) + extra
        return rec

    ip4, ip6, pad16, pad_more, lie = 0x04, 0x0C, 0x10, 0x20, 0x34
    other_index, other_key = 0x40, 0x80
    body = bytes(range(256)) * 6
    mixed = b"".join(
        [
            sealed(0, body[:60], ip4 | pad16),
            sealed(1, body[:1420], ip4),
            sealed(2, b""),  # a keepalive
            sealed(3, body[:80], ip6 | pad16),
            sealed(4, body[:30], ip4 | pad_more, b"\x00" * 5),
            sealed(5, body[:10]),  # not an IP packet
            sealed(6, body[:40], lie),  # IPv4 length one too many
            sealed(7, body[:40], ip4 | other_index),
            sealed(8, body[:40], ip4 | other_key),
            bytes([1, 20]) + b"\x01\x00\x00\x00" + body[:16],  # a handshake-like message
            bytes([2, 0]),  # replay of message 0
            bytes([3, 1, 0]) + struct.pack("<H", 200),  # a bit flipped in message 1
            bytes([3, 3, 1]) + struct.pack("<H", 31),  # message 3 cut to 31 bytes
        ]
    )
    window = b"".join(
        sealed(c, body[:20], ip4) for c in (9000, 0, 872, 871, 9000, 8999, 20000)
    )
    near = b"".join(sealed(c, body[:20], ip4) for c in (59998, 59999, 60000, 60001, 65535))
    return {
        "mixed": bytes([0x80 | 16]) + mixed,
        "mixed-two-calls": bytes([0x40 | 3]) + mixed,
        "window": bytes([0x80]) + window,
        "near-limit": bytes([0x80 | 0x20]) + near,
    }


def main() -> None:
    rng = random.Random(6)
    pl = bytes(range(256)) * 12

    gso = {
        "tcp4-3seg": P.super_tcp(False, pl[:2800], 1000, flags=P.ACK | P.PSH | P.FIN),
        "tcp6-3seg": P.super_tcp(True, pl[:2500], 1000),
        "tcp4-options-ecn": P.super_tcp(
            False,
            pl[:1500],
            600,
            ecn=True,
            flags=P.ACK | P.CWR,
            options=[("MSS", 1400), ("NOP", None), ("NOP", None), ("SAck", (1, 2))],
        ),
        "udp4-4seg": P.super_udp(False, pl[:1700], 500),
        "udp6-3seg": P.super_udp(True, pl[:1100], 400),
    }
    seeds = {"gso_split": {}, "handle_gro_vec": {}, "handle_gro_fixed": {}, "virtio_decode": {}}
    for name, (pkt, hdr) in gso.items():
        seeds["gso_split"][name] = gso_seed(pkt, hdr)
    tcp = P.tcp_pkt(False, pl[:300])
    seeds["gso_split"]["none-needs-csum"] = gso_seed(
        P.partial_csum(tcp), P.none_hdr(tcp, needs_csum=True)
    )
    seeds["gso_split"]["v6-dest-opts"] = gso_seed(
        *(lambda p: (p, {**P.gso_hdr(p, 700), "csum_start": 48}))(
            P.partial_csum(P.with_dest_opts(P.udp_pkt(True, pl[:2000])), l4_off=48, proto=17)
        )
    )

    def flow(v6: bool, udp: bool, n: int, size: int, **kw) -> list[bytes]:
        out, seq = [], 5000
        for _ in range(n):
            data = P.rand_bytes(rng, size)
            if udp:
                out.append(P.udp_pkt(v6, data, **kw))
            else:
                out.append(P.tcp_pkt(v6, data, seq=seq, **kw))
                seq += size
        return out

    gro = {
        "tcp4-flow": flow(False, False, 6, 200),
        "tcp6-flow-psh": flow(True, False, 4, 150)
        + [P.tcp_pkt(True, b"end", seq=5600, flags=P.ACK | P.PSH)],
        "udp4-udp6": flow(False, True, 4, 120) + flow(True, True, 3, 100),
        "mixed": P.make_flows(rng)[0][:16],
    }
    gro["mixed"] = [p for p in gro["mixed"] if len(p) <= 1500][:12]
    for name, pkts in gro.items():
        seeds["handle_gro_vec"][name] = gro_seed(pkts, offset=10 + len(name) % 4)
        seeds["handle_gro_fixed"][name] = gro_seed(pkts, offset=12)

    for name, (_, hdr) in list(gso.items())[:3]:
        seeds["virtio_decode"][name] = P.hdr_bytes(hdr) + b"\x00\x01"
    seeds["virtio_decode"]["short"] = b"\x01\x02\x03"
    seeds["aead_open"] = aead_seeds()
    seeds["wireguard_device"] = wireguard_seeds()

    for target, files in seeds.items():
        d = HERE / "seeds" / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for name, data in files.items():
            (d / name).write_bytes(data)
        total = sum(map(len, files.values()))
        print(f"{target}: {len(files)} seeds, {total} bytes")


if __name__ == "__main__":
    main()
