"""Network namespaces: ``TunDevice(netns=...)`` and ``tunoffload.netns(target)``.

Every namespace here is made and deleted by the test (tests/_netns.py); where a device
is, is checked independently with ``ip -n NS link show``. Needs root; skipped otherwise.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import select
import socket
import subprocess
import threading

import pytest
from _netns import Netns, can_use_netns, ip_addrs, link_info
from scapy.layers.inet import IP, UDP

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

if _reason is None:
    import tunoffload as t


def here() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def ns_inode(ns: Netns) -> int:
    return os.stat(ns.path).st_ino


@pytest.fixture
def a():
    with Netns("tunoff-nsa") as n:
        yield n


@pytest.fixture
def b():
    with Netns("tunoff-nsb") as n:
        yield n


def in_thread(fn):
    """Runs `fn` on a new thread and returns its result (or raises its exception)."""
    out: dict = {}

    def run():
        try:
            out["r"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            out["e"] = e

    th = threading.Thread(target=run)
    th.start()
    th.join(30)
    assert not th.is_alive()
    if "e" in out:
        raise out["e"]
    return out["r"]


# --- capabilities, per thread ----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CAP_SYS_ADMIN = 21


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_sys_admin_in_this_thread() -> None:
    """Clears CAP_SYS_ADMIN from the calling thread's effective set (capset is per thread)."""
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (_CapData * 2)()
    assert _libc.capget(ctypes.byref(hdr), data) == 0
    data[0].effective &= ~(1 << CAP_SYS_ADMIN)
    assert _libc.capset(ctypes.byref(hdr), data) == 0


# --- TunDevice(netns=...) -------------------------------------------------------------


@pytest.mark.parametrize("form", ["name", "path", "pathlike", "fd"])
def test_device_is_created_in_each_target_form(a, form):
    fd = -1
    if form == "name":
        target: object = a.name
    elif form == "path":
        target = a.path
    elif form == "pathlike":
        target = pathlib.Path(a.path)
    else:
        fd = os.open(a.path, os.O_RDONLY)
        target = fd
    before = here()
    try:
        with t.TunDevice(f"nf-{form}", netns=target, mtu=1400) as dev:
            assert here() == before
            info = link_info(a, dev.name)
            assert info is not None and info["mtu"] == 1400
            assert dev.ifindex == info["ifindex"]
            assert link_info(None, dev.name) is None
    finally:
        if fd >= 0:
            os.close(fd)
    assert link_info(a, f"nf-{form}") is None  # closed, so gone


def test_a_name_that_is_not_utf8_is_that_file():
    # bytes names are file names: not decoded (lossily) into the name of another file.
    name = f"tunoff-{os.getpid()}-\udcff".encode("utf-8", "surrogateescape")
    subprocess.run([b"ip", b"netns", b"add", name], check=True)
    try:
        with t.netns(name) as sw:
            assert sw.inode == os.stat(b"/run/netns/" + name).st_ino
            assert os.stat("/proc/thread-self/ns/net").st_ino == sw.inode
    finally:
        subprocess.run([b"ip", b"netns", b"del", name], check=True)


def test_netns_none_is_the_calling_threads_namespace(a):
    with a.entered():
        dev = t.TunDevice("nf-none", netns=None)
    with dev:
        assert link_info(a, "nf-none") is not None


def test_config_works_from_a_thread_in_another_namespace(a, b):
    dev = t.TunDevice("nf-cfg", netns=a.name)

    def configure():
        with b.entered():
            assert here() == ns_inode(b)
            dev.mtu = 1280
            dev.up()
            dev.add_address("198.51.100.1/24", nodad=True)
            dev.add_address("2001:db8::1/64", nodad=True)
            got = (dev.mtu, dev.is_up, set(dev.addresses), dev.ifindex)
            dev.remove_address("2001:db8::1/64")
            return got

    with dev:
        mtu, up, got, ifindex = in_thread(configure)
        assert (mtu, up) == (1280, True)
        assert {"198.51.100.1/24", "2001:db8::1/64"} <= got
        info = link_info(a, "nf-cfg")
        assert info["mtu"] == 1280 and "UP" in info["flags"]
        assert info["ifindex"] == ifindex
        assert "198.51.100.1/24" in ip_addrs(a, "nf-cfg")
        assert "2001:db8::1/64" not in ip_addrs(a, "nf-cfg")
        assert link_info(b, "nf-cfg") is None


