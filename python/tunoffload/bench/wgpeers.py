"""Real WireGuard peers in network namespaces, driven only through their command lines and
``wg``: the interop tests' and the WireGuard benchmark's harness. Standard library only.

A ``Pair`` is two network namespaces joined by a veth pair (the underlay, 10.71.0.1/24 and
10.71.0.2/24, inside those namespaces only). ``Pair.start(side, impl)`` runs one WireGuard
implementation from ``IMPLEMENTATIONS`` in the foreground in one of them, as a child
process, and returns a ``Peer``; ``configure_pair(a, b, ...)`` gives both keys, ports,
each other as peer, and the tunnel addresses (the overlay, 10.72.0.1/24 and 10.72.0.2/24,
MTU 1420 as wg-quick sets it). Then:

- ``tcp_exchange(a, b, size)``: ``size`` bytes of TCP each way at once through the tunnel,
  the SHA-256 of what arrived compared with that of what was sent on both ends;
- ``UdpSink`` / ``send_datagrams`` / ``udp_exchange``: self-checking datagrams (sequence
  number, digest) through the tunnel, every one accounted for, duplicates seen;
- ``iperf3_tcp(a, b, seconds)``: one TCP stream measured by iperf3 (its JSON parsed);
- ``Capture``: an ``AF_PACKET`` capture of the WireGuard datagrams on a veth end, and
  ``forged_datagrams`` / ``send_raw_datagrams``: garbage, forged and replayed datagrams
  onto a peer's listen port from inside the other namespace.

UAPI sockets live in ``/run/wireguard``, which all network namespaces share, so every
daemon and every ``wg`` command runs in a mount namespace of its own where a private
directory (``Peer.rundir``) is bind-mounted there: ``in_namespaces`` builds that command.

Everything created (namespaces, veth, interfaces, daemons, directories) is removed by
``Pair.close`` (``with Pair() as pair:``), also on errors and KeyboardInterrupt; each
daemon also gets SIGTERM if the thread that started it dies (``setpriv --pdeathsig``), so
start peers from a thread that outlives them (the main thread). Traffic only goes to
addresses inside the two namespaces, and every wait is bounded.

    python -m tunoffload.bench.wgpeers list          # the implementations found here
    python -m tunoffload.bench.wgpeers smoke A B     # A (initiating) and B: handshake, 1 MiB
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNDERLAY = ("10.71.0.1", "10.71.0.2")  # the veth ends, /24
OVERLAY = ("10.72.0.1", "10.72.0.2")  # the WireGuard interfaces, /24
ROAM_ADDRESS = "10.71.0.11"  # where side 0's underlay address moves in a roaming test
PREFIX_LEN = 24
MTU = 1420  # wg-quick's default on a 1500-byte underlay (IPv6 + UDP + WireGuard overhead)
LISTEN_PORTS = (51871, 51872)
TCP_PORT, UDP_PORT, IPERF_PORT = 5471, 5472, 5473
VETH = ("towg0", "towg1")
RUN_DIR = "/run/wireguard"  # = /var/run/wireguard, where wg looks for IFNAME.sock
UDP_MAX_UNFRAGMENTED = MTU - 28  # IPv4 + UDP headers inside the tunnel

# environment variables that override where the implementations are found
ENV_WIREGUARD_GO = "TUNOFFLOAD_WIREGUARD_GO"  # Debian's (or any) wireguard-go binary
ENV_UPSTREAM = "TUNOFFLOAD_WIREGUARD_GO_UPSTREAM"  # the upstream wireguard-go anchor
ENV_BORINGTUN = "TUNOFFLOAD_BORINGTUN"  # boringtun-cli
ENV_OURS = "TUNOFFLOAD_INTEROP_OURS"  # "1": run ours even while OURS_BUILT is False
# Switch on when `python -m tunoffload wireguard` lands (issue 20).
OURS_BUILT = False

MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_COOKIE, MESSAGE_TRANSPORT = 1, 2, 3, 4
INITIATION_LEN, RESPONSE_LEN, COOKIE_LEN = 148, 92, 64
TRANSPORT_HEADER_LEN = 16  # type + reserved, receiver index, counter; then data + 16-byte tag
# Quirk: `last_handshake_time_sec` is the handshake's age in seconds, not the time since
# 1970 that the UAPI specifies (boringtun 0.7.1), so a handshake less than a second old
# reads as 0, "never". Peer.dump turns it into the time since 1970 (0 stays 0).
HANDSHAKE_AGE = "handshake-age"
# Quirk: after its own address is deleted it goes on sending from it, so nothing leaves:
# wireguard-go 0.0.20220316 (ENETUNREACH from its sticky source) until a handshake retry
# clears that source (15 s here); boringtun 0.7.1's data never again (its UDP socket
# connected to the peer keeps the old address and is made anew only when the peer's
# endpoint changes; its handshakes leave from the new address; not in 87 s here;
# --disable-connected-udp avoids it). Seeing the other side roam is not affected.
STALE_SOURCE = "stale-source"
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")


class Unavailable(Exception):
    """An implementation (or tool) that cannot run here; the message says why."""


# --- implementations ----------------------------------------------------------------------


@dataclass(frozen=True)
class Implementation:
    """One WireGuard implementation, run as ``[*command(), IFNAME]`` with ``env`` added: a
    daemon that stays in the foreground, creates the TUN device IFNAME in its network
    namespace and serves the UAPI on ``/run/wireguard/IFNAME.sock``."""

    name: str
    description: str
    find: Callable[[Path | None], list[str]]  # the command without IFNAME, or Unavailable
    env: Mapping[str, str] = field(default_factory=dict)
    # how it departs from the UAPI or from upstream wireguard-go: HANDSHAKE_AGE, STALE_SOURCE
    quirks: frozenset[str] = frozenset()

    def command(self, repo: Path | None = None) -> list[str]:
        """The command line without the interface name; raises ``Unavailable``."""
        return self.find(repo)

    def unavailable(self, repo: Path | None = None) -> str | None:
        """None when it can run here, else why not."""
        try:
            self.find(repo)
        except Unavailable as e:
            return f"{self.name}: {e}"
        return None

    def version(self, repo: Path | None = None) -> str:
        """What ``PROGRAM --version`` prints first; "" if nothing. It runs in a network
        namespace of its own with nothing in it, a private /run/wireguard and a PID
        namespace, so that a program that took ``--version`` for an interface name (as
        wireguard-go takes ``--help``) would make it there, and all it started, a daemon
        too, is killed when it exits."""
        prog = self.command(repo)
        while len(prog) > 1 and prog[-1].startswith("-"):  # the program without its flags
            prog = prog[:-1]
        scratch = 'mkdir -p "$0" && mount -t tmpfs tmpfs "$0" && exec "$@"'
        unshare = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child"]
        argv = [*unshare, "sh", "-c", scratch, RUN_DIR, *prog, "--version"]
        env = {**os.environ, **self.env}
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=env)
        except subprocess.TimeoutExpired:
            return ""
        lines = (r.stdout or r.stderr).strip().splitlines()
        return lines[0] if lines else ""


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _program(
    names: Sequence[str], env_var: str, *flags: str, extra_dirs: Sequence[Path] = ()
) -> Callable[[Path | None], list[str]]:
    """Finds the first of ``names`` (``$env_var`` first, then PATH, then ``extra_dirs``)."""

    def find(_repo: Path | None) -> list[str]:
        override = os.environ.get(env_var)
        if override:
            if not _executable(override):
                raise Unavailable(f"${env_var}={override} is not an executable file")
            return [override, *flags]
        for name in names:
            path = shutil.which(name) or next(
                (str(d / name) for d in extra_dirs if _executable(str(d / name))), None
            )
            if path:
                return [path, *flags]
        raise Unavailable(f"{' or '.join(names)} is not installed (or set ${env_var})")

    return find


def main_checkout(repo: Path) -> Path:
    """The main checkout of ``repo`` when ``repo`` is a git worktree (its ``.git`` file
    names ``<main>/.git/worktrees/<name>``), else ``repo``."""
    git = repo / ".git"
    if git.is_file():
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = text.split(":", 1)[1].strip()
            head, sep, _ = gitdir.partition("/.git/worktrees/")
            if sep:
                return Path(head)
    return repo


def anchor_candidates(repo: Path | None) -> list[Path]:
    """Where the upstream wireguard-go anchor may be: ``$TUNOFFLOAD_WIREGUARD_GO_UPSTREAM``,
    else ``<repo>/../shared/anchors/wireguard-go`` for the repository (``repo``, else the
    one this file is in when run from a checkout, else the current directory) and, for a
    worktree, for its main checkout."""
    override = os.environ.get(ENV_UPSTREAM)
    if override:
        return [Path(override)]
    repos = [repo] if repo else [Path(__file__).resolve().parents[2], Path.cwd()]
    out: list[Path] = []
    for r in repos:
        for base in (r, main_checkout(r)):
            p = (base / ".." / "shared" / "anchors" / "wireguard-go").resolve()
            if p not in out:
                out.append(p)
    return out


def _anchor(repo: Path | None) -> list[str]:
    candidates = anchor_candidates(repo)
    for p in candidates:
        if _executable(str(p)):
            return [str(p), "-f"]
    raise Unavailable(
        "the upstream wireguard-go anchor is absent (looked for "
        + ", ".join(map(str, candidates))
        + f"; set ${ENV_UPSTREAM})"
    )


def _ours(_repo: Path | None) -> list[str]:
    if not (OURS_BUILT or os.environ.get(ENV_OURS) == "1"):
        raise Unavailable(
            "not yet built (python -m tunoffload wireguard; set wgpeers.OURS_BUILT or "
            f"${ENV_OURS}=1)"
        )
    return [sys.executable, "-m", "tunoffload", "wireguard", "-f"]


# wireguard-go refuses to start where the kernel has WireGuard unless told this
WIREGUARD_GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}

IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        Implementation(
            "wireguard-go",
            "Debian's wireguard-go (0.0.20220316: no offloads)",
            _program(["wireguard-go"], ENV_WIREGUARD_GO, "-f"),
            WIREGUARD_GO_ENV,
            frozenset({STALE_SOURCE}),
        ),
        Implementation(
            "wireguard-go-upstream",
            "upstream wireguard-go (../shared/anchors; TUN and UDP offloads)",
            _anchor,
            WIREGUARD_GO_ENV,
        ),
        Implementation(
            "boringtun",
            "boringtun-cli 0.7.1 (crates.io)",
            # it drops privileges to the user getlogin() names unless told not to, and
            # without a terminal there is none: it exits
            _program(
                ["boringtun-cli", "boringtun"],
                ENV_BORINGTUN,
                "-f",
                "--disable-drop-privileges",
                extra_dirs=[Path.home() / ".cargo" / "bin"],
            ),
            quirks=frozenset({HANDSHAKE_AGE, STALE_SOURCE}),
        ),
        Implementation("ours", "tunoffload (python -m tunoffload wireguard)", _ours),
    )
}


def implementation(impl: str | Implementation) -> Implementation:
    if isinstance(impl, Implementation):
        return impl
    try:
        return IMPLEMENTATIONS[impl]
    except KeyError:
        known = ", ".join(IMPLEMENTATIONS)
        raise ValueError(f"unknown implementation {impl!r}: {known}") from None


def why_not(*tools: str) -> str | None:
    """None when this process can build namespaces and run ``tools`` (e.g. "wg",
    "iperf3"), else the reason it cannot."""
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for namespaces, mounts and TUN"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool in ("ip", "unshare", "mount", *tools):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is missing"
    return None


# --- running things in the namespaces -----------------------------------------------------

# the mount namespace: a private directory on /run/wireguard, then the command
_MOUNT = 'mkdir -p "$1" && mount --bind "$0" "$1" && shift && exec "$@"'


def in_namespaces(ns: str, argv: Sequence[str], rundir: str | None = None) -> list[str]:
    """``argv`` run in network namespace ``ns`` and, with ``rundir``, in a mount namespace
    of its own where ``rundir`` is mounted on /run/wireguard (for a daemon and for every
    ``wg`` that talks to it). The command is exec'ed: its pid is the one started."""
    cmd = ["ip", "netns", "exec", ns]
    if rundir is not None:
        cmd += ["unshare", "--mount", "sh", "-c", _MOUNT, rundir, RUN_DIR]
    return cmd + list(argv)


