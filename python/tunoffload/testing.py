"""Network namespaces for tests and benchmarks: made, joined and deleted by the caller.

The standard library and the ``ip`` command (iproute2) only: nothing here uses
tunoffload's own namespace or device code, so a test that checks tunoffload against the
kernel does not check it against itself. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).

- :func:`missing_requirements`: why namespaces (and TUN devices) cannot be used here, or
  ``None``; a reason to skip a test or refuse a benchmark.
- :class:`Netns`: a uniquely named namespace (``ip netns add``, the name includes the
  pid), deleted by ``close()`` or on leaving a ``with`` block; ``run``/``ip``/``popen``
  run commands in it, ``entered()`` moves the calling thread into it.
- :func:`veth_between` joins two of them with a veth pair; :func:`joined_by_veth` makes
  both namespaces and the pair for a ``with`` block.
- :func:`unshare_netns`: moves the calling thread (a single-threaded process: the
  process) into a new namespace of its own that disappears with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from tunoffload._sysinfo import CLONE_NEWNET, os_or_libc, unshare_netns

__all__ = [
    "CommandError",
    "Netns",
    "ip",
    "joined_by_veth",
    "missing_requirements",
    "unshare_netns",
    "veth_between",
]

COMMAND_TIMEOUT = 30  # seconds for one `ip` command or one command run in a namespace


def missing_requirements(tun: bool = True) -> str | None:
    """``None`` when network namespaces (and, with ``tun``, TUN devices) can be made
    here, else the reason they cannot."""
    if os.geteuid() != 0:
        if not tun:
            return "needs root (CAP_NET_ADMIN) to create a network namespace"
        return "needs root (CAP_NET_ADMIN) to create network namespaces and TUN devices"
    if tun and not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


class CommandError(subprocess.CalledProcessError):
    """A command that failed, with what it wrote on stderr in its message."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip()
        return f"{super().__str__()} {err}" if err else super().__str__()


def _run(argv: list[str], check: bool) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and r.returncode != 0:
        raise CommandError(r.returncode, argv, r.stdout, r.stderr)
    return r


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip [-n NS] ARGS...``, its output captured as text; a failure raises
    :class:`CommandError` (a ``CalledProcessError`` naming what ``ip`` said) unless
    ``check`` is false."""
    return _run(["ip", *(("-n", ns) if ns else ()), *args], check)


class Netns:
    """A network namespace that this process made and will delete, named
    ``{prefix}-{pid}-{random}``, with its loopback up."""

    def __init__(self, prefix: str = "tunoff-t") -> None:
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.path = f"/run/netns/{self.name}"
        ip("netns", "add", self.name)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS...`` (see :func:`ip`)."""
        return ip(*args, ns=self.name, check=check)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` in the namespace (``ip netns exec``), its output captured as text
        (:class:`CommandError` on failure unless ``check`` is false)."""
        return _run(self.exec_argv(*argv), check)

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Starts ``argv`` in the namespace; ``kwargs`` go to ``subprocess.Popen``."""
        return subprocess.Popen(self.exec_argv(*argv), **kwargs)

    def exec_argv(self, *argv: str) -> list[str]:
        """The command line that runs ``argv`` in the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def link_up(self, dev: str, address: str | None = None) -> None:
        """Gives link ``dev`` ``address`` ("ADDR/PREFIX"), if any, and sets it up."""
        if address is not None:
            self.ip("addr", "add", address, "dev", dev)
        self.ip("link", "set", dev, "up")

    @contextlib.contextmanager
    def entered(self) -> Iterator[Netns]:
        """Runs the body with the calling thread inside this namespace (``setns``); the
        thread is back where it was on leaving."""
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(self.path, os.O_RDONLY)
        try:
            os_or_libc("setns", there, CLONE_NEWNET)
            try:
                yield self
            finally:
                os_or_libc("setns", here, CLONE_NEWNET)
        finally:
            os.close(here)
            os.close(there)

    def close(self) -> None:
        """Deletes the namespace (what is left in it goes with it); again is harmless."""
        ip("netns", "del", self.name, check=False)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


def veth_between(
    a: Netns, b: Netns, devs: tuple[str, str], addrs: Sequence[str | None] = (None, None)
) -> None:
    """A veth pair, end ``devs[0]`` in ``a`` and ``devs[1]`` in ``b``, both up, with
    addresses ``addrs`` ("ADDR/PREFIX", or None for none)."""
    ip("link", "add", devs[0], "netns", a.name, "type", "veth", "peer", devs[1], "netns", b.name)
    for ns, dev, addr in zip((a, b), devs, addrs, strict=True):
        ns.link_up(dev, addr)


@contextlib.contextmanager
def joined_by_veth(
    prefix: str, devs: tuple[str, str], addrs: tuple[str, str]
) -> Iterator[tuple[Netns, Netns]]:
    """Namespaces ``{prefix}-a-...`` and ``{prefix}-b-...`` joined by a veth pair, end
    ``devs[i]`` in namespace i with address ``addrs[i]/24``, both up, IPv6 off (no
    autoconfiguration: only the caller's own packets cross it); deleted on leaving."""
    namespaces: list[Netns] = []
    try:
        for side in ("a", "b"):
            namespaces.append(Netns(f"{prefix}-{side}"))
        a, b = namespaces
        for ns in namespaces:  # before the veth exists, so that its ends get it too
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        veth_between(a, b, devs, [f"{addr}/24" for addr in addrs])
        yield a, b
    finally:
        for ns in namespaces:
            ns.close()
