"""TunDevice: creation, configuration round trips, bad arguments, I/O edge cases.

Every device lives in a network namespace the test creates and deletes (tests/_netns.py);
configuration is read back independently through ``ip -j`` inside that namespace.
Needs root (CAP_NET_ADMIN); skipped otherwise.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest
from _netns import Netns, can_use_netns, ip_addrs, link_info, raw_tun
from _threads import HANG_GUARD, MainSignaller, wait_blocked_in_poll

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

if _reason is None:
    import tunoffload as t

HDR = 10


@pytest.fixture
def ns():
    with Netns("tunoff-dev") as n:
        yield n


# --- creation ------------------------------------------------------------------------


def test_kernel_picks_name_and_close_deletes(ns):
    with ns.entered():
        dev = t.TunDevice()
    assert dev.name.startswith("tun")
    assert dev.fileno() >= 0 and not dev.closed
    assert dev.ifindex == link_info(ns, dev.name)["ifindex"]
    name = dev.name
    dev.close()
    dev.close()  # idempotent
    assert dev.closed and dev.fileno() == -1
    assert dev.name == name  # last known name stays readable
    assert link_info(ns, name) is None  # not persistent: gone with its last queue


def test_context_manager_and_calls_after_close(ns):
    with ns.entered(), t.TunDevice("ctx0") as dev:
        assert "ctx0" in repr(dev)
    assert dev.closed
    for call in (
        lambda: dev.mtu,
        lambda: dev.recv(bytearray(100)),
        lambda: dev.up(),
        lambda: dev.send(b"x"),
        lambda: dev.clone_queue(),
    ):
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.EBADF


def test_device_is_created_in_the_calling_threads_namespace(ns):
    with ns.entered():
        dev = t.TunDevice("inns0")
    try:
        assert link_info(ns, "inns0") is not None
        host = subprocess.run(["ip", "link", "show", "dev", "inns0"], capture_output=True)
        assert host.returncode != 0, "the device leaked into the host namespace"
        # Configuration works from outside the namespace too (sockets are bound to it).
        dev.mtu = 1280
        assert link_info(ns, "inns0")["mtu"] == 1280
    finally:
        dev.close()


@pytest.mark.parametrize("name", ["x" * 16, "a/b", "a b", "", "..", "tun:1"])
def test_bad_names(ns, name):
    with ns.entered(), pytest.raises(ValueError):
        t.TunDevice(name)


def test_fifteen_byte_name_is_fine(ns):
    with ns.entered(), t.TunDevice("x" * 15) as dev:
        assert dev.name == "x" * 15


def test_bad_arguments(ns):
    with ns.entered():
        with pytest.raises(ValueError):
            t.TunDevice("bad0", offload=True, packet_information=True)
        with pytest.raises(ValueError):
            t.TunDevice("bad0", mtu=10)
        with pytest.raises(OverflowError):
            t.TunDevice("bad0", mtu=-1)
        with pytest.raises(TypeError):
            t.TunDevice(123)
        with pytest.raises(ValueError):
            t.TunDevice.from_fd(-1)
        with tempfile.TemporaryFile() as f, pytest.raises(ValueError):
            t.TunDevice.from_fd(f.fileno())
        dev = t.TunDevice("bad0", offload=True)
    with dev:
        with pytest.raises(ValueError):
            dev.add_address("not-an-address/24")
        with pytest.raises(ValueError):
            dev.add_address("10.0.0.1/33")
        with pytest.raises(ValueError):
            dev.mtu = 70000
        with pytest.raises(ValueError):
            dev.clone_queue()  # not multi-queue
        with pytest.raises(ValueError):
            dev.mac = "aa:bb"  # malformed
        with pytest.raises(ValueError):
            dev.recv_multiple(bytearray(HDR + 65535), [], [], HDR)
        with pytest.raises(ValueError):
            dev.send_multiple(t.GroTable(), [bytearray(100)], 5)  # offset < 10
        with pytest.raises(TypeError):
            dev.send_multiple(t.GroTable(), (bytearray(100),), HDR)  # not a list
        with pytest.raises(ValueError):
            dev.send_multiple(t.GroTable(), [bytearray(100)], HDR, sizes=[0])
        with pytest.raises(ValueError):
            dev.send_multiple(t.GroTable(), [bytearray(100)], HDR, count=2)
        with pytest.raises(ValueError):
            dev.recv_multiple(bytearray(4), [bytearray(100)], [0], HDR)  # no room for hdr
        with pytest.raises(OSError):
            dev.remove_address("192.0.2.77/24")  # not there


# --- configuration round trips -------------------------------------------------------


def test_mtu_up_down_txqueuelen(ns):
    with ns.entered():
        dev = t.TunDevice("cfg0", mtu=1400)
    with dev:
        assert dev.mtu == 1400 == link_info(ns, "cfg0")["mtu"]
        dev.mtu = 9000
        assert dev.mtu == 9000 == link_info(ns, "cfg0")["mtu"]
        assert not dev.is_up
        dev.up()
        assert dev.is_up and "UP" in link_info(ns, "cfg0")["flags"]
        dev.down()
        assert not dev.is_up and "UP" not in link_info(ns, "cfg0")["flags"]
        dev.tx_queue_len = 1234
        assert dev.tx_queue_len == 1234 == link_info(ns, "cfg0")["txqlen"]
        assert dev.gso_max_segs == 65535 == link_info(ns, "cfg0")["gso_max_segs"]
        dev.gso_max_segs = 46
        assert dev.gso_max_segs == 46 == link_info(ns, "cfg0")["gso_max_segs"]
        for bad in (0, 65536):
            with pytest.raises(ValueError, match=f"gso_max_segs must be 1..65535, not {bad}"):
                dev.gso_max_segs = bad
        assert dev.gso_max_segs == 46
        assert dev.mac is None  # TUN has no MAC


def test_up_keyword(ns):
    with ns.entered(), t.TunDevice("upk0", up=True) as dev:
        assert dev.is_up


def test_addresses_v4_v6(ns):
    with ns.entered():
        dev = t.TunDevice("addr0", up=True)
    with dev:
        dev.add_address("192.0.2.1/24")
        dev.add_address("198.51.100.7")  # bare: /32
        dev.add_address("2001:db8::1/64", nodad=True)
        import ipaddress

        dev.add_address(ipaddress.ip_interface("2001:db8:1::5/48"))
        want = {"192.0.2.1/24", "198.51.100.7/32", "2001:db8::1/64", "2001:db8:1::5/48"}
        assert want <= set(dev.addresses)
        assert want <= ip_addrs(ns, "addr0")
        with pytest.raises(FileExistsError):
            dev.add_address("192.0.2.1/24")
        dev.remove_address("192.0.2.1/24")
        dev.remove_address("2001:db8::1/64")
        assert "192.0.2.1/24" not in dev.addresses
        left = ip_addrs(ns, "addr0")
        assert "192.0.2.1/24" not in left and "2001:db8::1/64" not in left
        assert "198.51.100.7/32" in left


def test_persist_owner_group_and_reopen(ns):
    with ns.entered():
        dev = t.TunDevice("pers0", persist=True, owner=4242, group=4343, offload=True)
    assert dev.persist
    assert (dev.owner, dev.group) == (4242, 4343)
    info = link_info(ns, "pers0")["linkinfo"]["info_data"]
    assert info["persist"] is True
    assert str(info["user"]) == "4242" and str(info["group"]) == "4343"
    dev.owner = 0
    dev.group = 0
    assert (dev.owner, dev.group) == (0, 0)
    dev.close()
    assert link_info(ns, "pers0") is not None  # persistent: still there

    # Reopening without offload clears the header and the offload mask, and says so.
    with ns.entered():
        again = t.TunDevice("pers0")
    assert not again.offload
    assert link_info(ns, "pers0")["linkinfo"]["info_data"]["vnet_hdr"] is False
    assert again.persist
    again.persist = False
    again.close()
    assert link_info(ns, "pers0") is None


def test_from_fd_reads_flags_back(ns):
    """A descriptor whose device carries a virtio header is never misread."""
    with ns.entered():
        fd = raw_tun("raw0", vnet_hdr=True)
    try:
        dev = t.TunDevice.from_fd(fd)
        assert dev.offload and dev.name == "raw0"
        assert dev.fileno() != fd  # duplicated
        dev.close()
        os.fstat(fd)  # the caller's descriptor is still open
        with ns.entered():
            fd2 = raw_tun("raw1", vnet_hdr=False)
        try:
            plain = t.TunDevice.from_fd(fd2)
            assert not plain.offload
            plain.close()
        finally:
            os.close(fd2)
    finally:
        os.close(fd)


def test_multi_queue_clone(ns):
    with ns.entered():
        q0 = t.TunDevice("mq0", multi_queue=True, offload=True)
    # Cloned from outside the namespace on purpose: it must attach in the device's one.
    q1 = q0.clone_queue()
    q2 = q1.clone_queue()
    try:
        assert q1.name == q2.name == "mq0"
        assert q1.offload and q2.offload and q1.multi_queue
        assert len({q0.fileno(), q1.fileno(), q2.fileno()}) == 3
        assert subprocess.run(["ip", "link", "show", "mq0"], capture_output=True).returncode != 0
        q0.close()
        assert link_info(ns, "mq0") is not None  # other queues keep it alive
    finally:
        for q in (q0, q1, q2):
            q.close()
    assert link_info(ns, "mq0") is None


def test_tap_mac(ns):
    with ns.entered(), t.TunDevice("tap0", tap=True) as dev:
        assert dev.tap
        dev.mac = "02:11:22:33:44:55"
        assert dev.mac == "02:11:22:33:44:55"
        assert link_info(ns, "tap0")["address"] == "02:11:22:33:44:55"
        dev.mac = bytes.fromhex("020000000001")
        assert dev.mac == "02:00:00:00:00:01"
        with pytest.raises(ValueError):
            dev.mac = "03:00:00:00:00:01"  # multicast


def test_offload_flags(ns):
    with ns.entered(), t.TunDevice("off0", offload=True) as dev:
        assert dev.offload
        assert dev.udp_gso  # kernel 6.2+ accepts USO4/USO6
        info = link_info(ns, "off0")["linkinfo"]["info_data"]
        assert info["vnet_hdr"] is True and info["pi"] is False
        feats = ns.run("ethtool", "-k", "off0", check=False)
        if feats.returncode == 0:
            assert "tcp-segmentation-offload: on" in feats.stdout


# --- I/O -----------------------------------------------------------------------------


def _udp_into(ns: Netns, dev_addr: str, dst: str, payload: bytes) -> None:
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((dev_addr, 0))
            s.sendto(payload, (dst, 9))
        finally:
            s.close()


def test_recv_send_single_packets(ns):
    with ns.entered():
        dev = t.TunDevice("io0", offload=True, up=True)
        dev.add_address("192.0.2.1/24")
    with dev:
        _udp_into(ns, "192.0.2.1", "192.0.2.2", b"hello")
        buf = bytearray(HDR + 65535)
        for _ in range(100):  # skip IPv6 router solicitations and such
            n = dev.recv(buf)
            pkt = bytes(buf[HDR:n])
            if pkt[0] >> 4 == 4 and pkt[9] == 17:
                break
        else:
            pytest.fail("the UDP packet was not among the first 100 packets read")
        hdr = t.VirtioNetHdr.decode(buf)
        assert hdr.gso_type == t.VIRTIO_NET_HDR_GSO_NONE
        assert pkt.endswith(b"hello")
        # Send it back with the addresses swapped: UDP to an unbound port makes the
        # kernel answer with ICMP port unreachable, which we then read.
        back = bytearray(pkt)
        back[12:16], back[16:20] = pkt[16:20], pkt[12:16]
        if hdr.flags & t.VIRTIO_NET_HDR_F_NEEDS_CSUM:
            # The checksum is partial; let the kernel know it is to be trusted as-is.
            back[26:28] = b"\0\0"  # UDP over IPv4: a zero checksum means none
        assert dev.send(bytes(t.VirtioNetHdr()) + bytes(back)) == HDR + len(back)
        data = dev.read()
        while data[HDR] >> 4 != 4 or data[HDR + 9] != 1:
            data = dev.read()
        assert data[HDR + 20] == 3  # ICMP destination unreachable


def test_nonblocking_and_stats(ns):
    with ns.entered(), t.TunDevice("nb0", nonblocking=True) as dev:
        assert not dev.getblocking()
        with pytest.raises(BlockingIOError):
            dev.recv(bytearray(2000))
        with pytest.raises(BlockingIOError):
            dev.recv_multiple(bytearray(100), [bytearray(2000)], [0])
        dev.setblocking(True)
        assert dev.getblocking()
        assert dev.stats["reads"] == 0


def test_recv_multiple_fit_and_truncation(ns):
    with ns.entered():
        dev = t.TunDevice("fit0", up=True)
        dev.add_address("192.0.2.1/24")
    with dev:
        _udp_into(ns, "192.0.2.1", "192.0.2.2", b"x" * 100)
        while True:
            bufs = [bytearray(4 + 2000) for _ in range(4)]  # fit shrinks them: fresh ones
            sizes = [0] * 4
            n = dev.recv_multiple(None, bufs, sizes, 4, fit=True)
            assert n == 1
            if bufs[0][4] >> 4 == 4 and bufs[0][4 + 9] == 17:  # skip IGMP, IPv6 RS/MLD
                break
        assert len(bufs[0]) == 4 + sizes[0] == 4 + 128  # 20 IP + 8 UDP + 100
        assert len(bufs[1]) == 4 + 2000  # untouched

        # A buffer too small for the packet: the kernel cuts it; we say so.
        dev.setblocking(False)
        try:
            while True:
                dev.recv(bytearray(70000))  # drain
        except BlockingIOError:
            pass
        dev.setblocking(True)
        _udp_into(ns, "192.0.2.1", "192.0.2.2", b"y" * 1000)
        with pytest.raises(ValueError, match="truncated"):
            while True:
                dev.recv_multiple(None, [bytearray(100)], [0])


def test_close_wakes_blocked_reader(ns):
    with ns.entered():
        dev = t.TunDevice("wake0", offload=True)
    result: list[BaseException | None] = []

    def reader():
        try:
            dev.recv_multiple(bytearray(HDR + 65535), [bytearray(2000)], [0], HDR)
            result.append(None)
        except BaseException as e:  # noqa: B036 - recorded for the assertion
            result.append(e)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    wait_blocked_in_poll(th, "recv_multiple")  # fails if it returned without a packet
    dev.close()
    th.join(HANG_GUARD)  # a hang guard, not a measurement
    assert not th.is_alive(), "close() did not wake the blocked reader"
    assert isinstance(result[0], OSError) and result[0].errno == errno.EBADF


def test_device_deleted_under_reader(ns):
    with ns.entered():
        dev = t.TunDevice("del0")
    result: list[BaseException | None] = []

    def reader():
        try:
            while True:
                dev.recv(bytearray(70000))
        except BaseException as e:  # noqa: B036 - recorded for the assertion
            result.append(e)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    wait_blocked_in_poll(th, "recv")
    ns.run("ip", "link", "del", "del0")
    th.join(HANG_GUARD)
    assert not th.is_alive(), "reader hangs after the device was deleted"
    assert isinstance(result[0], OSError)
    with pytest.raises(OSError):
        dev.send(b"\x45" + b"\0" * 19)
    dev.close()


def test_signal_interrupts_blocking_recv(ns):
    """PEP 475: EINTR retries, but a signal handler that raises interrupts the read."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    with ns.entered():
        dev = t.TunDevice("sig0")

    class Alarm(Exception):
        pass

    calls = []
    handled = threading.Semaphore(0)

    def handler(signum, frame):
        calls.append(signum)
        handled.release()
        if len(calls) >= 2:
            raise Alarm

    old = signal.signal(signal.SIGALRM, handler)
    try:
        # The first signal comes while recv is blocked; its handler returns, and recv
        # blocks again (the signaller sees it in poll(2) once more) until the second.
        signaller = MainSignaller(signal.SIGALRM, count=2, handled=handled)
        with pytest.raises(Alarm):
            dev.recv(bytearray(2000))
        signaller.join()
        assert calls == [signal.SIGALRM, signal.SIGALRM]  # the first was retried through
    finally:
        signal.signal(signal.SIGALRM, old)
        dev.close()


