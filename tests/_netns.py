"""Network namespaces and raw TUN devices for the tests, independent of tunoffload.

Everything here uses only the standard library and ``ip`` so that the kernel-oracle
tests check tunoffload against the kernel, not against itself.

- ``Netns()``: creates a uniquely named namespace (``ip netns add``), deletes it on
  ``close()``/exit. ``with ns.entered():`` switches the *calling thread* into it
  (setns), so sockets and TUN devices created there live in the namespace.
- ``joined_by_veth(...)``: two ``Netns`` joined by a veth pair with an address on each
  end (the underlay of the two-host tunnel tests), deleted afterwards.
- ``raw_tun(name, vnet_hdr=..., offload=...)``: opens a TUN device with fcntl ioctls.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def can_use_netns(tun: bool = True) -> str | None:
    """None when namespaces (and, with ``tun``, TUN) are usable here, else the reason
    they are not."""
    if os.geteuid() != 0:
        if not tun:
            return "needs root (CAP_NET_ADMIN) to create a network namespace"
        return "needs root (CAP_NET_ADMIN) to create network namespaces and TUN devices"
    if tun and not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


def link_info(ns: Netns | None, name: str) -> dict | None:
    """`ip -d -j link show NAME` in `ns` (None: this process's namespace), or None when
    there is no such link."""
    argv = ["ip", "-d", "-j", "link", "show", "dev", name]
    if ns is not None:
        argv[1:1] = ["-n", ns.name]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def ip_addrs(ns: Netns, name: str) -> set[str]:
    """The addresses of link `name` in `ns`, as "ADDR/PREFIX"."""
    info = json.loads(ns.run("ip", "-j", "addr", "show", "dev", name).stdout)[0]
    return {f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", [])}


def drain(dev) -> None:  # type: ignore[no-untyped-def]
    """Reads a non-blocking device until it is empty (a bounded number of reads)."""
    buf = bytearray(10 + 65535)  # the virtio header and the largest packet
    for _ in range(10000):
        try:
            dev.recv(buf)
        except BlockingIOError:
            return


class Netns:
    """A network namespace that this process created and will delete."""

    def __init__(self, prefix: str = "tunoff-t") -> None:
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.path = f"/run/netns/{self.name}"
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    @contextlib.contextmanager
    def entered(self):
        """Run the body with the calling thread inside this namespace."""
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(self.path, os.O_RDONLY)
        try:
            _setns(there)
            try:
                yield self
            finally:
                _setns(here)
        finally:
            os.close(here)
            os.close(there)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def joined_by_veth(
    prefix: str, devs: tuple[str, str], addrs: tuple[str, str]
) -> Iterator[tuple[Netns, Netns]]:
    """Namespaces ``{prefix}-a`` and ``{prefix}-b`` joined by a veth pair, end
    ``devs[i]`` in namespace i with address ``addrs[i]/24``, both up, IPv6 off (no
    autoconfiguration: only the tests' own packets cross it); deleted on leaving."""
    namespaces: list[Netns] = []
    try:
        for side in ("a", "b"):
            namespaces.append(Netns(f"{prefix}-{side}"))
        a, b = namespaces
        for ns in namespaces:  # before the veth exists, so that its ends get it too
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        subprocess.run(
            ["ip", "link", "add", devs[0], "netns", a.name, "type", "veth", "peer", devs[1]]
            + ["netns", b.name],
            check=True,
            timeout=30,
        )
        for ns, dev, addr in zip(namespaces, devs, addrs, strict=True):
            ns.run("ip", "addr", "add", f"{addr}/24", "dev", dev)
            ns.run("ip", "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in namespaces:
            ns.close()


def raw_tun(name: str, vnet_hdr: bool = False, offload: int = 0) -> int:
    """Open TUN device `name` (no packet info) in the calling thread's namespace; return fd.

    With `vnet_hdr` every read and write carries a 10-byte virtio_net_hdr; `offload` is the
    TUN_F_* mask for TUNSETOFFLOAD (0 = none).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
    except BaseException:
        os.close(fd)
        raise
    return fd
