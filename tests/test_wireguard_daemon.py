"""``python -m tunoffload wireguard [-f] IFNAME``, run as wireguard-go is run, with the
native device.

Each daemon runs in a network namespace of the test's and in a mount namespace of its
own with a directory of the test's on ``/run/wireguard`` (``tunoffload.testing.in_netns``);
so do the ``wg`` and ``wg-quick`` commands that drive it. Checked: the TUN device, the
configuration socket and its mode, detaching, signals, the interface deleted under the
daemon, the socket removed, a socket in use and a stale one, a malformed testing
option; two daemons configured with ``wg`` (``tunoffload.bench.wgpeers``, the interop
tests' harness) with the testing options forcing a rekey and cookie replies (each seen
in ``wg show`` or on the wire); ``wg-quick up`` and ``down`` with
``WG_QUICK_USERSPACE_IMPLEMENTATION``. Traffic between two daemons and against the
other implementations: ``test_wireguard_interop.py``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _netns import Netns, joined_by_veth, link_info
from tunoffload import testing
from tunoffload.bench import wgpeers as bp
from tunoffload.bench.traffic import tcp_exchange
from tunoffload.bench.wire import Capture
from tunoffload.testing import genkey, missing_requirements, wait_until, wg

_why = missing_requirements(tools=["wg"])
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

REPO = Path(__file__).resolve().parents[1]
UNDER_A, UNDER_B = "10.99.0.1", "10.99.0.2"
OVER_A, OVER_B = "10.100.0.1", "10.100.0.2"
WAIT_S = 15  # for a daemon to exit


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNOFFLOAD_WG_TESTING")}
    env.pop("LOG_LEVEL", None)
    env.pop("WG_PROCESS_FOREGROUND", None)
    env.update(extra)
    return env


def daemon_pids(ifname: str) -> list[int]:
    """Processes running ``tunoffload wireguard ... IFNAME``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"wireguard" in argv and ifname.encode() in argv and b"tunoffload" in argv:
            pids.append(int(entry))
    return pids


class Daemon(testing.Daemon):
    """One daemon (foreground: our child; detached: the parent is our child) in ``ns``,
    ``rundir`` on its ``/run/wireguard``, its output in ``log``."""

    def __init__(
        self, ns: Netns, rundir: str, ifname: str, log: Path, foreground: bool = True, **env: str
    ) -> None:
        self.ns, self.rundir, self.ifname = ns, rundir, ifname
        self.sock = os.path.join(rundir, f"{ifname}.sock")
        argv = [sys.executable, "-m", "tunoffload", "wireguard"]
        argv += ["-f", ifname] if foreground else [ifname]
        super().__init__(ns.exec_argv(*argv, rundir=rundir), log, daemon_env(**env))

    def serving(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.sock)
            except OSError:
                return False
            return True

    def wait_serving(self) -> None:
        self.ready(self.serving, f"{self.ifname}'s configuration socket")

    def wg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return wg(*args, ns=self.ns, rundir=self.rundir, check=check)

    def wait(self, timeout: float = WAIT_S) -> int:
        return super().wait(timeout)

    def kill(self) -> None:
        self.stop(WAIT_S, signal.SIGKILL)
        for pid in daemon_pids(self.ifname):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ns() -> Iterator[Netns]:
    with Netns("wgpy-d") as n:
        yield n


@pytest.fixture
def rundir(tmp_path: Path) -> str:
    d = tmp_path / "run"
    d.mkdir()
    return str(d)


