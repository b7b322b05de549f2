"""Network namespaces and raw TUN devices for the tests.

The namespaces are the package's harness, :mod:`tunoffload.testing` (shared with the
benchmarks; the standard library and ``ip`` only, so the kernel-oracle tests check
tunoffload against the kernel, not against itself): ``Netns``, ``joined_by_veth``, and
``can_use_netns``, the tests' name for ``missing_requirements`` (None when namespaces
and TUN devices can be used here, else why not). Beside them, what only the tests need:

- ``raw_tun(name, vnet_hdr=..., offload=...)``: opens a TUN device with fcntl ioctls
  (their numbers and flags are ``tunoffload._sysinfo``'s, the ``TUN_F_*`` re-exported);
- ``link_info``, ``ip_addrs``: what ``ip`` reports about a link;
- ``drain(dev)``: empties a non-blocking device.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct

from tunoffload._sysinfo import (
    IFF_NO_PI,
    IFF_TUN,
    IFF_VNET_HDR,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_USO4,
    TUN_F_USO6,
    TUNSETIFF,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    VNET_HDR_LEN,
)
from tunoffload.testing import Netns, ip, joined_by_veth
from tunoffload.testing import missing_requirements as can_use_netns

__all__ = [
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_USO4",
    "TUN_F_USO6",
    "Netns",
    "can_use_netns",
    "drain",
    "ip_addrs",
    "joined_by_veth",
    "link_info",
    "raw_tun",
]


def link_info(ns: Netns | None, name: str) -> dict | None:
    """`ip -d -j link show NAME` in `ns` (None: this process's namespace), or None when
    there is no such link."""
    r = ip("-d", "-j", "link", "show", "dev", name, ns=ns.name if ns else None, check=False)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def ip_addrs(ns: Netns, name: str) -> set[str]:
    """The addresses of link `name` in `ns`, as "ADDR/PREFIX"."""
    info = json.loads(ns.ip("-j", "addr", "show", "dev", name).stdout)[0]
    return {f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", [])}


def drain(dev) -> None:  # type: ignore[no-untyped-def]
    """Reads a non-blocking device until it is empty (a bounded number of reads)."""
    buf = bytearray(VNET_HDR_LEN + 65535)  # the virtio header and the largest packet
    for _ in range(10000):
        try:
            dev.recv(buf)
        except BlockingIOError:
            return


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
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
    except BaseException:
        os.close(fd)
        raise
    return fd
