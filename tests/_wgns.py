"""Running WireGuard tools with a private ``/run/wireguard``, and traffic between
namespaces, for the WireGuard tests.

UAPI sockets live in ``/var/run/wireguard`` (= ``/run/wireguard``), which every network
namespace shares. Each command here runs in its own mount namespace (``unshare --mount``,
private propagation, so nothing leaks out) where a directory of the test's is
bind-mounted on ``/run/wireguard``: a daemon and the ``wg`` commands that talk to it see
that directory, and nothing else on the machine sees them. With ``netns`` the command
also runs in that network namespace (``ip netns exec``); without it, in a new network
namespace of its own (``unshare --net``), so that ``wg show`` lists no kernel interface.

``transfer`` moves random bytes over TCP both ways at once between two namespaces and
checks their SHA-256; ``wait_until`` polls a condition for a bounded time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

import tunoffload as t

RUNDIR = "/run/wireguard"
WAIT_S = 30  # every socket operation and wait here is bounded by this
_BIND = 'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec "$@"'


def can_use_wg(need_wg: bool = True) -> str | None:
    """None when the isolated ``wg`` commands can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (mount and network namespaces)"
    for tool in ("unshare", "ip", "mount") + (("wg",) if need_wg else ()):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is missing"
    return None


def isolated(rundir: str, argv: Sequence[str], netns: str | None = None) -> list[str]:
    """``argv`` wrapped to run with ``rundir`` on ``/run/wireguard`` (see the module)."""
    inner = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BIND, rundir]
    if netns is None:
        return ["unshare", "--net", *inner, *argv]
    return ["ip", "netns", "exec", netns, *inner, *argv]


def wg(
    rundir: str, *args: str, netns: str | None = None, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``wg ARGS`` against the sockets in ``rundir``."""
    proc = subprocess.run(
        isolated(rundir, ["wg", *args], netns),
        capture_output=True,
        text=True,
        timeout=30,
        input=stdin,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"wg {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
    return proc


def genkey() -> tuple[str, str]:
    """A private key and its public key, base64, from ``wg genkey`` / ``wg pubkey``."""
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True)
    public = subprocess.run(
        ["wg", "pubkey"], input=private.stdout, capture_output=True, text=True, check=True
    )
    return private.stdout.strip(), public.stdout.strip()


def wait_until(predicate: Callable[[], object], timeout: float = WAIT_S) -> bool:
    """Polls ``predicate`` every 50 ms until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def sock_in(ns: str, family: int, kind: int, timeout: float = WAIT_S) -> socket.socket:
    """A socket made in network namespace ``ns`` (a name under ``/run/netns``)."""
    with t.netns(ns):
        s = socket.socket(family, kind)
    s.settimeout(timeout)
    return s


def transfer(src: str, dst: str, addr: str, port: int, size_out: int, size_back: int) -> None:
    """One TCP connection from namespace ``src`` to ``addr:port`` in ``dst``: ``size_out``
    random bytes to it and ``size_back`` from it at the same time; asserts that each side
    received exactly what the other sent (SHA-256)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    server = sock_in(dst, family, socket.SOCK_STREAM)
    server.bind((addr, port))
    server.listen(1)
    out, back = os.urandom(size_out), os.urandom(size_back)
    got = {"server": hashlib.sha256(), "client": hashlib.sha256()}

    def pump(conn: socket.socket, data: bytes, key: str) -> None:
        def send() -> None:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while chunk := conn.recv(1 << 16):
            got[key].update(chunk)
        sender.join(WAIT_S)
        assert not sender.is_alive()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(WAIT_S)
            pump(conn, back, "server")

    th = threading.Thread(target=serve)
    th.start()
    client = sock_in(src, family, socket.SOCK_STREAM)
    with client, server:
        client.connect((addr, port))
        pump(client, out, "client")
        th.join(WAIT_S)
    assert not th.is_alive()
    assert got["server"].hexdigest() == hashlib.sha256(out).hexdigest()
    assert got["client"].hexdigest() == hashlib.sha256(back).hexdigest()
