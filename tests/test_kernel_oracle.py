"""The kernel as the oracle for gso_split (and for handle_gro's output).

In a network namespace created here, tunA (IFF_VNET_HDR, offload on) receives
``virtio_net_hdr + super-packet`` writes; the kernel forwards them to tunB (no offload), which
forces the kernel's own software segmentation / checksum completion.  What tunB yields is
compared byte for byte with what ``gso_split`` makes of the same input, except the TTL/hop-limit
byte (forwarding decrements it) and the IPv4 header checksum (which covers the TTL).

Each case is followed by a sentinel packet on the same path, so "everything read before the
sentinel" is exactly the kernel's output for that case (no timing guesses).
"""

from __future__ import annotations

import os
import random
import select
import time

import _netns
import packets as P
import pytest
import test_gso
from _kinds import refused
from packets import normalize_forwarded as normalize

REASON = _netns.can_use_netns()

OFFLOAD = (
    _netns.TUN_F_CSUM
    | _netns.TUN_F_TSO4
    | _netns.TUN_F_TSO6
    | _netns.TUN_F_USO4
    | _netns.TUN_F_USO6
)
MTU = 9000
SENTINEL_PORT = 9
SENTINEL_MAGIC = b"tunoffload-oracle-sentinel:"
# A hang guard, not a measurement: the sentinel comes within milliseconds; if it never
# does, the case fails with a clear message instead of hanging the suite.
CASE_TIMEOUT = 30.0

TEST_ADDRS = {
    (bytes([10, 11, 0, 2]), bytes([10, 12, 0, 2])),
    (bytes.fromhex("fd11" + "00" * 13 + "02"), bytes.fromhex("fd12" + "00" * 13 + "02")),
}

# Counts shared by all tests in this module; printed by conftest's terminal summary.
STATS = {
    "cases": 0,
    "identical": 0,
    "skipped_by_kernel": 0,
    "refused_by_both": 0,
    "model_agrees": 0,
}


class KernelOracle:
    """tunA (vnet hdr, offload) -> IP forwarding -> tunB (plain) inside a private namespace."""

    def __init__(self) -> None:
        self.ns = _netns.Netns(prefix="tunoff-oracle")
        self.fd_a = self.fd_b = -1
        self.counter = 0
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        ns = self.ns
        with ns.entered():
            self.fd_a = _netns.raw_tun("tunA", vnet_hdr=True, offload=OFFLOAD)
            self.fd_b = _netns.raw_tun("tunB", vnet_hdr=False)
        os.set_blocking(self.fd_b, False)
        os.set_blocking(self.fd_a, False)
        for dev, a4, a6 in (
            ("tunA", "10.11.0.1/24", "fd11::1/64"),
            ("tunB", "10.12.0.1/24", "fd12::1/64"),
        ):
            ns.run("ip", "link", "set", dev, "mtu", str(MTU))
            ns.run("ip", "addr", "add", a4, "dev", dev)
            ns.run("ip", "-6", "addr", "add", a6, "dev", dev, "nodad")
            ns.run("ip", "link", "set", dev, "up")
        ns.sysctl("net.ipv4.ip_forward", "1")
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        for key in ("all", "default", "tunA", "tunB"):
            ns.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")

    def close(self) -> None:
        for fd in (self.fd_a, self.fd_b):
            if fd >= 0:
                os.close(fd)
        self.fd_a = self.fd_b = -1
        self.ns.close()

    def _drain_a(self) -> None:
        # tunA receives the namespace's own traffic (MLD, RS, ICMP errors); keep it empty.
        for _ in range(64):
            try:
                os.read(self.fd_a, 70000)
            except BlockingIOError:
                return

    def exchange(self, frames: list[bytes]) -> tuple[list[bytes], int]:
        """Write `frames` (virtio header + packet each) to tunA; return what tunB emits for
        the test addresses before the sentinel, and how many writes the kernel refused."""
        self.counter += 1
        tag = SENTINEL_MAGIC + str(self.counter).encode()
        sentinel = P.udp_pkt(False, tag, sport=SENTINEL_PORT, dport=SENTINEL_PORT)
        refused = 0
        for frame in frames:
            try:
                os.write(self.fd_a, frame)
            except OSError:
                refused += 1
        os.write(self.fd_a, bytes(P.VIRTIO_NET_HDR_LEN) + sentinel)
        got: list[bytes] = []
        deadline = time.monotonic() + CASE_TIMEOUT
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"sentinel {self.counter} never arrived on tunB")
            r, _, _ = select.select([self.fd_b], [], [], left)
            if not r:
                continue
            try:
                pkt = os.read(self.fd_b, 70000)
            except BlockingIOError:
                continue
            if pkt.endswith(tag) and pkt[0] >> 4 == 4:
                break
            if pkt and pkt[0] >> 4 in (4, 6):
                o = P.l3_info(pkt)
                if (o.src, o.dst) in TEST_ADDRS:
                    got.append(pkt)
        self._drain_a()
        return got, refused

    def segment(self, packet: bytes, hdr: dict) -> list[bytes] | None:
        """The kernel's output for `packet` with virtio header `hdr`; None if it dropped it."""
        got, refused = self.exchange([P.hdr_bytes(hdr) + bytes(packet)])
        if refused or not got:
            return None
        return got


