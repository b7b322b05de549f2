"""Every public function fed wrong types, negative or huge sizes, read-only buffers where
writable ones are needed, and closed devices: a clear Python exception, never a crash.

Complements test_fuzz.py (random packets and a few wrong types for gso_split/handle_gro)
and test_device.py (bad device names and arguments, a few calls after close). The
device calls that once aborted the process (a huge ``read`` size, a huge ``count``)
run in a child process, so that a regression fails this test instead of killing pytest.
"""

from __future__ import annotations

import array
import errno
import sys

import packets as P
import pytest
import tunoffload as t
from _kinds import refused
from _netns import Netns, can_use_netns

ENGINE_ERRORS = (ValueError, TypeError, OverflowError, BufferError)
HUGE = (2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 1, 10**30)
NEGATIVE = (-1, -(2**63), -(2**64))

SUP, H = P.super_tcp(False, bytes(range(256)) * 12, 1000)
HDR = t.VirtioNetHdr(**H)


def outs(n: int = 4, size: int = 2000) -> list[bytearray]:
    return [bytearray(size) for _ in range(n)]


def resizable(b: bytearray) -> None:
    b.append(0)
    del b[-1]


# --- VirtioNetHdr ----------------------------------------------------------------------


FIELD_MAX = {"flags": 255, "gso_type": 255}


@pytest.mark.parametrize("field", P.HDR_FIELDS)
@pytest.mark.parametrize("value", [*NEGATIVE, 256, 65536, *HUGE, 1.5, "1", None, b"\x01", [1]])
def test_hdr_fields_out_of_range_or_wrong_type(field, value):
    top = FIELD_MAX.get(field, 65535)
    if value == 256 and top > 256:
        value = 65536  # 256 fits the u16 fields
    if isinstance(value, int):
        # OverflowError for every field, naming it and its range.
        want: type[BaseException] = OverflowError
        match = f"^{field} must be in 0..={top}, got {value}$"
    else:
        want, match = (
            TypeError,
            f"^{field} must be an int in 0..={top}, not {type(value).__name__}$",
        )
    refused(lambda: t.VirtioNetHdr(**{field: value}), want, match)
    h = t.VirtioNetHdr()
    refused(lambda: setattr(h, field, value), want, match)
    assert h == t.VirtioNetHdr(), "a failed assignment changed the header"
    with pytest.raises((AttributeError, TypeError)):
        delattr(h, field)


def test_hdr_decode_and_encode_bad_buffers():
    for bad in (None, 12, "0123456789", [0] * 10, object()):
        with pytest.raises(TypeError):
            t.VirtioNetHdr.decode(bad)
    for short in (b"", b"\0" * 9, bytearray(9), memoryview(b"\0" * 20)[:9]):
        refused(
            lambda s=short: t.VirtioNetHdr.decode(s), "virtio_hdr_too_short", f"got {len(short)}$"
        )
    # Non-contiguous: refused, not misread.
    with pytest.raises(ENGINE_ERRORS):
        t.VirtioNetHdr.decode(memoryview(bytes(40))[::2])
    # Other item sizes and formats are fine as bytes.
    a = array.array("H", [1, 2, 3, 4, 5])
    assert bytes(t.VirtioNetHdr.decode(a)) == a.tobytes()
    h = t.VirtioNetHdr(flags=1, gso_type=4, gso_size=1448)
    for read_only in (b"\0" * 20, memoryview(b"\0" * 20), memoryview(bytearray(20)).toreadonly()):
        with pytest.raises((TypeError, BufferError)):
            h.encode(read_only)
    for short in (bytearray(9), memoryview(bytearray(20))[:9]):
        refused(lambda s=short: h.encode(s), "virtio_hdr_too_short")
        assert bytes(short) == bytes(len(short))
    with pytest.raises(ENGINE_ERRORS):
        h.encode(memoryview(bytearray(40))[::2])
    for bad in (None, "x" * 20, 5):
        with pytest.raises(TypeError):
            h.encode(bad)
    # Wrong argument counts and keywords.
    with pytest.raises(TypeError):
        t.VirtioNetHdr(1, 2, 3, 4, 5, 6, 7)
    with pytest.raises(TypeError):
        t.VirtioNetHdr(nonsense=1)
    with pytest.raises(TypeError):
        t.VirtioNetHdr.decode()