def test_clone_queue_in_a_namespace(a):
    with t.TunDevice("nf-mq", netns=a.name, multi_queue=True) as dev:
        with dev.clone_queue() as q:
            assert q.name == "nf-mq" and q.ifindex == dev.ifindex
            assert link_info(None, "nf-mq") is None
            assert link_info(a, "nf-mq")["ifindex"] == q.ifindex


def _read_udp(dev, port: int, count: int = 20):
    """The first UDP packet to `port` read from non-blocking `dev` (bounded wait)."""
    for _ in range(count):
        r, _, _ = select.select([dev], [], [], 5)
        assert r, "no packet from the device"
        pkt = IP(dev.read())
        if pkt.haslayer(UDP) and pkt[UDP].dport == port:
            return pkt
    raise AssertionError(f"no UDP packet to port {port} among {count}")


def _udp_through(dev, ns: Netns, port: int, out: bytes, back: bytes):
    """A datagram `out` from a socket made in `ns` (bound to 192.0.2.1) to 192.0.2.2:`port`,
    routed over `dev` there, read from `dev`; then `back` written into `dev` from
    192.0.2.2:`port` to that socket. Returns the packet read, what `dev.write` returned
    with the length written, and the socket's `recvfrom`."""
    with t.netns(ns.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.bind(("192.0.2.1", 0))
        s.sendto(out, ("192.0.2.2", port))
        pkt = _read_udp(dev, port)
        reply = bytes(
            IP(src="192.0.2.2", dst="192.0.2.1") / UDP(sport=port, dport=s.getsockname()[1]) / back
        )
        written = dev.write(reply)
        s.settimeout(5)
        return pkt, (written, len(reply)), s.recvfrom(100)


def test_io_through_a_device_in_a_namespace(a):
    with t.TunDevice("nf-io", netns=a.name, nonblocking=True) as dev:
        dev.up()
        dev.add_address("192.0.2.1/24")
        # Out through the device: a socket made in the namespace, to an address that is
        # routed over the TUN there; and in through the device, to the socket.
        pkt, (written, n), got = _udp_through(
            dev, a, 4000, b"out of the namespace", b"into the namespace"
        )
        assert pkt[IP].src == "192.0.2.1" and pkt[IP].dst == "192.0.2.2"
        assert bytes(pkt[UDP].payload) == b"out of the namespace"
        chk = pkt[UDP].chksum
        del pkt[UDP].chksum
        assert IP(bytes(pkt))[UDP].chksum == chk
        assert written == n
        assert got == (b"into the namespace", ("192.0.2.2", 4000))


# --- tunoffload.netns ----------------------------------------------------------------


def test_socket_made_inside_belongs_to_the_namespace(a):
    a.run("ip", "addr", "add", "203.0.113.7/32", "dev", "lo")
    before = here()
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with outside, pytest.raises(OSError) as e:
        outside.bind(("203.0.113.7", 0))
    assert e.value.errno == errno.EADDRNOTAVAIL
    with t.netns(a.name) as sw:
        assert here() == ns_inode(a) == sw.inode
        assert sw.name == a.name and sw.path == a.path and sw.active
        assert sw.thread_id == threading.get_native_id()
        assert os.stat(f"/proc/self/fd/{sw.fileno()}").st_ino == ns_inode(a)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert here() == before and not sw.active
    with s:
        s.bind(("203.0.113.7", 0))  # the socket stays in the namespace it was made in
        assert s.getsockname()[0] == "203.0.113.7"


def test_device_made_inside_is_made_there(a):
    with t.netns(pathlib.Path(a.path)):
        dev = t.TunDevice("nf-cm")
    with dev:
        assert link_info(a, "nf-cm") is not None and link_info(None, "nf-cm") is None


def test_back_outside_after_an_exception(a):
    before = here()
    with pytest.raises(KeyError), t.netns(a.name):
        assert here() == ns_inode(a)
        raise KeyError("inside")
    assert here() == before


def test_nesting(a, b):
    before = here()
    fd = os.open(b.path, os.O_RDONLY)
    try:
        cm = t.netns(a.name)
        with cm:
            assert here() == ns_inode(a)
            with t.netns(fd) as inner:
                assert here() == ns_inode(b) == inner.inode
                assert inner.name is None and inner.path is None
                with cm:  # the same object again, and the namespace it is in already
                    assert here() == ns_inode(a)
                assert here() == ns_inode(b)
            assert here() == ns_inode(a)
        assert here() == before
    finally:
        os.close(fd)


def test_leaving_out_of_order_is_refused(a, b):
    before = here()
    ca, cb = t.netns(a.name), t.netns(b.name)
    ca.__enter__()
    cb.__enter__()
    with pytest.raises(RuntimeError, match="innermost"):
        ca.__exit__(None, None, None)
    assert here() == ns_inode(b)
    cb.__exit__(None, None, None)
    ca.__exit__(None, None, None)
    assert here() == before


def test_a_switch_dropped_without_leaving_does_not_block_the_one_before(a, b):
    def body():
        before = here()
        outer = t.netns(a.name)
        outer.__enter__()
        inner = t.netns(b.name)
        inner.__enter__()
        del inner  # its NetnsSwitch goes with it, never left: the thread stays in b
        assert here() == ns_inode(b)
        outer.__exit__(None, None, None)
        assert here() == before

    in_thread(body)


def test_exit_from_another_thread_is_refused(a):
    cm = t.netns(a.name)
    entered = threading.Event()
    go_on = threading.Event()
    seen: dict = {}

    def worker():
        before = here()
        with cm as sw:
            seen["sw"] = sw
            entered.set()
            assert go_on.wait(30)
            seen["inside"] = here()
        seen["after"] = (here(), before)

    th = threading.Thread(target=worker)
    th.start()
    try:
        assert entered.wait(30)
        mine = here()
        with pytest.raises(RuntimeError, match="thread"):
            cm.__exit__(None, None, None)
        with pytest.raises(RuntimeError, match="another thread"):
            seen["sw"].leave()
        assert here() == mine  # this thread was not switched
        assert seen["sw"].active
    finally:
        go_on.set()
        th.join(30)
    assert seen["inside"] == ns_inode(a)  # the worker was not switched back either
    now, before = seen["after"]
    assert now == before


def test_the_same_object_in_two_threads(a, b):
    cm = t.netns(a.name)

    def body():
        with cm:
            inside = here()
        return inside, here()

    with cm:
        with b.entered():
            inside, after = in_thread(body)
        assert here() == ns_inode(a)
    assert inside == ns_inode(a) and after != inside


def test_bad_targets(tmp_path):
    before = here()
    with pytest.raises(FileNotFoundError, match=r"tunoff-no-such.*ip netns add tunoff-no"):
        t.netns("tunoff-no-such").__enter__()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        t.netns(tmp_path / "missing").__enter__()
    plain = tmp_path / "plain"
    plain.write_text("not a namespace")
    with pytest.raises(ValueError, match="not a network namespace"):
        t.netns(plain).__enter__()
    with pytest.raises(ValueError, match="UTS namespace, not a network namespace"):
        t.netns("/proc/self/ns/uts").__enter__()
    fd = os.open(plain, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="not a network namespace"):
            t.netns(fd).__enter__()
        with pytest.raises(ValueError, match="not a network namespace"):
            t.TunDevice("nf-bad", netns=fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        t.netns(fd).__enter__()  # closed now
    assert e.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        t.netns(-1).__enter__()
    with pytest.raises(ValueError):
        t.netns("").__enter__()
    with pytest.raises(TypeError):
        t.netns(True).__enter__()  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        t.TunDevice("nf-bad", netns=1.5)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="ip netns add"):
        t.TunDevice("nf-bad", netns="tunoff-no-such")
    assert here() == before


def test_no_cap_sys_admin_is_a_permission_error(a):
    def body():
        drop_sys_admin_in_this_thread()
        before = here()
        with pytest.raises(PermissionError, match="CAP_SYS_ADMIN") as e:
            t.netns(a.name).__enter__()
        assert "setns" in str(e.value)
        with pytest.raises(PermissionError, match="CAP_SYS_ADMIN"):
            t.TunDevice("nf-perm", netns=a.name)
        return here() == before

    assert in_thread(body)
    assert link_info(a, "nf-perm") is None


# --- a device moved to another namespace after it was opened ---------------------------


def test_moved_device_is_followed(a, b):
    with t.TunDevice("nf-mv", netns=a.name, nonblocking=True) as dev:
        dev.add_address("192.0.2.1/24", nodad=True)
        old_index = dev.ifindex
        a.run("ip", "link", "set", "nf-mv", "netns", b.name)
        assert link_info(b, "nf-mv") is not None and link_info(a, "nf-mv") is None
        # Another device of that name in the old namespace, to tempt a stale name.
        a.run("ip", "link", "add", "nf-mv", "type", "dummy", check=False)
        dev.up()
        assert "UP" in link_info(b, "nf-mv")["flags"]
        dev.add_address("192.0.2.1/24", nodad=True)  # addresses went away with the move
        assert "192.0.2.1/24" in dev.addresses
        assert "192.0.2.1/24" in ip_addrs(b, "nf-mv")
        dev.mtu = 1300
        assert link_info(b, "nf-mv")["mtu"] == 1300
        assert dev.ifindex == link_info(b, "nf-mv")["ifindex"]
        assert old_index > 0
        # I/O on the descriptor keeps working, with the new namespace's stack.
        pkt, _, (data, _) = _udp_through(dev, b, 4001, b"after the move", b"reply")
        assert bytes(pkt[UDP].payload) == b"after the move"
        assert data == b"reply"


def test_moved_multi_queue_clone_follows(a, b):
    with t.TunDevice("nf-mvq", netns=a.name, multi_queue=True) as dev:
        a.run("ip", "link", "set", "nf-mvq", "netns", b.name)
        with dev.clone_queue() as q:
            # Attached to the device in b, not a new one made by name in a.
            assert link_info(a, "nf-mvq") is None
            assert q.ifindex == link_info(b, "nf-mvq")["ifindex"]
            q.up()
        assert "UP" in link_info(b, "nf-mvq")["flags"]


def test_moved_device_that_cannot_be_followed_says_so(a, b):
    with t.TunDevice("nf-mv2", netns=a.name, nonblocking=True) as dev:
        dev.up()
        a.run("ip", "link", "set", "nf-mv2", "netns", b.name)

        def body():
            drop_sys_admin_in_this_thread()  # so following it (setns) is not allowed
            errs = []
            for call in (dev.up, lambda: dev.addresses, lambda: dev.mtu):
                with pytest.raises(PermissionError) as e:
                    call()
                errs.append(str(e.value))
            return errs

        for msg in in_thread(body):
            assert "nf-mv2 was moved to another network namespace" in msg, msg
            assert "ip link set nf-mv2 netns" in msg and "CAP_SYS_ADMIN" in msg
        # With CAP_SYS_ADMIN (this thread) it is followed. The move took it down.
        assert not dev.is_up
        dev.up()
        assert "UP" in link_info(b, "nf-mv2")["flags"]