def describe_diff(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"lengths {len(a)} != {len(b)}"
    diffs = [i for i in range(len(a)) if a[i] != b[i]]
    return (
        "differ at offsets "
        + ", ".join(f"{i}: {a[i]:#04x}!={b[i]:#04x}" for i in diffs[:8])
        + (" ..." if len(diffs) > 8 else "")
    )


def engine_split(packet: bytes, hdr: dict) -> list[bytes]:
    import tunoffload as t

    h = t.VirtioNetHdr(**hdr)
    n_max = 200
    size = min(len(packet), 65535)
    out = [bytearray(size) for _ in range(n_max)]
    sizes = [0] * n_max
    n = t.gso_split(bytes(packet), h, out, sizes)
    return [bytes(out[i][: sizes[i]]) for i in range(n)]


@pytest.fixture(scope="module")
def oracle():
    if REASON:
        pytest.skip(REASON)
    o = KernelOracle()
    yield o
    o.close()
    P.REPORT_LINES.append(
        f"kernel-oracle: {STATS['cases']} cases, {STATS['identical']} identical, "
        f"{STATS['skipped_by_kernel']} dropped by the kernel "
        f"({STATS['refused_by_both']} of them refused by the engine too), "
        f"reference model agreed with the kernel on {STATS['model_agrees']}"
    )
    P.REPORT_LINES.append(
        f"kernel-oracle GRO: {GRO_STATS['batches']} batches, {GRO_STATS['packets']} packets "
        f"coalesced into {GRO_STATS['written']} writes, segmented back by the kernel"
    )


kernel_drops = P.kernel_drops

# The engine's refusals of packets the kernel drops: the kinds of test_gso.py's malformed
# inputs that the kernel drops too, and the well-formed packet it is known to drop.
# (Not an output's kind, such as out_buf_too_small: that would be the engine refusing for
# its own reasons.)
KERNEL_DROP_KINDS = frozenset({c.kind for c in test_gso.BAD if c.kernel} | {"kernel_would_drop"})


def run_case(oracle: KernelOracle, case: P.Case) -> tuple[str, str]:
    """('identical' | 'dropped' | 'mismatch' | 'raised', message)."""
    kernel = oracle.segment(case.packet, case.hdr)
    STATS["cases"] += 1
    if kernel is None:
        STATS["skipped_by_kernel"] += 1
        # What the kernel drops, the engine refuses: no segments, a ValueError of a kind
        # that says why (kernel_would_drop for the one well-formed packet it drops).
        want = {"kernel_would_drop"} if kernel_drops(case) else KERNEL_DROP_KINDS
        try:
            n = len(engine_split(case.packet, case.hdr))
        except ValueError as e:
            kind = getattr(e, "kind", None)
            if kind not in want:
                return (
                    "mismatch",
                    f"[the kernel dropped it, the engine raised {kind}: {e}] {case.desc}",
                )
            STATS["refused_by_both"] += 1
            return "dropped", case.desc
        return "mismatch", f"[the kernel dropped it, the engine made {n} segments] {case.desc}"
    kn = [normalize(k) for k in kernel]
    model = [normalize(m) for m in P.kernel_gso(case.packet, case.hdr)]
    if model == kn:
        STATS["model_agrees"] += 1
    try:
        mine = [normalize(m) for m in engine_split(case.packet, case.hdr)]
    except Exception as e:  # any exception on a case the kernel accepts is a finding
        return "raised", f"[engine raised {type(e).__name__}: {e}] {case.desc}"
    if mine == kn:
        STATS["identical"] += 1
        return "identical", case.desc
    msg = f"[mismatch] {case.desc}: engine {len(mine)} segments, kernel {len(kn)}"
    for i, (a, b) in enumerate(zip(mine, kn, strict=False)):
        if a != b:
            msg += f"; first differing segment {i}: {describe_diff(a, b)}"
            break
    if model != kn:
        msg += " (the tests' reference model disagrees with the kernel too)"
    return "mismatch", msg


N_RANDOM = 1000


def test_kernel_oracle_random(oracle, seed):
    rng = random.Random(seed ^ 0x5EED)
    failures: list[str] = []
    dropped: list[P.Case] = []
    ran = 0
    for _ in range(N_RANDOM):
        case = P.random_case(rng, mtu=MTU)
        status, msg = run_case(oracle, case)
        ran += 1
        if status == "dropped":
            dropped.append(case)
        elif status != "identical":
            failures.append(msg)
    assert not failures, f"{len(failures)} of {ran} cases differ from the kernel:\n" + "\n".join(
        failures[:20]
    )
    unexpected = [c.desc for c in dropped if not kernel_drops(c)]
    assert not unexpected, "the kernel dropped well-formed cases:\n" + "\n".join(unexpected[:20])
    assert len(dropped) <= max(3, ran // 40), (
        f"too many cases skipped by the kernel: {len(dropped)}"
    )
    assert ran == N_RANDOM


def _crafted() -> list[P.Case]:
    rnd = random.Random(99)

    def pl(n):
        return P.rand_bytes(rnd, n)

    ts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    cases: list[P.Case] = []

    def add(desc, pkt_hdr, v6):
        cases.append(P.Case(desc, pkt_hdr[0], pkt_hdr[1], v6))

    add("v4 tcp 45x1448 ts", P.super_tcp(False, pl(45 * 1448), 1448, options=ts), False)
    add("v6 tcp 45x1428 ts", P.super_tcp(True, pl(45 * 1428), 1428, options=ts), True)
    add("v4 tcp 65535 total", P.super_tcp(False, pl(65535 - 52), 1448, options=ts), False)
    add("v6 tcp 65535 total", P.super_tcp(True, pl(65535 - 72), 8000, options=ts), True)
    add("v4 udp 64 segs", P.super_udp(False, pl(64 * 1000), 1000), False)
    add("v6 udp 128 segs (UDP_MAX_SEGMENTS)", P.super_udp(True, pl(128 * 100), 100), True)
    add("v4 tcp id wrap", P.super_tcp(False, pl(5000), 1000, ip_id=0xFFFE), False)
    add("v4 tcp id 0 no DF", P.super_tcp(False, pl(3000), 1000, ip_id=0, df=False), False)
    add("v4 udp id 0xffff", P.super_udp(False, pl(3000), 1000, ip_id=0xFFFF, df=False), False)
    add("v6 tcp seq wrap", P.super_tcp(True, pl(3000), 1000, seq=0xFFFFFC18), True)
    flags = P.FIN | P.PSH | P.ACK | P.CWR | P.URG | P.ECE
    add("v4 tcp all flags", P.super_tcp(False, pl(3500), 1000, flags=flags, urgptr=9), False)
    add("v6 tcp all flags", P.super_tcp(True, pl(3500), 1000, flags=flags, urgptr=9), True)
    add("v4 tcp GSO_ECN", P.super_tcp(False, pl(3500), 1000, ecn=True, flags=P.ACK | P.CWR), False)
    add("v6 tcp GSO_ECN", P.super_tcp(True, pl(3500), 1000, ecn=True, flags=P.ACK | P.CWR), True)
    add("v4 tcp gso_size 1", P.super_tcp(False, pl(64), 1), False)
    add("v6 udp gso_size 1", P.super_udp(True, pl(64), 1), True)
    for v6 in (False, True):
        for n in (999, 1000, 1001):
            add(
                f"{'v6' if v6 else 'v4'} tcp payload {n} gso 1000", P.super_tcp(v6, pl(n), 1000), v6
            )
            add(
                f"{'v6' if v6 else 'v4'} udp payload {n} gso 1000", P.super_udp(v6, pl(n), 1000), v6
            )
        add(f"{'v6' if v6 else 'v4'} tcp empty payload as GSO", P.super_tcp(v6, b"", 1000), v6)
    # zero checksums
    for v6 in (False, True):
        tag = "v6" if v6 else "v4"
        for seg in (0, 2, 4):
            p, h = P.super_udp(v6, pl(4500), 1000)
            cases.append(
                P.Case(f"{tag} udp zero-csum seg {seg}", P.craft_zero_csum(p, h, seg), h, v6)
            )
            p, h = P.super_tcp(v6, pl(4500), 1000, options=ts)
            cases.append(
                P.Case(f"{tag} tcp zero-csum seg {seg}", P.craft_zero_csum(p, h, seg), h, v6)
            )
        p, h = P.super_tcp(v6, pl(600), 1000)
        cases.append(P.Case(f"{tag} tcp single zero-csum", P.craft_zero_csum(p, h, 0), h, v6))
        for build in (P.tcp_pkt, P.udp_pkt):
            p = P.partial_csum(build(v6, pl(333)))
            h = P.none_hdr(p, needs_csum=True)
            name = build.__name__[:3]
            cases.append(
                P.Case(f"{tag} {name} GSO_NONE zero-csum", P.craft_zero_csum(p, h, 0), h, v6)
            )
            cases.append(P.Case(f"{tag} {name} GSO_NONE needs_csum", p, h, v6))
            full = build(v6, pl(444))
            cases.append(P.Case(f"{tag} {name} GSO_NONE plain", full, P.none_hdr(), v6))
            dv = dict(P.none_hdr(), flags=P.F_DATA_VALID)
            cases.append(P.Case(f"{tag} {name} GSO_NONE DATA_VALID", full, dv, v6))
    from scapy.layers.inet import ICMP, IP, IPOption_NOP

    icmp = bytearray(bytes(IP(src=P.SRC4, dst=P.DST4) / ICMP(id=3, seq=4) / pl(99)))
    icmp[22:24] = b"\0\0"
    h = dict(P.none_hdr(), flags=P.F_NEEDS_CSUM, csum_start=20, csum_offset=2)
    cases.append(P.Case("v4 icmp GSO_NONE needs_csum offset 2", bytes(icmp), h, False))
    # hdr_len is not trusted
    for v6 in (False, True):
        for build in (P.super_tcp, P.super_udp):
            p, h = build(v6, pl(3500), 1000)
            for bogus in (0, h["hdr_len"] + 1000, len(p)):
                cases.append(
                    P.Case(
                        f"{'v6' if v6 else 'v4'} {build.__name__} hdr_len={bogus}",
                        p,
                        dict(h, hdr_len=bogus),
                        v6,
                    )
                )
    add(
        "v4 tcp ip options",
        P.super_tcp(False, pl(3000), 1000, ip_options=[IPOption_NOP()] * 8),
        False,
    )
    add(
        "v4 udp ip options",
        P.super_udp(False, pl(3000), 1000, ip_options=[IPOption_NOP()] * 4),
        False,
    )
    # IPv6 with a Destination Options extension header (csum_start 48)
    for build, proto, coff, gt, th in (
        (P.tcp_pkt, 6, 16, P.GSO_TCPV6, 20),
        (P.udp_pkt, 17, 6, P.GSO_UDP_L4, 8),
    ):
        p = P.partial_csum(P.with_dest_opts(build(True, pl(3000))), l4_off=48, proto=proto)
        h = {
            "flags": P.F_NEEDS_CSUM,
            "gso_type": gt,
            "hdr_len": 48 + th,
            "gso_size": 1000,
            "csum_start": 48,
            "csum_offset": coff,
        }
        cases.append(P.Case(f"v6 {build.__name__} dest-opts ext header", p, h, True))
        hbh = P.with_dest_opts(build(True, pl(3000)), hop_by_hop=True)
        p = P.partial_csum(hbh, l4_off=48, proto=proto)
        cases.append(P.Case(f"v6 {build.__name__} hop-by-hop ext header", p, h, True))
    # TCP GSO without NEEDS_CSUM: the kernel computes the pseudo-header from the addresses
    for v6 in (False, True):
        for n, opts in ((3500, ()), (3500, ts), (900, ())):
            p = bytearray(P.tcp_pkt(v6, pl(n), options=opts))
            p[(40 if v6 else 20) + 16 :][:2] = b"\xbe\xef"
            h = dict(P.none_hdr(), gso_type=P.GSO_TCPV6 if v6 else P.GSO_TCPV4, gso_size=1000)
            name = f"{'v6' if v6 else 'v4'} tcp GSO without NEEDS_CSUM payload {n} opts={len(opts)}"
            cases.append(P.Case(name, bytes(p), h, v6))
    # IP fragments as TUN reads deliver them: GSO_NONE, no flags; forwarded unchanged
    from scapy.layers.inet import UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

    big6 = IPv6(src=P.SRC6, dst=P.DST6) / IPv6ExtHdrFragment() / UDP() / pl(3000)
    for i, f in enumerate(fragment6(big6, 1280)):
        cases.append(P.Case(f"v6 udp fragment {i} GSO_NONE", bytes(f), P.none_hdr(), True))
    for i, f in enumerate(fragment(IP(src=P.SRC4, dst=P.DST4) / UDP() / pl(3000), 1000)):
        cases.append(P.Case(f"v4 udp fragment {i} GSO_NONE", bytes(f), P.none_hdr(), False))
    return cases


CRAFTED = _crafted()


@pytest.mark.parametrize("case", CRAFTED, ids=[c.desc for c in CRAFTED])
def test_kernel_oracle_crafted(oracle, case):
    status, msg = run_case(oracle, case)
    if status == "dropped":
        assert kernel_drops(case), f"the kernel dropped a crafted case: {msg}"
        return
    assert status == "identical", msg


GRO_STATS = {"batches": 0, "written": 0, "packets": 0}


def _gro_to_kernel(oracle: KernelOracle, pkts: list[bytes], expected: dict, offset: int):
    """handle_gro's output written to tunA must come out of tunB as the original packets;
    returns the buffers and the indices written."""
    import tunoffload as t

    bufs = [bytearray(offset) + p for p in pkts]
    idx = t.handle_gro(bufs, offset, t.GroTable())
    frames = [bytes(bufs[i][offset - P.VIRTIO_NET_HDR_LEN :]) for i in idx]
    got, refused = oracle.exchange(frames)
    GRO_STATS["batches"] += 1
    GRO_STATS["written"] += len(frames)
    GRO_STATS["packets"] += len(pkts)
    assert refused == 0, f"the kernel refused {refused} of {len(frames)} coalesced writes"
    by_flow: dict = {}
    for g in got:
        by_flow.setdefault(P.flow_key(g), []).append(normalize(g))
    want = {k: [normalize(p) for p in v] for k, v in expected.items()}
    assert by_flow.keys() == want.keys()
    for k in want:
        assert by_flow[k] == want[k], f"flow {k}: the kernel's segments differ from the originals"
    return bufs, idx


def test_kernel_segments_gro_output(oracle, seed):
    """Random interleaved flows: handle_gro -> kernel GSO gives back the original packets."""
    rng = random.Random(seed ^ 0x6A0)
    for _ in range(25):
        pkts, expected = P.make_flows(rng, min_ttl=2)
        _gro_to_kernel(oracle, pkts, expected, rng.choice([10, 12, 32]))


def _flow(v6: bool, tcp: bool, n: int, size: int, rng: random.Random) -> list[bytes]:
    """`n` packets of one TCP or UDP flow in sequence, `size` random payload bytes each."""
    pkts = []
    for i in range(n):
        pl = P.rand_bytes(rng, size)
        kw = {} if v6 else {"ip_id": i}
        if tcp:
            pkts.append(P.tcp_pkt(v6, pl, seq=1 + size * i, **kw))
        else:
            pkts.append(P.udp_pkt(v6, pl, **kw))
    return pkts


@pytest.mark.parametrize(
    "kind", ["udp4-130x100", "udp6-130x1", "tcp4-130x1", "tcp6-45x1428", "udp4-60x1448"]
)
def test_kernel_accepts_large_gro_batches(oracle, kind):
    """Coalesced packets the kernel must still accept (UDP_MAX_SEGMENTS, 64 KiB)."""
    name, count_size = kind.split("-")
    n, size = (int(x) for x in count_size.split("x"))
    v6 = name.endswith("6")
    pkts = _flow(v6, name.startswith("tcp"), n, size, random.Random(n * size))
    _gro_to_kernel(oracle, pkts, {P.flow_key(pkts[0]): pkts}, 10)


@pytest.mark.parametrize("bad", [0, 9, 19], ids=["first", "middle", "last"])
@pytest.mark.parametrize("kind", ["tcp4", "tcp6", "udp4", "udp6"])
def test_a_corrupt_segment_is_written_alone_between_its_runs(oracle, kind, bad):
    """GRO checks checksums while it copies and plans again when one fails: the segments
    before and after a corrupt one still coalesce, the corrupt one is written alone and
    unchanged, and the kernel gives back exactly the 20 packets (the bad one as it was)."""
    import tunoffload as t

    v6, tcp = kind.endswith("6"), kind.startswith("tcp")
    pkts = _flow(v6, tcp, 20, 1000, random.Random(f"{kind}-{bad}"))
    broken = bytearray(pkts[bad])
    broken[-1] ^= 0x5A  # the payload's last byte: the transport checksum no longer verifies
    pkts[bad] = bytes(broken)
    bufs, idx = _gro_to_kernel(oracle, pkts, {P.flow_key(pkts[0]): pkts}, 12)
    runs = [r for r in ((0, bad), (bad + 1, 20)) if r[1] > r[0]]
    assert len(idx) == len(runs) + 1, idx
    hdrs = {i: t.VirtioNetHdr.decode(bufs[i][2:12]) for i in idx}
    (alone,) = [i for i in idx if hdrs[i].gso_type == t.VIRTIO_NET_HDR_GSO_NONE]
    assert hdrs[alone] == t.VirtioNetHdr() and bytes(bufs[alone][12:]) == pkts[bad]
    for (lo, hi), i in zip(runs, [i for i in idx if i != alone], strict=True):
        assert hdrs[i].gso_size == 1000
        assert len(bufs[i]) - 12 == len(pkts[lo]) + 1000 * (hi - lo - 1)


# Malformed inputs of test_gso.py that the kernel itself refuses (drops) on this path
# (`kernel=True` in its table): the engine's ValueError for them is the kernel's
# behaviour, not just the tests' opinion.
KERNEL_REFUSES = [c for c in test_gso.BAD if c.kernel]


@pytest.mark.parametrize("case", KERNEL_REFUSES, ids=[c.name for c in KERNEL_REFUSES])
def test_kernel_refuses_what_engine_rejects(oracle, case):
    import tunoffload as t

    pkt, h, _ = case.make(test_gso.bases())
    out = [bytearray(70000) for _ in range(200)]
    refused(lambda: t.gso_split(pkt, t.VirtioNetHdr(**h), out, [0] * 200), case.kind)
    assert oracle.segment(pkt, h) is None, "the kernel forwarded it"