# --- gso_split -------------------------------------------------------------------------


@pytest.mark.parametrize("out_offset", [*NEGATIVE, *HUGE, 1.0, "0", None])
def test_gso_split_bad_out_offset(out_offset):
    o = outs()
    if not isinstance(out_offset, int):
        want: object = TypeError
    elif out_offset < -(2**63) or out_offset >= 2**63:
        want = OverflowError  # beyond the C integer type
    else:
        want = "negative_argument" if out_offset < 0 else "out_buf_too_small"
    refused(lambda: t.gso_split(SUP, HDR, o, [0] * 4, out_offset), want)  # type: ignore[arg-type]
    assert all(b == bytearray(2000) for b in o)


# (name, call, what it raises: an engine error kind or an exception class)
def test_split_refusals_name_the_callers_buffers() -> None:
    # gso_split's buffers are out_bufs (recv_multiple's, bufs: see test_batch.py).
    with pytest.raises(ValueError, match=r"^the packet splits into 4 segments but only 0 out_bufs"):
        t.gso_split(SUP, HDR, [], [0] * 4)
    with pytest.raises(ValueError, match=r"^out_bufs\[0\] holds 100 bytes; segment 0 needs"):
        t.gso_split(SUP, HDR, outs(4, 100), [0] * 4)


GSO_SPLIT_BAD_ARGUMENTS = [
    ("is_v6 not a bool", lambda s: t.gso_split(SUP, HDR, outs(), s, 0, "yes"), TypeError),
    ("is_v6 wrong", lambda s: t.gso_split(SUP, HDR, outs(), s, 0, True), "ip_version_mismatch"),
    ("sizes a tuple", lambda s: t.gso_split(SUP, HDR, outs(), (0, 0, 0, 0)), TypeError),
    ("sizes too short", lambda s: t.gso_split(SUP, HDR, outs(), [0, 0]), "sizes_too_short"),
    ("sizes empty", lambda s: t.gso_split(SUP, HDR, outs(), []), "sizes_too_short"),
    ("out_bufs a generator", lambda s: t.gso_split(SUP, HDR, (b for b in outs()), s), TypeError),
    ("out_bufs a dict", lambda s: t.gso_split(SUP, HDR, {0: bytearray(2000)}, s), TypeError),
    ("out_bufs empty", lambda s: t.gso_split(SUP, HDR, [], s), "too_few_out_bufs"),
    ("out_bufs bytes", lambda s: t.gso_split(SUP, HDR, [b"\0" * 2000] * 4, s), BufferError),
    (
        "out_bufs read-only view",
        lambda s: t.gso_split(
            SUP, HDR, [memoryview(bytearray(2000)).toreadonly() for _ in range(4)], s
        ),
        BufferError,
    ),
    (
        "out_bufs strided",
        lambda s: t.gso_split(SUP, HDR, [memoryview(bytearray(4000))[::2] for _ in range(4)], s),
        BufferError,
    ),
    ("out_bufs str", lambda s: t.gso_split(SUP, HDR, ["x" * 2000] * 4, s), TypeError),
    ("out_bufs None", lambda s: t.gso_split(SUP, HDR, [None] * 4, s), TypeError),
    ("out_bufs too small", lambda s: t.gso_split(SUP, HDR, outs(4, 100), s), "out_buf_too_small"),
    ("packet str", lambda s: t.gso_split("x" * 100, HDR, outs(), s), TypeError),
    (
        "packet strided",
        lambda s: t.gso_split(memoryview(SUP * 2)[::2], HDR, outs(), s),
        BufferError,
    ),
    ("packet huge", lambda s: t.gso_split(bytes(1 << 20), HDR, outs(), s), "bad_ip_version"),
    ("packet empty", lambda s: t.gso_split(b"", HDR, outs(), s), "empty_packet"),
    ("hdr a dict", lambda s: t.gso_split(SUP, dict(H), outs(), s), TypeError),
    ("hdr bytes", lambda s: t.gso_split(SUP, bytes(HDR), outs(), s), TypeError),
    ("missing arguments", lambda s: t.gso_split(SUP, HDR), TypeError),
    ("unknown keyword", lambda s: t.gso_split(SUP, HDR, outs(), s, offset=0), TypeError),
]


