"""Real WireGuard peers in network namespaces, driven only through their command lines and
``wg``: the interop tests' and the WireGuard benchmark's harness. What is WireGuard's
here; the namespaces, commands and keys are :mod:`tunoffload.testing`'s, the traffic
:mod:`tunoffload.bench.traffic`'s, the capture and the raw datagrams
:mod:`tunoffload.bench.wire`'s.

- ``IMPLEMENTATIONS``: the WireGuard daemons (``Implementation``: how each is found, run,
  and where it departs from the UAPI);
- ``Pair``: two namespaces joined by a veth pair (the underlay, 10.71.0.1/24 and
  10.71.0.2/24, inside those namespaces only); ``Pair.start(side, impl)`` runs one
  implementation in the foreground in one of them, as a child process, and returns a
  ``Peer`` (``wg``, ``setconf``, ``set``, ``dump``, ``restart``, ``stop``, ...);
- ``configure_pair(a, b, ...)``: keys, ports, each other as peer, and the tunnel addresses
  (the overlay, 10.72.0.1/24 and 10.72.0.2/24, MTU 1420 as wg-quick sets it);
- ``parse_dump``: ``wg show IF dump`` as ``Dump`` and ``PeerInfo``;
- ``measure(impl, res, traffic)``: one benchmark run of an implementation on both sides,
  its daemons' CPU time and the underlay's drops (``tunoffload bench``'s ``wireguard``
  row, ``benchmarks/wireguard.py``);
- ``forged_datagrams``: garbage, forged and replayed datagrams onto a peer's listen port.

UAPI sockets live in ``/run/wireguard``, which all network namespaces share, so every
daemon and every ``wg`` command runs in a mount namespace of its own where a private
directory (``Peer.rundir``) is mounted there (``tunoffload.testing.in_netns``).

Everything created (namespaces, veth, interfaces, daemons, directories) is removed by
``Pair.close`` (``with Pair() as pair:``), also on errors and KeyboardInterrupt; each
daemon also gets SIGTERM if the thread that started it dies (``setpriv --pdeathsig``), so
start peers from a thread that outlives them (the main thread). Traffic only goes to
addresses inside the two namespaces, and every wait is bounded. What is found here:
``python benchmarks/wireguard.py --list``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunoffload import TRANSPORT_HEADER_LEN  # type + reserved, receiver index, counter
from tunoffload.bench.report import Result
from tunoffload.bench.wire import Datagram
from tunoffload.testing import (
    WIREGUARD_RUN_DIR,
    Daemon,
    Netns,
    genkey,
    genpsk,
    joined_by_veth,
    python_module,
    wg,
)

UNDERLAY = ("10.71.0.1", "10.71.0.2")  # the veth ends, /24
OVERLAY = ("10.72.0.1", "10.72.0.2")  # the WireGuard interfaces, /24
ROAM_ADDRESS = "10.71.0.11"  # where side 0's underlay address moves in a roaming test
PREFIX_LEN = 24
MTU = 1420  # wg-quick's default on a 1500-byte underlay (IPv6 + UDP + WireGuard overhead)
LISTEN_PORTS = (51871, 51872)
VETH = ("towg0", "towg1")

# environment variables that override where the implementations are found
ENV_WIREGUARD_GO = "TUNOFFLOAD_WIREGUARD_GO"  # Debian's (or any) wireguard-go binary
ENV_UPSTREAM = "TUNOFFLOAD_WIREGUARD_GO_UPSTREAM"  # the upstream wireguard-go anchor
ENV_BORINGTUN = "TUNOFFLOAD_BORINGTUN"  # boringtun-cli

MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_COOKIE, MESSAGE_TRANSPORT = 1, 2, 3, 4
INITIATION_LEN, RESPONSE_LEN, COOKIE_LEN = 148, 92, 64
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
        argv = [*unshare, "sh", "-c", scratch, WIREGUARD_RUN_DIR, *prog, "--version"]
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
    return python_module("tunoffload", "wireguard", "-f")


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
    ``Pair.start``. What is configured through ``setconf``, ``set`` and ``up`` is replayed
    by ``restart`` (a daemon forgets everything when it stops)."""

    def __init__(
        self,
        impl: Implementation,
        ns: Netns,
        ifname: str,
        rundir: str,
        repo: Path | None = None,
        underlay: str | None = None,
    ) -> None:
        if not _IFNAME.fullmatch(ifname):
            raise ValueError(f"bad interface name {ifname!r}")
        self.impl, self.ns, self.ifname, self.rundir = impl, ns, ifname, rundir
        self.underlay = underlay  # this side's veth address (its endpoint's address)
        self.command = [*_pdeathsig(), *impl.command(repo), ifname]
        self.log_path = rundir.rstrip("/") + ".log"
        self.daemon: Daemon | None = None
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
        if self.daemon is None or not self.daemon.alive():
            raise RuntimeError(f"{self.name} in {self.ns.name} is not running")
        return self.daemon.pid

    @property
    def socket_path(self) -> str:
        return os.path.join(self.rundir, f"{self.ifname}.sock")

    def start(self, timeout: float = 15) -> None:
        """Starts the daemon and waits until ``wg show`` answers through its UAPI."""
        os.makedirs(self.rundir, mode=0o700, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.command)}\n")
        env = {**os.environ, **self.impl.env}
        self.daemon = self.ns.start(*self.command, log=self.log_path, rundir=self.rundir, env=env)
        try:
            self.daemon.ready(self._answers, f"{self.name}'s UAPI", timeout)
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if not os.path.exists(self.socket_path):
            return False
        with contextlib.suppress(subprocess.SubprocessError):
            self.wg("show", self.ifname, timeout=5)
            return True
        return False

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM (SIGKILL after ``timeout``), reaped; its socket and interface removed."""
        if self.daemon is not None:
            self.daemon.stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if os.path.exists(self.ns.path):
            self.ns.ip("link", "del", self.ifname, check=False)

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
        return self.daemon is not None and self.daemon.alive()

    def log_tail(self, lines: int = 5) -> str:
        return self.daemon.log_tail(lines) if self.daemon else "(not started)"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon (all its threads) so far."""
        return self.daemon.cpu_seconds() if self.daemon else 0.0

    # --- wg -----------------------------------------------------------------------------

    def wg(self, *args: str, input: str | None = None, timeout: float = 15) -> str:
        """``wg ARGS`` in this peer's network and mount namespaces; its stdout
        (``tunoffload.testing.CommandError`` if it fails)."""
        return wg(*args, ns=self.ns, rundir=self.rundir, input=input, timeout=timeout).stdout

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
        self.ns.ip("address", "add", cidr, "dev", self.ifname)
        self.ns.ip("link", "set", "dev", self.ifname, "mtu", str(mtu), "up")

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
        return f"<Peer {self.name} {self.ifname} in {self.ns.name}>"