def _run(argv: Sequence[str], timeout: float = 30, input: str | None = None) -> str:
    """Runs ``argv``; its stdout, or RuntimeError with its stderr."""
    try:
        r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(argv)}: no answer in {timeout:g} s") from None
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def ip(ns: str, *args: str, check: bool = True) -> str:
    """``ip -n NS ARGS``."""
    argv = ["ip", "-n", ns, *args]
    if check:
        return _run(argv)
    subprocess.run(argv, capture_output=True, timeout=30)
    return ""


def _pdeathsig() -> list[str]:
    # a daemon outlives no harness that died: SIGTERM when the starting thread ends
    return ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


@dataclass
class PeerInfo:
    """One peer line of ``wg show IF dump``."""

    public_key: str
    preshared_key: str | None
    endpoint: str | None  # "ADDR:PORT"
    allowed_ips: list[str]
    latest_handshake: int  # seconds since 1970; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None


@dataclass
class Dump:
    """``wg show IF dump``: the interface line and the peers by public key."""

    private_key: str
    public_key: str
    listen_port: int
    fwmark: int | None
    peers: dict[str, PeerInfo]


def parse_dump(text: str) -> Dump:
    lines = [line.split("\t") for line in text.strip().splitlines()]
    if not lines or len(lines[0]) != 4:
        raise ValueError(f"not a `wg show IF dump`: {text!r}")
    priv, pub, port, fwmark = lines[0]
    peers = {}
    for f in lines[1:]:
        if len(f) != 8:
            raise ValueError(f"a peer line of `wg show dump` with {len(f)} fields: {f}")
        peers[f[0]] = PeerInfo(
            public_key=f[0],
            preshared_key=None if f[1] == "(none)" else f[1],
            endpoint=None if f[2] == "(none)" else f[2],
            allowed_ips=[] if f[3] == "(none)" else f[3].split(","),
            latest_handshake=int(f[4]),
            rx_bytes=int(f[5]),
            tx_bytes=int(f[6]),
            persistent_keepalive=None if f[7] == "off" else int(f[7]),
        )
    return Dump(priv, pub, int(port), None if fwmark == "off" else int(fwmark, 0), peers)