@pytest.mark.parametrize(
    ("name", "call", "want"), GSO_SPLIT_BAD_ARGUMENTS, ids=[c[0] for c in GSO_SPLIT_BAD_ARGUMENTS]
)
def test_gso_split_bad_arguments(name, call, want):
    sizes = [0] * 4
    e = refused(lambda: call(sizes), want)
    if isinstance(e, (TypeError, BufferError)):
        assert "Error: " not in str(e), "the message repeats an exception's type"
    assert sizes == [0] * 4


def test_gso_split_keeps_no_hold_on_buffers_after_errors():
    inp = bytearray(SUP)
    o = outs(4, 100)
    for _ in range(3):
        with pytest.raises(ValueError):
            t.gso_split(inp, HDR, o, [0] * 4)
    for b in (inp, *o):
        resizable(b)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ (PEP 688) is Python 3.12+")
def test_gso_split_output_resized_by_a_later_outputs_export():
    # Exporting out_bufs[1] runs its __buffer__, which grows out_bufs[0] (its memory
    # moves): segment 0 must still land in out_bufs[0], not where its memory was.
    first = bytearray(2000)
    second = bytearray(2000)

    class Grows:
        def __buffer__(self, flags: int) -> memoryview:
            first.extend(bytes(1 << 20))
            return memoryview(second)

    sizes = [0] * 4
    o: list[object] = [first, Grows(), *outs(2)]
    assert t.gso_split(SUP, HDR, o, sizes) == 4
    want = P.kernel_gso(SUP, H)
    assert bytes(first[: sizes[0]]) == want[0]
    assert bytes(second[: sizes[1]]) == want[1]
    assert len(first) == 2000 + (1 << 20)


def test_gso_split_output_resized_by_a_later_items_getitem():
    # The same on any Python version: a list subclass that claims more items than it
    # holds, whose __getitem__ for them grows out_bufs[0] (its memory moves).
    first = bytearray(2000)
    rest = outs(3)

    class Claims(list[bytearray]):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
            if i == 0:
                return first
            first.extend(bytes(1 << 20))
            return rest[i - 1]

    sizes = [0] * 4
    assert t.gso_split(SUP, HDR, Claims([first]), sizes) == 4
    want = P.kernel_gso(SUP, H)
    assert [bytes(b[: sizes[i]]) for i, b in enumerate([first, *rest])] == want
    assert len(first) == 2000 + 3 * (1 << 20)


# --- handle_gro ------------------------------------------------------------------------


def gro_bufs(n: int = 3, offset: int = 10) -> list[bytearray]:
    pkts = [P.tcp_pkt(False, b"a" * 100, seq=1000 + 100 * i) for i in range(n)]
    return [bytearray(offset) + p for p in pkts]


@pytest.mark.parametrize("offset", [*NEGATIVE, *HUGE, 0, 9, 1.0, "10", None])
def test_handle_gro_bad_offset(offset):
    bufs = gro_bufs()
    before = [bytes(b) for b in bufs]
    if not isinstance(offset, int):
        want: object = TypeError
    elif offset < -(2**63) or offset >= 2**63:
        want = OverflowError  # beyond the C integer type
    elif offset < 0:
        want = "negative_argument"
    else:
        want = "offset_too_small" if offset < 10 else "no_packet_after_offset"
    refused(lambda: t.handle_gro(bufs, offset, t.GroTable()), want)  # type: ignore[arg-type]
    assert [bytes(b) for b in bufs] == before
    for b in bufs:
        resizable(b)