def test_send_multiple_error_carries_counts(ns):
    with ns.entered():
        dev = t.TunDevice("cnt0", up=True)
        dev.add_address("192.0.2.1/24")
    with dev:
        good = bytearray.fromhex("4500001c000000004011f98ec0000201c0000202") + bytearray(8)
        bad = bytearray(b"\x00" * 20)  # not IP: the kernel would refuse it
        # Checked as the kernel would, before anything is written.
        with pytest.raises(ValueError, match=r"bufs\[1\].*IP version 0"):
            dev.send_multiple(t.GroTable(), [good, bad, good], 0)
        assert dev.stats["writes"] == 0
        # Packets the kernel itself refuses (EIO: the device is down) are an OSError that
        # carries what was written: here nothing, as every write is refused. (Only the
        # kernel refuses a packet the checks above pass, so a batch where some writes go
        # through and one is refused cannot be made on purpose here.)
        dev.down()
        with pytest.raises(OSError) as ei:
            dev.send_multiple(t.GroTable(), [good, bytearray(good), bytearray(good)], 0)
        assert ei.value.errno == errno.EIO
        assert ei.value.packets_sent == 0 and ei.value.bytes_sent == 0
        dev.up()
        assert dev.send_multiple(t.GroTable(), [good, bytearray(good)], 0) == 2 * len(good)