# --- the namespace pair ---------------------------------------------------------------------


class Pair:
    """Namespaces ``ns[0]`` and ``ns[1]`` (``tunoffload.testing.Netns``) joined by a veth
    pair (``VETH``, ``UNDERLAY``), IPv6 off; ``close`` (or leaving ``with``) stops the
    peers and deletes everything."""

    def __init__(self, prefix: str = "tunoff-wg", repo: Path | None = None) -> None:
        self.veth = VETH
        self.underlay = list(UNDERLAY)  # the veth addresses (move_address changes them)
        self.repo = repo
        self.peers: list[Peer] = []
        self.dir = tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-")
        self._namespaces = contextlib.ExitStack()
        try:
            self.ns = self._namespaces.enter_context(joined_by_veth(prefix, VETH, UNDERLAY))
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def a(self) -> Netns:
        return self.ns[0]

    @property
    def b(self) -> Netns:
        return self.ns[1]

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
        ns.ip("address", "del", f"{old}/{PREFIX_LEN}", "dev", dev)
        ns.ip("address", "add", f"{new}/{PREFIX_LEN}", "dev", dev)
        self.underlay[side] = new
        for p in self.peers:
            if p.ns is ns:
                p.underlay = new

    def close(self) -> None:
        for peer in self.peers:
            with contextlib.suppress(Exception):
                peer.stop()
        self.peers = []
        self._namespaces.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- configuration ---------------------------------------------------------------------------


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
        peer.private_key, peer.public_key = genkey()
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


# --- benchmark runs --------------------------------------------------------------------------


def measure(
    impl: str | Implementation,
    res: Result,
    traffic: Callable[[Pair, Peer, Peer], None],
    prefix: str = "tunoff-wgb",
    repo: Path | None = None,
) -> Result:
    """One benchmark run of ``impl`` on both sides of a new :class:`Pair` (namespaces
    ``{prefix}-a-...`` and ``{prefix}-b-...``), configured by :func:`configure_pair` (A
    initiates): ``traffic(pair, a, b)`` runs the traffic and sets ``res.gbit_s`` (and
    whatever else it measures); then ``res`` gets both daemons' CPU time over it
    (``cpu_s``, ``cpu_pct``; ``extra["cpu_pct_a"]``, ``["cpu_pct_b"]``) and the datagrams
    the underlay's UDP sockets dropped on a full receive buffer
    (``extra["rcvbuf_drops_a"]``, ``["rcvbuf_drops_b"]``). A run that fails is returned
    with ``res.error`` set; everything made is removed either way."""
    try:
        with Pair(prefix=prefix, repo=repo) as pair:
            a, b = pair.start(0, impl), pair.start(1, impl)
            configure_pair(a, b, initiator=a)
            drops0 = [ns.udp_counters()["RcvbufErrors"] for ns in pair.ns]
            cpu0 = [p.cpu_seconds() for p in (a, b)]
            t0 = time.monotonic()
            traffic(pair, a, b)
            wall = time.monotonic() - t0
            cpu = [p.cpu_seconds() - c for p, c in zip((a, b), cpu0, strict=True)]
            drops = [
                ns.udp_counters()["RcvbufErrors"] - d for ns, d in zip(pair.ns, drops0, strict=True)
            ]
            for p in (a, b):
                if not p.alive():
                    raise RuntimeError(f"{p.name} died: {p.log_tail()}")
        res.cpu_s = sum(cpu)
        res.cpu_pct = 100 * res.cpu_s / wall if wall else 0.0
        res.extra.update(
            cpu_pct_a=round(100 * cpu[0] / wall, 1) if wall else 0.0,
            cpu_pct_b=round(100 * cpu[1] / wall, 1) if wall else 0.0,
            rcvbuf_drops_a=drops[0],
            rcvbuf_drops_b=drops[1],
        )
    except Exception as e:  # a run that fails is reported, the others still run
        res.error = f"{type(e).__name__}: {e}"
    return res


# --- garbage, forgeries and replays --------------------------------------------------------


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