def _twice(b: bytearray) -> list[bytearray]:
    return [b, b]


def _overlapping(x: bytearray) -> list[memoryview]:
    return [memoryview(x)[:200], memoryview(x)[100:]]


# (name, call with a table, what it raises: an engine error kind or an exception class)
HANDLE_GRO_BAD_ARGUMENTS = [
    ("bufs a tuple", lambda g: t.handle_gro(tuple(gro_bufs()), 10, g), TypeError),
    ("bufs a generator", lambda g: t.handle_gro((b for b in gro_bufs()), 10, g), TypeError),
    ("bufs None", lambda g: t.handle_gro(None, 10, g), TypeError),
    ("an int in bufs", lambda g: t.handle_gro([*gro_bufs(), 5], 10, g), TypeError),
    ("bytes in bufs", lambda g: t.handle_gro([bytes(b) for b in gro_bufs()], 10, g), BufferError),
    (
        "read-only view in bufs",
        lambda g: t.handle_gro([memoryview(b).toreadonly() for b in gro_bufs()], 10, g),
        BufferError,
    ),
    (
        "strided view in bufs",
        lambda g: t.handle_gro([memoryview(b * 2)[::2] for b in gro_bufs()], 10, g),
        BufferError,
    ),
    (
        "empty bytearray",
        lambda g: t.handle_gro([*gro_bufs(), bytearray()], 10, g),
        "no_packet_after_offset",
    ),
    (
        "headroom only",
        lambda g: t.handle_gro([*gro_bufs(), bytearray(10)], 10, g),
        "no_packet_after_offset",
    ),
    ("table wrong type", lambda g: t.handle_gro(gro_bufs(), 10, "table"), TypeError),
    ("table None", lambda g: t.handle_gro(gro_bufs(), 10, None), TypeError),
    ("can_udp_gro not a bool", lambda g: t.handle_gro(gro_bufs(), 10, g, "yes"), TypeError),
    (
        "same bytearray twice",
        lambda g: t.handle_gro(_twice(gro_bufs(1)[0]), 10, g),
        "overlapping_buffers",
    ),
    (
        "overlapping views",
        lambda g: t.handle_gro(_overlapping(bytearray(300)), 10, g),
        "overlapping_buffers",
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "want"), HANDLE_GRO_BAD_ARGUMENTS, ids=[c[0] for c in HANDLE_GRO_BAD_ARGUMENTS]
)
def test_handle_gro_bad_arguments(name, call, want):
    table = t.GroTable()
    e = refused(lambda: call(table), want)
    if isinstance(e, (TypeError, BufferError)):
        assert "Error: " not in str(e), "the message repeats an exception's type"
    if want == "no_packet_after_offset":
        assert getattr(e, "index", None) == 3, "the index of the buffer with no packet"
    if want == "overlapping_buffers":
        assert getattr(e, "index", None) == 1, "the index of the second buffer"
    # The table still works afterwards.
    bufs = gro_bufs()
    assert t.handle_gro(bufs, 10, table) == [0]


def test_handle_gro_empty_list_and_exported_bytearray():
    assert t.handle_gro([], 10, t.GroTable()) == []
    # A bytearray with a live memoryview cannot grow: GRO leaves it alone, no crash.
    bufs = gro_bufs()
    views = [memoryview(b) for b in bufs]
    before = [bytes(b[10:]) for b in bufs]
    idx = t.handle_gro(bufs, 10, t.GroTable())
    assert sorted(bytes(bufs[i][10:]) for i in idx) == sorted(before)
    for v in views:
        v.release()


# --- TunDevice: closed devices and bad arguments -----------------------------------------

_reason = can_use_netns()
needs_root = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def ns():
    with Netns("tunoff-bad") as n:
        yield n