class Peer:
    """One WireGuard daemon in network namespace ``ns``, its UAPI in ``rundir``; made by
    ``start_peer``. What is configured through ``setconf``, ``set`` and ``up`` is replayed
    by ``restart`` (a daemon forgets everything when it stops)."""

    def __init__(
        self,
        impl: Implementation,
        ns: str,
        ifname: str,
        rundir: str,
        repo: Path | None = None,
        underlay: str | None = None,
    ) -> None:
        if not _IFNAME.fullmatch(ifname):
            raise ValueError(f"bad interface name {ifname!r}")
        self.impl, self.ns, self.ifname, self.rundir = impl, ns, ifname, rundir
        self.underlay = underlay  # this side's veth address (its endpoint's address)
        self.argv = in_namespaces(ns, [*_pdeathsig(), *impl.command(repo), ifname], rundir)
        self.log_path = rundir.rstrip("/") + ".log"
        self.proc: subprocess.Popen[bytes] | None = None
        # set by configure_pair
        self.private_key = self.public_key = ""
        self.listen_port = 0
        self.address = ""  # the tunnel address, without prefix length
        self._config: str | None = None
        self._sets: list[tuple[str, ...]] = []
        self._up: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        return self.impl.name

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} in {self.ns} is not running")
        return self.proc.pid

    @property
    def socket_path(self) -> str:
        return os.path.join(self.rundir, f"{self.ifname}.sock")

    def start(self, timeout: float = 15) -> None:
        """Starts the daemon and waits until ``wg show`` answers through its UAPI."""
        os.makedirs(self.rundir, mode=0o700, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.impl.env},
                start_new_session=True,  # a Ctrl-C reaches the harness, which stops it
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"{self.name} exited at start: {self.log_tail()}")
            if os.path.exists(self.socket_path):
                try:
                    self.wg("show", self.ifname, timeout=5)
                    return
                except RuntimeError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name}: no UAPI in {timeout:g} s: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM (SIGKILL after ``timeout``), reaped; its socket and interface removed."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if os.path.exists(f"/run/netns/{self.ns}"):
            ip(self.ns, "link", "del", self.ifname, check=False)

    def restart(self) -> None:
        """Stops and starts the daemon, then applies the configuration again."""
        self.stop()
        self.start()
        if self._config is not None:
            self._setconf(self._config)
        for args in self._sets:
            self.wg("set", self.ifname, *args)
        if self._up:
            self._link_up(*self._up)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.read().strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(no output)"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon (all its threads) so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # --- wg -----------------------------------------------------------------------------

    def wg(self, *args: str, input: str | None = None, timeout: float = 15) -> str:
        """``wg ARGS`` in this peer's network and mount namespaces; its stdout."""
        return _run(in_namespaces(self.ns, ["wg", *args], self.rundir), timeout, input)

    def _setconf(self, text: str) -> None:
        # the configuration (private key included) goes through stdin, never argv
        self.wg("setconf", self.ifname, "/dev/stdin", input=text)

    def setconf(self, text: str) -> None:
        """``wg setconf IF`` with ``text`` (a wg configuration file's content)."""
        self._setconf(text)
        self._config, self._sets = text, []

    def set(self, *args: str) -> None:
        """``wg set IF ARGS`` (a file argument such as ``private-key /dev/stdin`` is not
        replayed by ``restart``: use ``setconf`` for keys)."""
        self.wg("set", self.ifname, *args)
        self._sets.append(args)

    def dump(self) -> Dump:
        """``wg show IF dump``, parsed; a ``HANDSHAKE_AGE`` implementation's handshake
        times turned into times since 1970."""
        d = parse_dump(self.wg("show", self.ifname, "dump"))
        if HANDSHAKE_AGE in self.impl.quirks:
            now = int(time.time())
            for info in d.peers.values():
                if info.latest_handshake:
                    info.latest_handshake = now - info.latest_handshake
        return d

    def peer_info(self, other: Peer) -> PeerInfo:
        """What ``wg show`` says about ``other``."""
        info = self.dump().peers.get(other.public_key)
        if info is None:
            raise AssertionError(f"{self.name}: no peer {other.public_key} in its dump")
        return info

    # --- the interface ------------------------------------------------------------------

    def _link_up(self, cidr: str, mtu: int) -> None:
        ip(self.ns, "address", "add", cidr, "dev", self.ifname)
        ip(self.ns, "link", "set", "dev", self.ifname, "mtu", str(mtu), "up")

    def up(self, cidr: str, mtu: int = MTU) -> None:
        """The tunnel address (``ADDR/LEN``) on the interface, the MTU, link up (what
        wg-quick does after ``setconf``)."""
        self._link_up(cidr, mtu)
        self._up = (cidr, mtu)
        self.address = cidr.split("/")[0]

    def endpoint(self) -> str:
        """This side's endpoint as the other side should see it: ``UNDERLAY:PORT``."""
        return f"{self.underlay}:{self.listen_port}"

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.ifname} in {self.ns}>"


