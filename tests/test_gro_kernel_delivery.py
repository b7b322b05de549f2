"""GRO output, written into a TUN device with offload, reaches real sockets intact.

test_kernel_oracle.py checks that the kernel *segments* handle_gro's output back into the
original packets (forwarded out of a second TUN device). This file checks the other
consumer of GRO output: local delivery. In a namespace created here, segments of a TCP
connection (handshake done by hand through the device) or of a UDP flow are coalesced by
``handle_gro``, written into the device, and a real socket in the namespace must receive
the original payload bytes, in order, with nothing lost or duplicated. Each test also
checks that coalescing really happened (fewer writes than segments). Needs root.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time

import packets as P
import pytest
from _netns import Netns, can_use_netns, drain

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

if _reason is None:
    import tunoffload as t

HDR = 10
OFFSET = 12
MSS = 1400
DEADLINE = 30.0  # a hang guard for socket reads, not a measurement
RESENDS = 40  # a link that has just come up may drop the first packets: resend up to this
RESEND_WAIT = 0.5  # seconds to wait for an answer before resending
ADDRS = {
    False: ("10.66.0.1", "10.66.0.2", "10.66.0.1/24"),  # (socket, peer via TUN, device)
    True: ("fd66::1", "fd66::2", "fd66::1/64"),
}


@pytest.fixture(params=[False, True], ids=["v4", "v6"])
def setup(request):
    v6 = request.param
    local, peer, cidr = ADDRS[v6]
    with Netns("tunoff-gkd") as ns:
        with ns.entered():
            dev = t.TunDevice("gkd0", offload=True, nonblocking=True, mtu=1500)
            dev.add_address(cidr, nodad=True)
            dev.up()
        try:
            yield ns, dev, v6, local, peer
        finally:
            dev.close()


def write_coalesced(dev, pkts: list[bytes]) -> int:
    """handle_gro over `pkts`, each result written to the device; returns the writes."""
    bufs = [bytearray(OFFSET) + p for p in pkts]
    idx = t.handle_gro(bufs, OFFSET, t.GroTable(), dev.udp_gso)
    for i in idx:
        frame = bytes(bufs[i][OFFSET - HDR :])
        assert dev.send(frame) == len(frame)
    return len(idx)


def read_packet(dev, want, deadline: float) -> bytes | None:
    """The next IP packet read from the device for which want(pkt) holds (None once
    the deadline has passed)."""
    buf = bytearray(HDR + 65535)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([dev.fileno()], [], [], left)
        if not r:
            continue
        try:
            n = dev.recv(buf)
        except BlockingIOError:
            continue
        pkt = bytes(buf[HDR:n])
        if pkt and want(pkt):
            return pkt


def test_udp_datagrams_arrive_in_order(setup):
    ns, dev, v6, local, peer = setup
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    with ns.entered():
        rx = socket.socket(fam, socket.SOCK_DGRAM)
    with rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind((local, 0))
        port = rx.getsockname()[1]
        rng = random.Random(66)
        payloads = [rng.randbytes(MSS) for _ in range(60)] + [rng.randbytes(333)]
        pkts = [
            P.udp_pkt(
                v6, pl, sport=6000, dport=port, src=peer, dst=local, **({} if v6 else {"ip_id": i})
            )
            for i, pl in enumerate(payloads)
        ]
        # A probe first, resent until it arrives: a link that has just come up may drop it.
        rx.settimeout(RESEND_WAIT)
        probe = P.udp_pkt(v6, b"probe", sport=6001, dport=port, src=peer, dst=local)
        for _ in range(RESENDS):
            dev.send(bytes(t.VirtioNetHdr()) + probe)
            try:
                if rx.recv(100) == b"probe":
                    break
            except TimeoutError:  # socket.timeout is an alias of it from 3.10 on
                pass
        else:
            pytest.fail(f"the probe never arrived ({RESENDS} sends)")
        writes = write_coalesced(dev, pkts)
        assert writes < len(pkts) // 10, f"{writes} writes for {len(pkts)} datagrams"
        rx.settimeout(DEADLINE)
        got = [rx.recv(65535) for _ in payloads]
        assert got == payloads, "datagrams lost, changed or reordered"
        rx.setblocking(False)
        with pytest.raises(BlockingIOError):
            rx.recv(65535)  # nothing extra (no duplicate)


def test_tcp_stream_arrives_in_order(setup):
    ns, dev, v6, local, peer = setup
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    with ns.entered():
        srv = socket.socket(fam, socket.SOCK_STREAM)
    with srv:
        srv.bind((local, 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        sport = 40000

        def tcp(payload=b"", **kw):
            return P.tcp_pkt(v6, payload, src=peer, dst=local, sport=sport, dport=port, **kw)

        def is_ours(flags):
            def want(pkt):
                info = P.l3_info(pkt)
                if info.proto != 6:
                    return False
                l4 = info.l4_off
                return (
                    pkt[l4 + 2 : l4 + 4] == struct.pack("!H", sport)
                    and pkt[l4 + 13] & flags == flags
                )

            return want

        # The handshake, by hand through the device.
        isn = 0x10000000
        drain(dev)
        synack = None
        for _ in range(RESENDS):
            # Resent as TCP would: a link that has just come up may drop the first one.
            dev.send(bytes(t.VirtioNetHdr()) + tcp(seq=isn, ack=0, flags=P.SYN, window=65535))
            synack = read_packet(dev, is_ours(P.SYN | P.ACK), time.monotonic() + RESEND_WAIT)
            if synack is not None:
                break
        assert synack is not None, f"no SYN-ACK came out of the device ({RESENDS} SYNs sent)"
        l4 = P.l3_info(synack).l4_off
        server_isn = struct.unpack_from("!I", synack, l4 + 4)[0]
        ack = (server_isn + 1) & 0xFFFFFFFF
        dev.send(bytes(t.VirtioNetHdr()) + tcp(seq=isn + 1, ack=ack, flags=P.ACK, window=65535))
        srv.settimeout(DEADLINE)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(DEADLINE)
            data = random.Random(6).randbytes(300_000)
            got = bytearray()
            seq = isn + 1
            sent = segments = writes = 0
            round_bytes = 20 * MSS  # well inside the receive window
            while sent < len(data):
                chunk = data[sent : sent + round_bytes]
                pkts = []
                for k in range(0, len(chunk), MSS):
                    piece = chunk[k : k + MSS]
                    last = k + MSS >= len(chunk)
                    flags = P.ACK | (P.PSH if last else 0)
                    pkts.append(tcp(piece, seq=seq, ack=ack, flags=flags, window=65535))
                    seq = (seq + len(piece)) & 0xFFFFFFFF
                writes += write_coalesced(dev, pkts)
                segments += len(pkts)
                sent += len(chunk)
                while len(got) < sent:
                    part = conn.recv(1 << 20)
                    assert part, "the connection closed"
                    got += part
                drain(dev)  # the server's ACKs
            assert writes < segments // 5, f"{writes} writes for {segments} segments"
            assert bytes(got) == data, "the stream arrived changed, reordered or duplicated"
            conn.setblocking(False)
            with pytest.raises(BlockingIOError):
                conn.recv(1)  # nothing beyond what was sent