def _closed_calls(dev: t.TunDevice) -> dict:
    g = t.GroTable()
    return {
        "recv": lambda: dev.recv(bytearray(100)),
        "read": lambda: dev.read(),
        "send": lambda: dev.send(b"\x45" + bytes(19)),
        "write": lambda: dev.write(b"\x45" + bytes(19)),
        "recv_multiple": lambda: dev.recv_multiple(bytearray(70000), [bytearray(2000)], [0], 10),
        "send_multiple": lambda: dev.send_multiple(g, gro_bufs(), 10),
        "wait_readable": lambda: dev.wait_readable(),
        "clone_queue": lambda: dev.clone_queue(),
        "mtu": lambda: dev.mtu,
        "set mtu": lambda: setattr(dev, "mtu", 1400),
        "up": lambda: dev.up(),
        "down": lambda: dev.down(),
        "is_up": lambda: dev.is_up,
        "ifindex": lambda: dev.ifindex,
        "add_address": lambda: dev.add_address("192.0.2.1/24"),
        "remove_address": lambda: dev.remove_address("192.0.2.1/24"),
        "addresses": lambda: dev.addresses,
        "persist": lambda: setattr(dev, "persist", True),
        "owner": lambda: setattr(dev, "owner", 0),
        "group": lambda: setattr(dev, "group", 0),
        "mac": lambda: dev.mac,
        "tx_queue_len": lambda: dev.tx_queue_len,
        "gso_max_segs": lambda: dev.gso_max_segs,
        "set gso_max_segs": lambda: setattr(dev, "gso_max_segs", 46),
    }


@needs_root
@pytest.mark.parametrize("offload", [False, True])
def test_every_call_on_a_closed_device_is_ebadf(ns, offload):
    with ns.entered():
        dev = t.TunDevice("closed0", offload=offload, multi_queue=True)
    dev.close()
    for name, call in _closed_calls(dev).items():
        with pytest.raises(OSError) as ei:
            call()
            pytest.fail(f"{name}: no error on a closed device")
        assert ei.value.errno == errno.EBADF, name
    # These stay usable after close.
    assert dev.closed and dev.fileno() == -1 and dev.name == "closed0"
    assert isinstance(dev.stats, dict) and isinstance(repr(dev), str)
    dev.close()
    dev.setblocking(False)
    assert not dev.getblocking()


def _device(ns, name: str, offload: bool) -> tuple[t.TunDevice, int]:
    """A non-blocking device `name` that is up in `ns`, and the offset its packets take
    (room for the virtio header with offload)."""
    with ns.entered():
        dev = t.TunDevice(name, offload=offload, up=True, nonblocking=True)
    return dev, (10 if offload else 0)