def start_peer(
    impl: str | Implementation,
    ns: str,
    ifname: str,
    rundir: str,
    *,
    repo: Path | None = None,
    underlay: str | None = None,
) -> Peer:
    """Runs ``impl`` in the foreground in namespace ``ns`` as a child process with its UAPI
    in ``rundir`` (mounted on /run/wireguard for it and its ``wg`` commands); returns once
    ``wg show`` answers. ``Peer.stop`` kills and reaps it and removes the interface."""
    peer = Peer(implementation(impl), ns, ifname, rundir, repo, underlay)
    peer.start()
    return peer


# --- the namespace pair ---------------------------------------------------------------------


class Pair:
    """Namespaces ``ns[0]`` and ``ns[1]`` joined by a veth pair (``VETH``, ``UNDERLAY``),
    IPv6 off; ``close`` (or leaving ``with``) stops the peers and deletes everything."""

    def __init__(self, prefix: str = "tunoff-wg", repo: Path | None = None) -> None:
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.ns = (f"{prefix}-a-{tag}", f"{prefix}-b-{tag}")
        self.veth = VETH
        self.underlay = list(UNDERLAY)  # the veth addresses (move_address changes them)
        self.repo = repo
        self.peers: list[Peer] = []
        self.dir = tempfile.mkdtemp(prefix=f"{prefix}-{tag}-")
        self._made: list[str] = []
        try:
            for ns in self.ns:
                _run(["ip", "netns", "add", ns])
                self._made.append(ns)
                ip(ns, "link", "set", "lo", "up")
                # no IPv6 (no autoconfiguration traffic) on the links made after this
                _run(in_namespaces(ns, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]))
                _run(in_namespaces(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]))
            a, b = self.ns
            _run(
                ["ip", "link", "add", VETH[0], "netns", a, "type", "veth"]
                + ["peer", VETH[1], "netns", b]
            )
            for ns, dev, addr in zip(self.ns, VETH, UNDERLAY, strict=True):
                ip(ns, "address", "add", f"{addr}/{PREFIX_LEN}", "dev", dev)
                ip(ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    def start(self, side: int, impl: str | Implementation, ifname: str = "wg0") -> Peer:
        """Runs ``impl`` in namespace ``ns[side]``."""
        rundir = os.path.join(self.dir, f"{side}-{ifname}")
        peer = Peer(implementation(impl), self.ns[side], ifname, rundir, self.repo)
        peer.underlay = self.underlay[side]
        self.peers.append(peer)
        peer.start()
        return peer

    def move_address(self, side: int, new: str) -> None:
        """Moves ``side``'s veth address to ``new`` (same /24): the old one is deleted."""
        ns, dev, old = self.ns[side], self.veth[side], self.underlay[side]
        # deleted first: a primary address deleted takes its secondaries with it
        ip(ns, "address", "del", f"{old}/{PREFIX_LEN}", "dev", dev)
        ip(ns, "address", "add", f"{new}/{PREFIX_LEN}", "dev", dev)
        self.underlay[side] = new
        for p in self.peers:
            if p.ns == ns:
                p.underlay = new

    def close(self) -> None:
        for peer in self.peers:
            with contextlib.suppress(Exception):
                peer.stop()
        self.peers = []
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- configuration ---------------------------------------------------------------------------


def genkey() -> str:
    return _run(["wg", "genkey"]).strip()


def pubkey(private: str) -> str:
    return _run(["wg", "pubkey"], input=private + "\n").strip()


def genpsk() -> str:
    return _run(["wg", "genpsk"]).strip()


def configure_pair(
    a: Peer,
    b: Peer,
    *,
    initiator: Peer | None = None,
    psk: bool = False,
    keepalive: int | None = None,
    ports: tuple[int, int] = LISTEN_PORTS,
    addresses: tuple[str, str] = OVERLAY,
    mtu: int = MTU,
) -> None:
    """Fresh keys, listen ports, each other as peer (the other's tunnel address /32 as
    allowed IP), the tunnel addresses, MTU and link up, on ``a`` and ``b``. Only
    ``initiator`` (default ``a``) is told the other's endpoint, so it must send first: the
    other learns its endpoint from the handshake. ``psk``: a pre-shared key on both;
    ``keepalive``: the initiator's persistent keepalive, in seconds."""
    initiator = initiator or a
    if initiator not in (a, b):
        raise ValueError("the initiator must be a or b")
    shared = genpsk() if psk else None
    for peer, port in zip((a, b), ports, strict=True):
        peer.private_key = genkey()
        peer.public_key = pubkey(peer.private_key)
        peer.listen_port = port
    for me, other, addr in ((a, b, addresses[0]), (b, a, addresses[1])):
        lines = [
            "[Interface]",
            f"PrivateKey = {me.private_key}",
            f"ListenPort = {me.listen_port}",
            "",
            "[Peer]",
            f"PublicKey = {other.public_key}",
            f"AllowedIPs = {addresses[1 if me is a else 0]}/32",
        ]
        if shared:
            lines.append(f"PresharedKey = {shared}")
        if me is initiator:
            if not other.underlay:
                raise ValueError(f"{other!r} has no underlay address for an endpoint")
            lines.append(f"Endpoint = {other.endpoint()}")
            if keepalive:
                lines.append(f"PersistentKeepalive = {keepalive}")
        me.setconf("\n".join(lines) + "\n")
        me.up(f"{addr}/{PREFIX_LEN}", mtu)


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = 10, interval: float = 0.1
) -> None:
    """Polls ``check`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


# --- traffic: TCP with SHA-256, iperf3 ------------------------------------------------------

_TCP = r"""
import hashlib, json, os, socket, sys, threading, time
role, addr = sys.argv[1:3]
port, size, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + timeout
if role == "server":
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port)); ls.listen(1); ls.settimeout(timeout)
    print("ready", flush=True)
    conn = ls.accept()[0]