# --- privilege and environment errors (in a child process) ------------------------------

_CHILD = """
import sys, tunoffload as t
try:
    t.TunDevice("perm0")
except Exception as e:
    print(type(e).__name__, e)
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def test_permission_error_without_cap_net_admin():
    r = subprocess.run(
        [
            # Stay root (so the installed package stays readable) but without
            # CAP_NET_ADMIN in any capability set.
            "setpriv",
            "--inh-caps=-net_admin",
            "--ambient-caps=-net_admin",
            "--bounding-set=-net_admin",
            sys.executable,
            "-c",
            _CHILD,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=_child_env(),
    )
    if r.returncode != 0 and "setpriv" in r.stderr:
        pytest.skip(f"setpriv unavailable: {r.stderr}")
    assert r.stdout.startswith("PermissionError"), r.stdout + r.stderr
    assert "CAP_NET_ADMIN" in r.stdout


def test_missing_dev_net_tun():
    script = f"mount -t tmpfs none /dev/net && exec {sys.executable} -c '{_CHILD}'"
    r = subprocess.run(
        ["unshare", "--mount", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=_child_env(),
    )
    if r.returncode != 0 and not r.stdout:
        pytest.skip(f"cannot make a mount namespace: {r.stderr}")
    assert r.stdout.startswith("FileNotFoundError"), r.stdout + r.stderr
    assert "/dev/net/tun" in r.stdout