@needs_root
@pytest.mark.parametrize("offload", [False, True])
def test_device_io_bad_arguments(ns, offload):
    dev, off = _device(ns, "badio0", offload)
    g = t.GroTable()
    ro = memoryview(bytearray(70000)).toreadonly()
    cases = {
        "recv bytes": lambda: dev.recv(bytes(2000)),
        "recv read-only view": lambda: dev.recv(ro),
        "recv None": lambda: dev.recv(None),
        "recv str": lambda: dev.recv("x" * 100),
        "read negative": lambda: dev.read(-1),
        "read huge": lambda: dev.read(2**64),
        "read str": lambda: dev.read("10"),
        "send str": lambda: dev.send("hello"),
        "send None": lambda: dev.send(None),
        "recv_multiple offset negative": lambda: dev.recv_multiple(
            bytearray(70000), [bytearray(2000)], [0], -1
        ),
        "recv_multiple offset huge": lambda: dev.recv_multiple(
            bytearray(70000), [bytearray(2000)], [0], 2**64
        ),
        "recv_multiple sizes tuple": lambda: dev.recv_multiple(
            bytearray(70000), [bytearray(2000)], (0,), off
        ),
        "recv_multiple bufs None": lambda: dev.recv_multiple(bytearray(70000), None, [0], off),
        "recv_multiple bufs empty": lambda: dev.recv_multiple(bytearray(70000), [], [0], off),
        "recv_multiple sizes empty": lambda: dev.recv_multiple(
            bytearray(70000), [bytearray(2000)], [], off
        ),
        "send_multiple offset negative": lambda: dev.send_multiple(g, gro_bufs(), -5),
        "send_multiple offset huge": lambda: dev.send_multiple(g, gro_bufs(), 2**63),
        "send_multiple table wrong": lambda: dev.send_multiple("t", gro_bufs(), 10),
        "send_multiple bufs None": lambda: dev.send_multiple(g, None, 10),
        "send_multiple sizes negative": lambda: dev.send_multiple(g, gro_bufs(), 10, sizes=[-1]),
        "send_multiple sizes str": lambda: dev.send_multiple(g, gro_bufs(), 10, sizes="abc"),
        "send_multiple sizes too big": lambda: dev.send_multiple(
            g, gro_bufs(), 10, sizes=[5000, 5000, 5000]
        ),
        "send_multiple count negative": lambda: dev.send_multiple(g, gro_bufs(), 10, count=-1),
        "send_multiple count beyond bufs": lambda: dev.send_multiple(g, gro_bufs(), 10, count=9),
    }
    if offload:
        cases["recv_multiple original read-only"] = lambda: dev.recv_multiple(
            ro, [bytearray(2000)], [0], 10
        )
        cases["recv_multiple original bytes"] = lambda: dev.recv_multiple(
            bytes(70000), [bytearray(2000)], [0], 10
        )
        cases["send_multiple offset below 10"] = lambda: dev.send_multiple(g, gro_bufs(), 9)
    with dev:
        for name, call in cases.items():
            with pytest.raises((*ENGINE_ERRORS, BlockingIOError)) as ei:
                call()
                pytest.fail(f"{name}: accepted")
            if "read" in name and "huge" not in name and "negative" not in name:
                assert not isinstance(ei.value, BlockingIOError), f"{name}: argument unchecked"


@needs_root
@pytest.mark.parametrize("offload", [False, True])
def test_send_multiple_argument_errors_have_kinds(ns, offload):
    # The same refusals as the engine's, with its kinds, whether or not GRO runs.
    dev, off = _device(ns, "kinds0", offload)
    g = t.GroTable()
    pkt = bytearray(off) + P.tcp_pkt(False, b"a" * 100, seq=1000)
    with dev:
        e = refused(lambda: dev.send_multiple(g, [pkt], off, sizes=[0]), "no_packet_after_offset")
        assert e.index == 0  # type: ignore[attr-defined]
        e = refused(
            lambda: dev.send_multiple(g, [pkt, bytearray(off)], off), "no_packet_after_offset"
        )
        assert e.index == 1  # type: ignore[attr-defined]
        refused(lambda: dev.send_multiple(g, [pkt], off, sizes=[5], count=2), "sizes_too_short")
        if offload:
            refused(lambda: dev.send_multiple(g, [pkt], 9), "offset_too_small")
        assert dev.stats["writes"] == 0


@needs_root
@pytest.mark.parametrize("offload", [False, True])
def test_recv_multiple_empty_outputs_have_kinds(ns, offload):
    # As gso_split refuses them, before anything is read.
    dev, off = _device(ns, "kinds1", offload)
    with dev:
        orig = bytearray(70000)
        refused(lambda: dev.recv_multiple(orig, [], [0], off), "too_few_out_bufs")
        refused(lambda: dev.recv_multiple(orig, [bytearray(2000)], [], off), "sizes_too_short")
        assert dev.stats["reads"] == 0


