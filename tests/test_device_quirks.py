"""TunDevice's offload switches and the coalesced-write fallback, end to end: two network
namespaces of the test's own joined by a forwarder on the public API
(``test_device_forward``'s, with offload), the kernel's refusal of a coalesced write
forced mid-stream by the testing-only fault hook (this kernel accepts what older ones
refused, the 6.1.103 backport among them). The Rust counterparts are in
``src/device/offload_tests.rs``. Needs root; skipped otherwise.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import packets as P
import pytest
from _netns import Netns, can_use_netns
from test_device_forward import B4, MTU, Forwarder, forwarding

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

if _reason is None:
    import tunoffload as t
    from tunoffload.bench.traffic import tcp_exchange

SWITCHES = ("tcp_segmentation", "udp_segmentation", "tcp_coalescing", "udp_coalescing")
UDP_SEGMENT = 103  # socket option (SOL_UDP), UDP GSO


@dataclass
class Link:
    """Namespace A with its device ``qa`` (``ta``, 198.18.1.1/24), B with ``qb`` (``tb``,
    198.18.2.1/24), each routing the other's prefix into its device, and the forwarder
    between them (running; ``fwd.hook`` runs after each batch written)."""

    na: Netns
    nb: Netns
    qa: t.TunDevice
    qb: t.TunDevice
    fwd: Forwarder


@pytest.fixture
def link() -> Iterator[Link]:
    with forwarding(True) as (na, nb, qa, qb, fwd):
        yield Link(na, nb, qa, qb, fwd)


def switches(dev: t.TunDevice) -> dict[str, bool]:
    return {k: getattr(dev, k) for k in SWITCHES}


def defaults(dev: t.TunDevice) -> dict[str, bool]:
    uso = dev.udp_gso
    return dict(zip(SWITCHES, (True, uso, True, uso), strict=True))


# ----- the fallback, mid-stream ----------------------------------------------------------------


def test_tcp_coalescing_refused_mid_stream_loses_nothing(link: Link) -> None:
    """B's kernel refuses a coalesced write (EINVAL) once 2,000 packets went A -> B: the
    super-packet is written again as its segments, TCP coalescing turns off on B and is
    counted, no exception reaches the forwarder, and TCP keeps flowing both ways with a
    matching SHA-256, into B without coalescing from then on."""
    qa, qb = link.qa, link.qb
    armed: dict[str, int] = {}

    def hook(dst: t.TunDevice, n: int) -> None:
        if dst is qb and "at" not in armed:
            armed["packets"] = armed.get("packets", 0) + n
            if armed["packets"] >= 2000:
                st = qb.stats
                armed["at"], armed["coalesced"] = st["tx_packets"], st["tx_packets"] - st["writes"]
                qb._inject_write_faults(errno.EINVAL, 3)

    link.fwd.hook = hook
    tcp_exchange(link.na, link.nb, B4, 16 << 20, seed=21, check=True)
    assert "at" in armed and armed["coalesced"] > 0, "B was coalescing before the refusal"
    sb, sa = qb.stats, qa.stats
    assert sb["tcp_coalescing_fallbacks"] == 1, sb
    assert sb["udp_coalescing_fallbacks"] == 0
    assert switches(qb) == {**defaults(qb), "tcp_coalescing": False}
    assert {k: sb[k] for k in SWITCHES} == switches(qb), "the switches in stats"
    assert switches(qa) == defaults(qa) and sa["tcp_coalescing_fallbacks"] == 0, "A untouched"
    # It keeps carrying TCP, and nothing is coalesced into B any more (the two faults left
    # armed for coalesced writes never fire: no second fallback).
    before = qb.stats
    tcp_exchange(link.na, link.nb, B4, 4 << 20, seed=22, check=True)
    after = qb.stats
    assert after["writes"] - before["writes"] == after["tx_packets"] - before["tx_packets"]
    assert after["tcp_coalescing_fallbacks"] == 1
    assert qa.stats["max_write"] > MTU + t.VIRTIO_NET_HDR_LEN, "A still gets super-packets"


def test_udp_coalescing_refused_loses_nothing(link: Link) -> None:
    """The same for UDP: a UDP_SEGMENT sender in A, its super-packets split by the
    forwarder and coalesced again into B until B's kernel refuses one."""
    qa, qb = link.qa, link.qb
    if not qb.udp_coalescing:
        pytest.skip("no UDP segmentation offload for TUN devices here (Linux 6.2+)")
    with link.nb.entered():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        rx.bind((B4, 5300))
    with link.na.entered():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect((B4, 5300))
    rx.settimeout(30)  # nothing for this long: a datagram was lost (a hang guard, too)
    gso = 1200
    tx.setsockopt(socket.SOL_UDP, UDP_SEGMENT, gso)
    rnd = random.Random(21)
    try:
        for k in range(30):
            if k == 10:
                qb._inject_write_faults(errno.EINVAL, 1)
            payload = rnd.randbytes(gso * 20 + k)
            tx.send(payload)
            want = [payload[i : i + gso] for i in range(0, len(payload), gso)]
            assert [rx.recv(70000) for _ in want] == want, f"send {k}"
        rx.settimeout(0)
        with pytest.raises(BlockingIOError):
            rx.recv(10)  # nothing twice
    finally:
        tx.close()
        rx.close()
    sb = qb.stats
    assert sb["udp_coalescing_fallbacks"] == 1 and sb["tcp_coalescing_fallbacks"] == 0
    assert switches(qb) == {**defaults(qb), "udp_coalescing": False}
    assert qa.stats["max_read"] > MTU + t.VIRTIO_NET_HDR_LEN, "UDP super-packets came in"