else:
    while True:  # the first SYN waits for the handshake; a refusal is retried
        try:
            left = max(0.5, deadline - time.monotonic())
            conn = socket.create_connection((addr, port), timeout=left)
            break
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.2)
conn.settimeout(max(1.0, deadline - time.monotonic()))
sent, err = hashlib.sha256(), []
def send():
    try:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 16)); sent.update(chunk); conn.sendall(chunk)
            left -= len(chunk)
        conn.shutdown(socket.SHUT_WR)
    except OSError as e:
        err.append(repr(e))
th = threading.Thread(target=send); th.start()
got, n, buf = hashlib.sha256(), 0, bytearray(1 << 16)
view = memoryview(buf)
try:
    while True:
        k = conn.recv_into(buf)
        if not k: break
        got.update(view[:k]); n += k
except OSError as e:
    err.append(repr(e))
th.join(max(0.0, deadline - time.monotonic()))
print(json.dumps({"sent": size, "sent_sha256": sent.hexdigest(), "received": n,
                  "received_sha256": got.hexdigest(), "error": "; ".join(err)}), flush=True)
"""


@dataclass
class TcpResult:
    """Both ends' view of one ``tcp_exchange``: bytes and SHA-256 sent and received."""

    client: dict[str, Any]
    server: dict[str, Any]
    seconds: float

    @property
    def ok(self) -> bool:
        c, s = self.client, self.server
        return bool(
            c["received"] == s["sent"]
            and s["received"] == c["sent"]
            and c["received_sha256"] == s["sent_sha256"]
            and s["received_sha256"] == c["sent_sha256"]
        )

    def problem(self) -> str:
        """Empty when ``ok``, else what differed."""
        if self.ok:
            return ""
        c, s = self.client, self.server
        return (
            f"client sent {c['sent']} ({c['sent_sha256'][:12]}), server got {s['received']} "
            f"({s['received_sha256'][:12]}); server sent {s['sent']} ({s['sent_sha256'][:12]}),"
            f" client got {c['received']} ({c['received_sha256'][:12]}); errors: "
            f"{c['error']!r} {s['error']!r}"
        )


def _script(ns: str, code: str, *args: object) -> list[str]:
    return in_namespaces(ns, [sys.executable, "-c", code, *map(str, args)])


class _Lines:
    """The lines a child writes to its stdout pipe, read from the file descriptor itself
    (a buffered ``readline`` after ``select`` would leave lines unseen in its buffer)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def read(self, timeout: float) -> list[str]:
        """The complete lines that arrive within ``timeout`` (at least one, unless none
        arrived in time or the pipe closed); waits no longer once one has arrived."""
        deadline = time.monotonic() + timeout
        while not self.eof and b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left < 0 or not select.select([self.fd], [], [], left)[0]:
                break
            chunk = os.read(self.fd, 65536)
            self.buf += chunk
            self.eof = not chunk
        while not self.eof and select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 65536)  # what else is there already
            self.buf += chunk
            self.eof = not chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [line.decode() for line in lines]


def _ready(proc: subprocess.Popen[str], timeout: float, what: str) -> _Lines:
    """Waits for the line "ready" from ``proc``; the reader of its later lines."""
    lines = _Lines(proc)
    first = lines.read(timeout)
    if not first or first[0].strip() != "ready":
        raise RuntimeError(f"{what} did not start (exit {proc.poll()}): {first!r}")
    if first[1:]:
        lines.buf = "\n".join(first[1:]).encode() + b"\n" + lines.buf
    return lines


@contextlib.contextmanager
def _children(*procs: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def tcp_exchange(client: Peer, server: Peer, size: int, timeout: float = 60) -> TcpResult:
    """``size`` random bytes each way at once over one TCP connection from ``client``'s
    namespace to ``server``'s tunnel address; both ends hash what they sent and got."""
    t0 = time.monotonic()
    srv = subprocess.Popen(
        _script(server.ns, _TCP, "server", server.address, TCP_PORT, size, timeout),
        stdout=subprocess.PIPE,
        text=True,
    )
    with _children(srv):
        _ready(srv, 10, "the TCP server")
        cli = subprocess.Popen(
            _script(client.ns, _TCP, "client", server.address, TCP_PORT, size, timeout),
            stdout=subprocess.PIPE,
            text=True,
        )
        with _children(cli):
            try:
                out_c, _ = cli.communicate(timeout=timeout + 5)
                out_s, _ = srv.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"TCP {client.name} -> {server.name}: not done in {timeout:g} s"
                ) from None
    if not out_c.strip() or not out_s.strip():
        raise AssertionError(f"TCP exchange failed: client {out_c!r}, server {out_s!r}")
    return TcpResult(json.loads(out_c), json.loads(out_s), time.monotonic() - t0)