def ifname(tag: str) -> str:
    return f"wg{tag}{os.getpid() % 100000}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_serves_and_stops_on_signal(ns, rundir, tmp_path, sig) -> None:  # type: ignore[no-untyped-def]
    name = ifname("f")
    d = Daemon(ns, rundir, name, tmp_path / "log", LOG_LEVEL="verbose")
    try:
        d.wait_serving()
        st = os.stat(d.sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        info = link_info(ns, name)
        assert info is not None and info["ifname"] == name  # created in the namespace
        assert info["mtu"] == 1420
        _, pub = genkey()
        d.wg("set", name, "listen-port", "51888", "peer", pub, "allowed-ips", "10.1.0.0/16")
        dump = d.wg("show", name, "dump").stdout.splitlines()
        assert dump[0].split("\t")[2] == "51888"
        assert dump[1].split("\t")[0] == pub and dump[1].split("\t")[3] == "10.1.0.0/16"
        # the new port is bound in the daemon's namespace (IPv4 and IPv6)
        ports = ns.run("ss", "-uanH").stdout
        assert "0.0.0.0:51888" in ports and "[::]:51888" in ports
        d.proc.send_signal(sig)
        assert d.wait() == 0, d.log.read_text()
    finally:
        d.kill()
    assert not os.path.exists(d.sock)
    assert link_info(ns, name) is None
    log = d.log.read_text()
    assert f"DEBUG: ({name}) " in log and "Shutting down" in log
    # wireguard-go's line format: LEVEL: (IFNAME) YYYY/MM/DD HH:MM:SS message
    first = log.splitlines()[0].split(" ")
    assert first[0] == "DEBUG:" and first[1] == f"({name})"
    assert time.strptime(f"{first[2]} {first[3]}", "%Y/%m/%d %H:%M:%S")


def test_stops_when_the_interface_is_deleted(ns, rundir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = ifname("x")
    d = Daemon(ns, rundir, name, tmp_path / "log")
    try:
        d.wait_serving()
        ns.run("ip", "link", "del", name)
        assert d.wait() == 0, d.log.read_text()
    finally:
        d.kill()
    assert not os.path.exists(d.sock)
    log = d.log.read_text()
    assert log == "", log  # LOG_LEVEL unset: errors only, and there were none


def test_stops_when_its_socket_is_removed(ns, rundir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = ifname("s")
    d = Daemon(ns, rundir, name, tmp_path / "log")
    try:
        d.wait_serving()
        os.unlink(d.sock)  # what wg-quick down does to a userspace implementation
        assert d.wait() == 0, d.log.read_text()
    finally:
        d.kill()
    assert link_info(ns, name) is None


def test_detaches_as_wireguard_go(ns, rundir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = ifname("d")
    d = Daemon(ns, rundir, name, tmp_path / "log", foreground=False)
    try:
        assert d.wait() == 0  # the parent exits once the child serves
        assert os.path.exists(d.sock)  # ... so the socket is there already
        (pid,) = daemon_pids(name)
        assert os.getsid(pid) == pid  # a session of its own
        for fd in (0, 1, 2):  # standard streams on /dev/null (LOG_LEVEL unset)
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert d.wg("show", name).stdout.startswith(f"interface: {name}")
        ns.run("ip", "link", "del", name)
        assert wait_until(lambda: not daemon_pids(name))
        assert not os.path.exists(d.sock)
    finally:
        d.kill()


def test_detached_keeps_output_with_log_level(ns, rundir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = ifname("l")
    d = Daemon(ns, rundir, name, tmp_path / "log", foreground=False, LOG_LEVEL="verbose")
    try:
        assert d.wait() == 0, d.log.read_text()
        (pid,) = daemon_pids(name)
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/1") == str(tmp_path / "log")
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not daemon_pids(name))
    finally:
        d.kill()
    assert "UAPI listener started" in d.log.read_text()


def test_foreground_from_the_environment(ns, rundir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = ifname("e")
    d = Daemon(ns, rundir, name, tmp_path / "log", foreground=False, WG_PROCESS_FOREGROUND="1")
    try:
        d.wait_serving()
        assert d.proc.poll() is None  # did not detach
        assert daemon_pids(name) == [d.proc.pid]
        d.proc.terminate()
        assert d.wait() == 0, d.log.read_text()
    finally:
        d.kill()


def test_socket_in_use_and_stale_socket(rundir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = ifname("u")
    with Netns("wgpy-u1") as ns1, Netns("wgpy-u2") as ns2:
        first = Daemon(ns1, rundir, name, tmp_path / "log1")
        try:
            first.wait_serving()
            # the same name in another namespace, the same socket directory: refused
            second = Daemon(ns2, rundir, name, tmp_path / "log2")
            assert second.wait() == 1
            assert "UAPI listen error" in second.log.read_text()
            assert link_info(ns2, name) is None  # it removed its device again
            first.proc.kill()  # killed: its socket file stays behind, stale
            first.wait()
            assert os.path.exists(first.sock)
            third = Daemon(ns2, rundir, name, tmp_path / "log3")
            try:
                third.wait_serving()
                assert third.wg("show", name).returncode == 0  # the stale one replaced
            finally:
                third.kill()
        finally:
            first.kill()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TUNOFFLOAD_WG_TESTING_TIMERS": "rekey_after=5"}, "TUNOFFLOAD_WG_TESTING_TIMERS"),
        ({"TUNOFFLOAD_WG_TESTING_TIMERS": "rekey_timeout=0"}, "rekey_timeout must be above 0"),
    ],
)
def test_refuses_to_start(ns, rundir, tmp_path, env, message) -> None:  # type: ignore[no-untyped-def]
    name = ifname("b")
    d = Daemon(ns, rundir, name, tmp_path / "log", **env)
    try:
        assert d.wait() == 1
    finally:
        d.kill()
    assert message in d.log.read_text()
    assert link_info(ns, name) is None and not os.path.exists(d.sock)


def ours(**env: str) -> bp.Implementation:
    """Our daemon (as the interop tests run it) with ``env`` added."""
    return dataclasses.replace(bp.IMPLEMENTATIONS["ours"], env=env)


def test_rekey_forced_by_testing_timers() -> None:
    timers = ours(TUNOFFLOAD_WG_TESTING_TIMERS="rekey_after_time=2,rekey_timeout=1")
    with bp.Pair(prefix="wgpy-r", repo=REPO) as pair:
        a, b = pair.start(0, timers), pair.start(1, timers)
        bp.configure_pair(a, b, initiator=a)
        tcp_exchange(a.ns, b.ns, b.address, 1 << 16, check=True)
        first = a.peer_info(b).latest_handshake
        assert first > 0
        # traffic for longer than the rekey time: the initiator makes new keys (the
        # handshake time is in seconds: a new one reads later than the first)

        def rekeyed() -> bool:
            tcp_exchange(a.ns, b.ns, b.address, 1 << 16, check=True)
            return a.peer_info(b).latest_handshake > first

        assert wait_until(rekeyed, 15, interval=0.5)
        assert b.peer_info(a).latest_handshake > first
        tcp_exchange(a.ns, b.ns, b.address, 1 << 20, check=True)


def test_cookie_replies_under_load() -> None:
    quick = ours(TUNOFFLOAD_WG_TESTING_TIMERS="rekey_timeout=1")
    loaded = ours(
        TUNOFFLOAD_WG_TESTING_TIMERS="rekey_timeout=1", TUNOFFLOAD_WG_TESTING_UNDER_LOAD="1"
    )
    with bp.Pair(prefix="wgpy-k", repo=REPO) as pair:
        a, b = pair.start(0, quick), pair.start(1, loaded)
        with Capture(pair.ns[0], pair.veth[0], bp.LISTEN_PORTS) as cap:
            bp.configure_pair(a, b, initiator=a)
            # B answers A's first initiation with a cookie reply; A's retry (after
            # rekey_timeout) carries mac2 made with that cookie, and B answers it
            tcp_exchange(a.ns, b.ns, b.address, 1 << 16, check=True)
        assert b.peer_info(a).latest_handshake > 0
    seen = [(d.src, d.message_type, d.payload) for d in cap.datagrams]
    inits = [m for src, kind, m in seen if (src, kind) == (a.underlay, bp.MESSAGE_INITIATION)]
    cookies = [m for src, kind, m in seen if (src, kind) == (b.underlay, bp.MESSAGE_COOKIE)]
    responses = [src for src, kind, _ in seen if kind == bp.MESSAGE_RESPONSE]
    assert len(cookies) >= 1 and responses == [b.underlay], seen
    mac2 = slice(bp.INITIATION_LEN - 16, bp.INITIATION_LEN)
    assert inits[0][mac2] == bytes(16)  # no cookie yet
    assert inits[-1][mac2] != bytes(16)  # the one B answered


WG_QUICK_CONF = """[Interface]
Address = {address}/24
PrivateKey = {private}
ListenPort = {port}

[Peer]
PublicKey = {peer}
AllowedIPs = {peer_address}/32
{endpoint}
"""


def test_wg_quick_up_and_down(tmp_path) -> None:  # type: ignore[no-untyped-def]
    probe = subprocess.run(
        ["unshare", "--net", "ip", "link", "add", "wgprobe", "type", "wireguard"],
        capture_output=True,
    )
    if probe.returncode == 0:
        pytest.skip("this kernel has WireGuard: wg-quick would not use a userspace one")
    tag = f"wgk{os.getpid() % 100000}"
    name = ifname("q")
    wrapper = tmp_path / "tunoffload-wireguard"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m tunoffload wireguard "$@"\n')
    wrapper.chmod(0o755)
    env = daemon_env(WG_QUICK_USERSPACE_IMPLEMENTATION=str(wrapper))
    with joined_by_veth(tag, (f"{tag}a", f"{tag}b"), (UNDER_A, UNDER_B)) as (a_ns, b_ns):
        (priv_a, pub_a), (priv_b, pub_b) = genkey(), genkey()
        sides = [
            (a_ns, OVER_A, priv_a, 51911, pub_b, OVER_B, f"Endpoint = {UNDER_B}:51912"),
            (b_ns, OVER_B, priv_b, 51912, pub_a, OVER_A, ""),
        ]
        confs = []
        for i, (ns, over, priv, port, peer, peer_over, endpoint) in enumerate(sides):
            d = tmp_path / f"side{i}"
            (d / "run").mkdir(parents=True)
            conf = d / f"{name}.conf"
            conf.write_text(
                WG_QUICK_CONF.format(
                    address=over, private=priv, port=port, peer=peer,
                    peer_address=peer_over, endpoint=endpoint,
                )
            )  # fmt: skip
            conf.chmod(0o600)
            confs.append((ns, str(d / "run"), str(conf)))

        def wg_quick(command: str) -> list[str]:
            errors = []
            for ns, run, conf in confs:
                proc = subprocess.run(
                    ns.exec_argv("wg-quick", command, conf, rundir=run),
                    capture_output=True, text=True, timeout=60, env=env,
                )  # fmt: skip
                assert proc.returncode == 0, proc.stderr
                errors.append(proc.stderr)
            return errors

        try:
            for err in wg_quick("up"):
                assert "Falling back to slow userspace implementation" in err, err
            pids = daemon_pids(name)
            assert len(pids) == 2  # detached, one per side
            for ns, over in ((a_ns, OVER_A), (b_ns, OVER_B)):
                info = link_info(ns, name)
                assert info is not None and info["mtu"] == 1420  # wg-quick's, for veth
                assert f"{over}/24" in ns.run("ip", "-o", "addr", "show", name).stdout
            tcp_exchange(a_ns, b_ns, OVER_B, 1 << 20, port=5502, check=True)
            for (ns, run, _), other_under in zip(confs, (UNDER_B, UNDER_A), strict=True):
                dump = wg("show", name, "dump", ns=ns, rundir=run).stdout.splitlines()
                peer = dump[1].split("\t")
                assert peer[2].startswith(f"{other_under}:")  # B learned A's endpoint
                assert int(peer[4]) > 0 and int(peer[5]) > 1 << 20 and int(peer[6]) > 1 << 20
            wg_quick("down")
            assert wait_until(lambda: not daemon_pids(name))
            for ns, run, _ in confs:
                assert not os.path.exists(os.path.join(run, f"{name}.sock"))
                assert link_info(ns, name) is None
        finally:
            for pid in daemon_pids(name):
                os.kill(pid, signal.SIGKILL)