_CHILD = r"""
import sys, tunoffload as t
dev = t.TunDevice("huge0", offload=sys.argv[1] == "1", up=True, nonblocking=True)
off = 10 if dev.offload else 0
pkt = bytearray(off) + bytearray.fromhex("4500001c000000004011f98ec0000201c0000202") + bytearray(8)
calls = {
    "read(2**40)": lambda: dev.read(2**40),
    "read(2**63-1)": lambda: dev.read(2**63 - 1),
    "count=2**40": lambda: dev.send_multiple(t.GroTable(), [pkt], off, sizes=[5], count=2**40),
    "sizes=[2**64-1]": lambda: dev.send_multiple(t.GroTable(), [pkt], off, sizes=[2**64 - 1]),
    "sizes=[2**63]": lambda: dev.send_multiple(t.GroTable(), [pkt], off, sizes=[2**63]),
    "sizes=[2**63-1]": lambda: dev.send_multiple(t.GroTable(), [pkt], off, sizes=[2**63 - 1]),
}
for name, call in calls.items():
    try:
        r = call()
        print(name, "returned", type(r).__name__, flush=True)
    except BlockingIOError:
        print(name, "BlockingIOError", flush=True)
    except Exception as e:
        print(name, type(e).__name__, flush=True)
dev.close()
print("done", flush=True)
"""


@needs_root
@pytest.mark.parametrize("offload", ["0", "1"])
def test_huge_sizes_never_abort_the_process(ns, offload):
    """Regression: read(size) allocated `size` bytes and send_multiple(count=) `count`
    entries up front; a huge value made the allocation fail, which aborts the process.
    A size that, added to the offset, overflowed was taken as "the whole buffer"."""
    r = ns.run(sys.executable, "-c", _CHILD, offload, check=False)
    assert r.returncode == 0, f"the process died ({r.returncode}): {r.stdout}{r.stderr}"
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert r.stdout.rstrip().endswith("done")
    # Reads with a huge size just read (here: nothing to read).
    assert lines["read(2**40)"] in ("BlockingIOError", "returned bytes")
    assert lines["read(2**63-1)"] in ("BlockingIOError", "returned bytes")
    for name in ("count=2**40", "sizes=[2**64-1]", "sizes=[2**63]", "sizes=[2**63-1]"):
        assert lines[name] == "InputError", f"{name}: {lines[name]}"  # a ValueError


# --- the error kinds ----------------------------------------------------------------------


def test_error_kinds_are_exported_unique_and_documented():
    import pathlib
    import re

    kinds = t.ERROR_KINDS
    assert isinstance(kinds, tuple) and len(set(kinds)) == len(kinds)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in kinds), kinds
    api = pathlib.Path(__file__).resolve().parent.parent / "docs" / "API.md"
    documented = set(re.findall(r"^  \| `([a-z0-9_]+)` \|", api.read_text(), re.M))
    assert documented == set(kinds), "docs/API.md's table of kinds is not ERROR_KINDS"


class _LongList(list):
    """A list whose ``__len__`` claims far more entries than it holds."""

    def __len__(self) -> int:
        return 2**40


@needs_root
@pytest.mark.parametrize("offload", [False, True])
def test_a_length_that_lies_is_an_error_not_an_abort(ns, offload):
    # Nothing is reserved from a length Python code reported: the calls fail at the
    # first missing entry (the list's own IndexError) instead of allocating terabytes.
    dev, off = _device(ns, "lie0", offload)
    pkt = bytearray(off) + P.tcp_pkt(False, b"a" * 100, seq=1000)
    one = len(pkt) - off + (10 if offload else 0)  # what sending `pkt` writes
    with dev:
        if offload:  # GRO walks the list's own entries: the one packet goes out
            assert dev.send_multiple(t.GroTable(), _LongList([pkt]), off) == one
        else:
            with pytest.raises((IndexError, ValueError)):
                dev.send_multiple(t.GroTable(), _LongList([pkt]), off)
        with pytest.raises((IndexError, ValueError)):
            dev.send_multiple(t.GroTable(), [pkt], off, sizes=_LongList([len(pkt) - off]))
        assert dev.send_multiple(t.GroTable(), [pkt], off) == one