@dataclass
class IperfResult:
    gbit_s: float  # received
    retransmits: int
    seconds: float
    raw: dict[str, Any]


def iperf3_tcp(
    client_ns: str, server_ns: str, server_addr: str, seconds: float, port: int = IPERF_PORT
) -> IperfResult:
    """One TCP stream from ``client_ns`` to ``server_addr`` in ``server_ns`` for
    ``seconds``, measured by iperf3 (``-J``)."""
    srv = subprocess.Popen(
        in_namespaces(server_ns, ["iperf3", "-s", "-1", "-B", server_addr, "-p", str(port)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    with _children(srv):
        wait_for(
            "iperf3 -s listening",
            lambda: bool(
                _run(in_namespaces(server_ns, ["ss", "-Hltn", f"sport = :{port}"])).strip()
            ),
            timeout=10,
            interval=0.05,
        )
        out = _run(
            in_namespaces(
                client_ns,
                ["iperf3", "-c", server_addr, "-p", str(port), "-t", f"{seconds:g}", "-J"]
                + ["--connect-timeout", "10000"],
            ),
            timeout=seconds + 40,
        )
    raw = json.loads(out)
    if "error" in raw:
        raise RuntimeError(f"iperf3: {raw['error']}")
    end = raw["end"]
    return IperfResult(
        gbit_s=end["sum_received"]["bits_per_second"] / 1e9,
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        seconds=float(end["sum_received"]["seconds"]),
        raw=raw,
    )


def udp_counters(ns: str) -> dict[str, int]:
    """The namespace's UDP counters (``/proc/net/snmp``): ``InDatagrams`` (delivered to a
    socket), ``NoPorts``, ``InErrors``, ``RcvbufErrors`` (dropped on a full socket
    buffer), ``InCsumErrors``, ..."""
    text = _run(in_namespaces(ns, ["cat", "/proc/net/snmp"]))
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
    return dict(zip(names, map(int, values), strict=True))


# --- traffic: self-checking UDP datagrams ----------------------------------------------------

UDP_SIZES = (12, 100, 1000, UDP_MAX_UNFRAGMENTED, UDP_MAX_UNFRAGMENTED + 1, 4000, 30000)


def datagram(seq: int, size: int) -> bytes:
    """Datagram ``seq``: sequence number (4), SHA-256 of the body (first 8), the body
    (``size - 12`` bytes, a function of ``seq``)."""
    body = random.Random(seq).randbytes(max(0, size - 12))
    return struct.pack("!I", seq) + hashlib.sha256(body).digest()[:8] + body


_SINK = r"""
import hashlib, select, socket, struct, sys, time
addr, port, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((addr, port))
print("ready", flush=True)
buf = bytearray(65536)
last = time.monotonic()
while time.monotonic() - last < idle:
    r, _, _ = select.select([s, sys.stdin], [], [], 0.2)
    if sys.stdin in r and not sys.stdin.read(1): break  # the parent is done
    if s not in r: continue
    n, src = s.recvfrom_into(buf)
    last = time.monotonic()
    d = bytes(buf[:n])
    ok = n >= 12 and hashlib.sha256(d[12:]).digest()[:8] == d[4:12]
    seq = struct.unpack_from("!I", d)[0] if n >= 4 else -1
    print(seq, n, "ok" if ok else "bad", flush=True)
"""

_SEND = r"""
import json, socket, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i, hexdata in enumerate(json.loads(sys.stdin.read())):
    s.sendto(bytes.fromhex(hexdata), (dst, port))
    if i % 8 == 7: time.sleep(0.002)  # paced: no socket buffer is the bottleneck
"""


class UdpSink:
    """A UDP receiver in ``peer``'s namespace on its tunnel address, checking each
    datagram (``datagram``'s format); ``received`` maps sequence numbers to how many
    intact copies arrived, ``bad`` counts the ones whose digest did not match."""

    def __init__(self, peer: Peer, port: int = UDP_PORT, idle: float = 60) -> None:
        self.peer, self.port = peer, port
        self.received: dict[int, int] = {}
        self.bad = 0
        self.proc = subprocess.Popen(
            _script(peer.ns, _SINK, peer.address, port, idle),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: _Lines | None = None
        try:
            self._lines = _ready(self.proc, 10, "the UDP sink")
        except BaseException:
            self.close()
            raise

    def poll(self, timeout: float = 0.0) -> None:
        """Reads what the sink reported so far (waiting up to ``timeout`` for a line)."""
        if self._lines is None:
            return
        for line in self._lines.read(timeout):
            parts = line.split()
            if len(parts) != 3:
                continue  # not a report (a traceback is in the test's output)
            seq, _n, status = parts
            if status == "ok":
                self.received[int(seq)] = self.received.get(int(seq), 0) + 1
            else:
                self.bad += 1

    def wait(self, seqs: Sequence[int], timeout: float) -> list[int]:
        """Waits until every one of ``seqs`` arrived; the ones that did not."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(min(0.1, max(0.0, deadline - time.monotonic())))
            missing = [s for s in seqs if s not in self.received]
            if not missing or time.monotonic() > deadline:
                return missing

    def close(self) -> None:
        """Stops the sink after reading everything it reported."""
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        while self._lines and not self._lines.eof:
            self.poll(1.0)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> UdpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_datagrams(ns: str, dst: str, port: int, payloads: Sequence[bytes]) -> None:
    """Sends ``payloads`` from namespace ``ns`` to ``dst:port`` (from one new socket)."""
    _run(
        _script(ns, _SEND, dst, port),
        input=json.dumps([p.hex() for p in payloads]),
        timeout=30,
    )


@dataclass
class UdpResult:
    sent: int
    arrived: int
    resent: int  # datagrams sent again because the first copy did not arrive
    duplicates: int
    bad: int
    missing: list[int]


def udp_exchange(
    sender: Peer,
    receiver: Peer,
    count: int = 70,
    sizes: Sequence[int] = UDP_SIZES,
    rounds: int = 3,
    first_seq: int = 0,
) -> UdpResult:
    """``count`` datagrams (sizes cycling through ``sizes``) from ``sender``'s namespace
    to ``receiver``'s tunnel address; the ones that did not arrive within a second are
    sent again, up to ``rounds`` times in all. Every copy that arrives is checked."""
    seqs = list(range(first_seq, first_seq + count))
    size_of = {s: sizes[i % len(sizes)] for i, s in enumerate(seqs)}
    resent = 0
    with UdpSink(receiver) as sink:
        missing = seqs
        for r in range(rounds):
            send_datagrams(
                sender.ns, receiver.address, sink.port, [datagram(s, size_of[s]) for s in missing]
            )
            resent += len(missing) if r else 0
            missing = sink.wait(missing, timeout=2 if r == 0 else 1)
            if not missing:
                break
    return UdpResult(
        sent=count,
        arrived=sum(1 for s in seqs if s in sink.received),
        resent=resent,
        duplicates=sum(n - 1 for n in sink.received.values() if n > 1),
        bad=sink.bad,
        missing=missing,
    )


# --- capture, garbage, forgeries and replays --------------------------------------------------

_CAPTURE = r"""
import json, select, socket, struct, sys, time
dev, ports = sys.argv[1], {int(p) for p in sys.argv[2].split(",")}
limit, seconds = int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR: a GSO frame says its segment size
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((dev, 0))
print("ready", flush=True)
out, end = [], time.monotonic() + seconds
while len(out) < limit and time.monotonic() < end:
    r, _, _ = select.select([s, sys.stdin], [], [], 0.1)
    if sys.stdin in r and not sys.stdin.read(1): end = 0  # stopped: drain what is queued
    while True:
        try: frame, (_, _, pkttype, _, _) = s.recvfrom(262144, socket.MSG_DONTWAIT)
        except BlockingIOError: break
        gso_type, gso_size = frame[1], struct.unpack_from("=H", frame, 4)[0]
        eth = frame[10:]
        if len(eth) < 42 or eth[12:14] != b"\x08\x00" or eth[23] != 17: continue
        ihl = (eth[14] & 15) * 4
        total = struct.unpack_from("!H", eth, 16)[0]
        sport, dport = struct.unpack_from("!HH", eth, 14 + ihl)
        if sport not in ports and dport not in ports: continue
        payload = eth[14 + ihl + 8:14 + total] if total else eth[14 + ihl + 8:]
        step = gso_size if gso_type and gso_size else len(payload) or 1
        for i in range(0, max(len(payload), 1), step):
            out.append({"src": socket.inet_ntoa(eth[26:30]), "sport": sport,
                        "dst": socket.inet_ntoa(eth[30:34]), "dport": dport,
                        "outgoing": pkttype == 4, "time": time.time(),
                        "payload": payload[i:i + step].hex()})
print(json.dumps(out[:limit]), flush=True)
"""


@dataclass
class Datagram:
    """A UDP datagram seen on the veth, or one to send (``src``/``sport``: the source it
    claims; sent from a raw socket when set, else from a new UDP socket)."""

    payload: bytes
    dst: str
    dport: int
    src: str | None = None
    sport: int | None = None
    label: str = ""
    outgoing: bool = False
    time: float = 0.0

    @property
    def message_type(self) -> int:
        return self.payload[0] if self.payload else -1


class Capture:
    """Captures the UDP datagrams from or to ``ports`` on ``dev`` in namespace ``ns``
    (``AF_PACKET``, GSO frames split into their datagrams) until ``stop``, at most
    ``limit`` of them and for at most ``seconds``."""

    def __init__(
        self, ns: str, dev: str, ports: Sequence[int], limit: int = 2000, seconds: float = 60
    ) -> None:
        self.proc = subprocess.Popen(
            _script(ns, _CAPTURE, dev, ",".join(map(str, ports)), limit, seconds),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.datagrams: list[Datagram] = []
        try:
            _ready(self.proc, 10, "the capture")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> list[Datagram]:
        """Ends the capture; the datagrams, in the order seen."""
        if self.proc.returncode is not None:
            return self.datagrams
        try:  # stdin closed: the capture's signal to stop
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = (out or "").strip().splitlines()
        if lines:
            self.datagrams = [
                Datagram(
                    bytes.fromhex(d["payload"]),
                    d["dst"],
                    d["dport"],
                    d["src"],
                    d["sport"],
                    outgoing=d["outgoing"],
                    time=d["time"],
                )
                for d in json.loads(lines[-1])
            ]
        return self.datagrams

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SEND_RAW = r"""
import json, socket, struct, sys, time
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return s
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 0))
for d in json.loads(sys.stdin.read()):
    payload = bytes.fromhex(d["payload"])
    if d["src"] is None:
        udp.sendto(payload, (d["dst"], d["dport"]))
    else:  # as if from src:sport: our own IPv4 + UDP headers (the kernel fills the IP checksum)
        src, dst = socket.inet_aton(d["src"]), socket.inet_aton(d["dst"])
        length = 8 + len(payload)
        pseudo = src + dst + struct.pack("!BBH", 0, 17, length)
        head = struct.pack("!HHHH", d["sport"], d["dport"], length, 0)
        c = 0xFFFF ^ csum(pseudo + head + payload)
        head = struct.pack("!HHHH", d["sport"], d["dport"], length, c or 0xFFFF)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, 17, 0, src, dst)
        raw.sendto(ip + head + payload, (d["dst"], 0))
    time.sleep(0.001)
print(udp.getsockname()[1], flush=True)
"""


def send_raw_datagrams(ns: str, datagrams: Sequence[Datagram]) -> int:
    """Sends ``datagrams`` from namespace ``ns``: the ones with a source as if from it
    (raw IPv4, UDP checksum computed), the others from one new UDP socket; returns that
    socket's port."""
    spec = [
        {"payload": d.payload.hex(), "dst": d.dst, "dport": d.dport, "src": d.src}
        | ({"sport": d.sport} if d.src is not None else {})
        for d in datagrams
    ]
    return int(_run(_script(ns, _SEND_RAW), input=json.dumps(spec), timeout=60).strip() or 0)


def mac1_key(public_key: str) -> bytes:
    """HASH("mac1----" || Spub of the receiver): the key of mac1 on messages to it."""
    return hashlib.blake2s(b"mac1----" + base64.b64decode(public_key)).digest()


def mac1(public_key: str, message: bytes) -> bytes:
    """mac1 of ``message`` (everything before the macs) sent to ``public_key``'s owner."""
    return hashlib.blake2s(message, digest_size=16, key=mac1_key(public_key)).digest()


def forged_datagrams(
    victim: Peer, impersonated: Peer, captured: Sequence[Datagram], rng: random.Random
) -> list[Datagram]:
    """Datagrams onto ``victim``'s listen port that it must drop without effect, each
    labelled: random bytes; a type-1 initiation with a bad mac1 and one with a valid mac1
    around garbage; junk responses and cookie replies; transport messages with a bad tag
    (a receiver index and counter taken from ``captured``, the real traffic of
    ``impersonated`` to ``victim``, when there is one); and every captured datagram
    replayed, once from its own source and once from a new port (where a datagram that
    were accepted would move the endpoint)."""
    dst, port = victim.underlay or "", victim.listen_port
    src, sport = impersonated.underlay, impersonated.listen_port
    out: list[Datagram] = []

    def add(label: str, payload: bytes, spoof: bool = False) -> None:
        out.append(
            Datagram(payload, dst, port, src if spoof else None, sport if spoof else None, label)
        )

    for n in (0, 1, 3, 4, 32, 148, 1500, 4000, *(rng.randrange(2000) for _ in range(12))):
        add("random", rng.randbytes(n))
    for spoof in (False, True):
        head = struct.pack("<I", MESSAGE_INITIATION) + rng.randbytes(INITIATION_LEN - 36)
        add("initiation, bad mac1", head + rng.randbytes(32), spoof)
        add("initiation, valid mac1", head + mac1(victim.public_key, head) + bytes(16), spoof)
        for mtype, size, label in (
            (MESSAGE_RESPONSE, RESPONSE_LEN, "response, junk"),
            (MESSAGE_COOKIE, COOKIE_LEN, "cookie reply, junk"),
            (MESSAGE_TRANSPORT, TRANSPORT_HEADER_LEN + 64, "transport, junk"),
        ):
            add(label, struct.pack("<I", mtype) + rng.randbytes(size - 4), spoof)
    mine = [
        d for d in captured if d.dst == dst and d.dport == port and (d.src, d.sport) == (src, sport)
    ]
    transport = [d for d in mine if d.message_type == MESSAGE_TRANSPORT]
    if transport:
        t = transport[-1].payload
        receiver, counter = t[4:8], struct.unpack_from("<Q", t, 8)[0]
        for spoof in (False, True):
            fresh = struct.pack("<I4sQ", MESSAGE_TRANSPORT, receiver, counter + (1 << 20))
            body = t[TRANSPORT_HEADER_LEN:]
            add("transport, real index, bad tag", fresh + body[:-1] + bytes([t[-1] ^ 1]), spoof)
            add("transport, real index, random body", fresh + rng.randbytes(len(body)), spoof)
    for d in mine:
        kind = {1: "initiation", 2: "response", 3: "cookie", 4: "transport"}.get(
            d.message_type, "other"
        )
        add(f"replayed {kind}", d.payload, spoof=True)
        add(f"replayed {kind}, new port", d.payload)
    return out


# --- a command line -----------------------------------------------------------------------


def _list() -> int:
    repo = Path.cwd()
    for name, impl in IMPLEMENTATIONS.items():
        why = impl.unavailable(repo)
        if why:
            print(f"{name:22} -  {why}")
        else:
            print(f"{name:22} {impl.version(repo) or '?'}  ({' '.join(impl.command(repo))})")
    return 0


def _smoke(a_impl: str, b_impl: str, size: int) -> int:
    reason = why_not("wg")
    if reason:
        print(f"bench_peers: {reason}", file=sys.stderr)
        return 2
    with Pair(repo=Path.cwd()) as pair:
        a, b = pair.start(0, a_impl), pair.start(1, b_impl)
        configure_pair(a, b, initiator=a)
        r = tcp_exchange(a, b, size)
        print(
            f"{a.name} -> {b.name}: {size} bytes each way in {r.seconds:.2f} s: "
            + ("SHA-256 equal" if r.ok else r.problem())
        )
        for p, q in ((a, b), (b, a)):
            info = p.peer_info(q)
            print(
                f"  {p.name}: endpoint {info.endpoint}, handshake {info.latest_handshake},"
                f" rx {info.rx_bytes}, tx {info.tx_bytes}"
            )
        return 0 if r.ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tunoffload.bench.wgpeers", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the implementations, where found, their versions")
    s = sub.add_parser("smoke", help="A initiates to B: handshake and TCP each way")
    s.add_argument("a", choices=IMPLEMENTATIONS)
    s.add_argument("b", choices=IMPLEMENTATIONS)
    s.add_argument("--size", type=int, default=1 << 20, help="bytes each way (1 MiB)")
    args = p.parse_args(argv)
    try:
        return _list() if args.cmd == "list" else _smoke(args.a, args.b, args.size)
    except KeyboardInterrupt:
        print("interrupted; everything made was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