def test_a_refused_coalesced_write_is_written_as_its_segments() -> None:
    """One send_multiple, no forwarder: the refused super-packet's segments are written
    and counted in the return value (each with its virtio header); a segment the kernel
    refuses in turn is an error as any refused packet is."""
    with Netns("tunoff-qc") as ns, ns.entered():
        dev = t.TunDevice("qc", offload=True, up=True)
        off = t.VIRTIO_NET_HDR_LEN
        payload = bytes(range(200)) * 5
        segs = [P.tcp_pkt(False, payload, seq=1000 + i * len(payload)) for i in range(8)]
        gro = t.GroTable()
        written = sum(off + len(s) for s in segs)
        dev._inject_write_faults(errno.EINVAL, 1)
        assert dev.send_multiple(gro, [bytearray(off) + s for s in segs], off) == written
        st = dev.stats
        assert st["tcp_coalescing_fallbacks"] == 1 and not dev.tcp_coalescing
        assert st["writes"] == 8 and st["tx_packets"] == 8
        # Coalescing off: the same batch goes as 8 writes, no fault-free fallback needed.
        assert dev.send_multiple(gro, [bytearray(off) + s for s in segs], off) == written
        assert dev.stats["writes"] == 16
        dev.tcp_coalescing = True
        # A coalesced write refused, then its first segment refused too (any write):
        # that one is reported, the others are written.
        dev._inject_write_faults(errno.EINVAL, 2, coalesced_only=False)
        with pytest.raises(OSError) as ei:
            dev.send_multiple(gro, [bytearray(off) + s for s in segs], off)
        assert ei.value.errno == errno.EINVAL
        assert dev.stats["writes"] == 16 + 7
        assert dev.stats["tcp_coalescing_fallbacks"] == 2
        with pytest.raises(t.InputError) as ie:
            dev._inject_write_faults(0, 1)
        assert ie.value.kind == "out_of_range"
        dev.close()


# ----- the switches ---------------------------------------------------------------------------


def test_switches_on_a_live_device(link: Link) -> None:
    """Defaults, each switch on its own, shown in stats (also after close), shared by the
    device's queues; refused without offload."""
    qa = link.qa
    assert switches(qa) == defaults(qa) and qa.tcp_segmentation and qa.tcp_coalescing
    for name in SWITCHES:
        if name.startswith("udp") and not qa.udp_gso:
            continue
        setattr(qa, name, False)
        assert switches(qa) == {**defaults(qa), name: False}
        assert {k: qa.stats[k] for k in SWITCHES} == switches(qa)
        assert all(isinstance(qa.stats[k], bool) for k in SWITCHES)
        setattr(qa, name, True)
    assert switches(qa) == defaults(qa)
    with link.na.entered():
        mq = t.TunDevice("qm", offload=True, multi_queue=True)
        mq2 = mq.clone_queue()
        mq.tcp_coalescing = False
        assert not mq2.tcp_coalescing and not mq2.stats["tcp_coalescing"], "one device"
        mq.udp_segmentation = False
        mq3 = mq.clone_queue()  # opened later: gets the switches, not the defaults
        assert switches(mq3) == switches(mq)
        for d in (mq3, mq2, mq):
            d.close()
        assert mq.stats["tcp_coalescing"] is False, "readable after close"
        plain = t.TunDevice("qp")
    assert switches(plain) == dict.fromkeys(SWITCHES, False)
    for name in SWITCHES:
        with pytest.raises(t.InputError) as ei:
            setattr(plain, name, True)
        assert ei.value.kind == "incompatible_options"
    plain.close()
    if not qa.udp_gso:
        with pytest.raises(OSError) as oe:
            qa.udp_segmentation = True
        assert oe.value.errno == errno.EINVAL


def test_tcp_segmentation_and_coalescing_off(link: Link) -> None:
    """With TCP segmentation off on A, the kernel hands A no super-packet; with TCP
    coalescing off on B, every packet into B is a write of its own; the stream arrives
    whole. Turned on again, super-packets come back."""
    qa, qb = link.qa, link.qb
    qa.tcp_segmentation = False
    qb.tcp_coalescing = False
    tcp_exchange(link.na, link.nb, B4, 4 << 20, seed=23, check=True)
    assert qa.stats["max_read"] <= MTU + t.VIRTIO_NET_HDR_LEN
    assert qb.stats["writes"] == qb.stats["tx_packets"]
    qa.tcp_segmentation = True
    qb.tcp_coalescing = True
    tcp_exchange(link.na, link.nb, B4, 4 << 20, seed=24, check=True)
    assert qa.stats["max_read"] > MTU + t.VIRTIO_NET_HDR_LEN
    assert qb.stats["writes"] < qb.stats["tx_packets"]


def test_udp_segmentation_off(link: Link) -> None:
    qa = link.qa
    if not qa.udp_gso:
        pytest.skip("no UDP segmentation offload for TUN devices here (Linux 6.2+)")
    qa.udp_segmentation = False
    with link.nb.entered():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((B4, 5301))
    with link.na.entered():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect((B4, 5301))
    rx.settimeout(30)
    tx.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1000)
    try:
        payload = random.Random(25).randbytes(1000 * 30)
        tx.send(payload)
        assert [rx.recv(2000) for _ in range(30)] == [
            payload[i : i + 1000] for i in range(0, 30000, 1000)
        ]
    finally:
        tx.close()
        rx.close()
    assert qa.stats["max_read"] <= MTU + t.VIRTIO_NET_HDR_LEN, "segmented before the device"
