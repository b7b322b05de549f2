"""Network namespaces for tests and benchmarks: made, joined and deleted by the caller.

The standard library and system commands only (``ip``; ``unshare``, ``mount`` and ``wg``
for WireGuard's): nothing here uses tunoffload's own namespace or device code, so a test
that checks tunoffload against the kernel does not check it against itself. Needs root
(CAP_NET_ADMIN and CAP_SYS_ADMIN).

- :func:`missing_requirements`: why namespaces (and TUN devices, and other tools) cannot
  be used here, or ``None``; a reason to skip a test or refuse a benchmark.
- :class:`Netns`: a uniquely named namespace (``ip netns add``, the name includes the
  pid), deleted by ``close()`` or on leaving a ``with`` block; ``run``/``ip``/``popen``
  run commands in it, ``socket`` makes a socket in it, ``entered()`` moves the calling
  thread into it.
- :func:`veth_between` joins two of them with a veth pair; :func:`joined_by_veth` makes
  both namespaces and the pair for a ``with`` block.
- :class:`Daemon` (``Netns.start``): a command that runs until stopped, its output in a
  log file: waited for (``ready``), stopped (SIGTERM, then SIGKILL), its CPU time read.
- :func:`in_netns`: the command line that runs a command in a namespace and, with
  ``rundir``, with a private ``/run/wireguard`` (WireGuard's UAPI sockets live there, and
  every network namespace shares it): each daemon and each ``wg`` that talks to it gets a
  mount namespace of its own with a directory of the caller's mounted there. :func:`wg`
  runs ``wg`` that way; :func:`genkey`, :func:`pubkey`, :func:`genpsk` make keys with it.
- :func:`python_module`: the command line of ``python -m MODULE`` with this interpreter
  and this package (the programs run inside namespaces are modules, not code in strings).
- :func:`wait_until`: polls a condition for a bounded time; :func:`wait_ready` waits for
  a child's ``ready`` line, and its :class:`LineReader` reads its later lines, both bounded.
- :func:`unshare_netns`: moves the calling thread (a single-threaded process: the
  process) into a new namespace of its own that disappears with it.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tunoffload._sysinfo import CLONE_NEWNET, os_or_libc, unshare_netns

__all__ = [
    "WIREGUARD_RUN_DIR",
    "CommandError",
    "Daemon",
    "LineReader",
    "Netns",
    "genkey",
    "genpsk",
    "in_netns",
    "ip",
    "joined_by_veth",
    "missing_requirements",
    "pubkey",
    "python_module",
    "unshare_netns",
    "veth_between",
    "wait_ready",
    "wait_until",
    "wg",
]

COMMAND_TIMEOUT = 30  # seconds for one `ip` command or one command run in a namespace
WAIT_S = 30  # the default bound of wait_until
WIREGUARD_RUN_DIR = "/run/wireguard"  # = /var/run/wireguard, where wg looks for IFNAME.sock
# in a new mount namespace: directory $0 mounted on /run/wireguard, then the command
_BIND_RUN_DIR = (
    f'mkdir -p {WIREGUARD_RUN_DIR} && mount --bind "$0" {WIREGUARD_RUN_DIR} && exec "$@"'
)


def missing_requirements(tun: bool = True, tools: Sequence[str] = ()) -> str | None:
    """``None`` when network namespaces (and, with ``tun``, TUN devices) can be made
    here and the commands ``tools`` (e.g. ``("wg", "iperf3")``) are installed, else the
    reason they cannot or are not."""
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        if not tun:
            return "needs root (CAP_NET_ADMIN) to create a network namespace"
        return "needs root (CAP_NET_ADMIN) to create network namespaces and TUN devices"
    if tun and not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool in ("ip", "unshare", "mount", *tools):
        if shutil.which(tool) is None:
            what = " (iproute2)" if tool == "ip" else ""
            return f"the `{tool}` command{what} is missing"
    return None


class CommandError(subprocess.CalledProcessError):
    """A command that failed, with what it wrote on stderr in its message."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip()
        return f"{super().__str__()} {err}" if err else super().__str__()


def _run(
    argv: list[str], check: bool, input: str | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise CommandError(r.returncode, argv, r.stdout, r.stderr)
    return r


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip [-n NS] ARGS...``, its output captured as text; a failure raises
    :class:`CommandError` (a ``CalledProcessError`` naming what ``ip`` said) unless
    ``check`` is false."""
    return _run(["ip", *(("-n", ns) if ns else ()), *args], check)


def in_netns(ns: Netns | str | None, argv: Sequence[str], rundir: str | None = None) -> list[str]:
    """The command line that runs ``argv`` in network namespace ``ns`` (a :class:`Netns`
    or a name under ``/run/netns``; ``None``: a new, empty one of its own, gone when the
    command ends) and, with ``rundir``, in a mount namespace of its own where directory
    ``rundir`` is mounted on ``/run/wireguard`` (private propagation: nothing leaks out).
    Every step execs the next: the pid of the process started is the command's."""
    inner = list(argv)
    if rundir is not None:
        mount = ["unshare", "--mount", "--propagation", "private"]
        inner = [*mount, "sh", "-c", _BIND_RUN_DIR, rundir, *inner]
    if ns is None:
        return ["unshare", "--net", *inner]
    return ["ip", "netns", "exec", ns if isinstance(ns, str) else ns.name, *inner]


def wg(
    *args: str,
    ns: Netns | str | None = None,
    rundir: str | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """``wg ARGS`` in namespace ``ns`` (``None``: an empty one of its own, so that it
    sees no kernel interface) against the UAPI sockets in directory ``rundir``
    (see :func:`in_netns`); ``input`` on its stdin (keys go there, never in argv)."""
    return _run(in_netns(ns, ["wg", *args], rundir), check, input, timeout)


def genkey() -> tuple[str, str]:
    """A private key and its public key, base64, from ``wg genkey`` and ``wg pubkey``."""
    private = _run(["wg", "genkey"], True).stdout.strip()
    return private, pubkey(private)


def pubkey(private: str) -> str:
    """The public key of ``private`` (base64), from ``wg pubkey``."""
    return _run(["wg", "pubkey"], True, input=private + "\n").stdout.strip()


def genpsk() -> str:
    """A pre-shared key (base64), from ``wg genpsk``."""
    return _run(["wg", "genpsk"], True).stdout.strip()


def python_module(module: str, *args: str) -> list[str]:
    """The command line of ``python -m MODULE ARGS...`` with this interpreter, this
    package importable from where this process imported it (``PYTHONPATH`` set by
    ``env``, which execs the interpreter)."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    pythonpath = pkg_parent + (os.pathsep + path if path else "")
    return ["env", f"PYTHONPATH={pythonpath}", sys.executable, "-m", module, *args]


def wait_until(
    predicate: Callable[[], object], timeout: float = WAIT_S, interval: float = 0.05
) -> bool:
    """Polls ``predicate`` every ``interval`` seconds until it is true or ``timeout``
    seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class LineReader:
    """The lines a child writes to its stdout pipe (``stdout=subprocess.PIPE``), read
    from the file descriptor itself with a timeout (a buffered ``readline`` after
    ``select`` would leave lines unseen in its buffer)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        if proc.stdout is None:
            raise ValueError("the child's stdout is not a pipe")
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def _more(self) -> None:
        chunk = os.read(self.fd, 65536)
        self.buf += chunk
        self.eof = not chunk

    def read(self, timeout: float) -> list[str]:
        """The complete lines that arrive within ``timeout`` seconds (at least one,
        unless none arrived in time or the pipe closed); waits no longer once one has
        arrived."""
        deadline = time.monotonic() + timeout
        while not self.eof and b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left < 0 or not select.select([self.fd], [], [], left)[0]:
                break
            self._more()
        while not self.eof and select.select([self.fd], [], [], 0)[0]:
            self._more()  # what else is there already
        *lines, self.buf = self.buf.split(b"\n")
        return [line.decode() for line in lines]


def wait_ready(proc: subprocess.Popen[str], what: str, timeout: float = 10) -> LineReader:
    """Waits (up to ``timeout`` seconds) for the line ``ready`` from ``proc``;
    ``RuntimeError`` naming ``what`` if another line or none comes. The reader of its
    later lines."""
    lines = LineReader(proc)
    first = lines.read(timeout)
    if not first or first[0].strip() != "ready":
        raise RuntimeError(f"{what} did not start (exit {proc.poll()}): {first!r}")
    if first[1:]:  # kept for the next read
        lines.buf = "\n".join(first[1:]).encode() + b"\n" + lines.buf
    return lines


class Daemon:
    """A command that runs until it is stopped (``argv``, e.g. from :func:`in_netns`),
    started at once in a session of its own (a Ctrl-C reaches the caller, which stops
    it), stdin on ``/dev/null``, its stdout and stderr appended to the file ``log``;
    ``env`` is its whole environment (default: this process's). ``stop()`` ends it."""

    def __init__(
        self,
        argv: Sequence[str],
        log: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = Path(log)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines of its log, on one line, for a failure message."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(no output)"

    def ready(self, predicate: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
        """Waits until ``predicate`` is true; ``RuntimeError`` naming ``what``, with the
        log's tail, when the command exits first or ``timeout`` seconds pass."""
        if not wait_until(lambda: not self.alive() or predicate(), timeout):
            raise RuntimeError(f"{what}: not within {timeout:g} s: {self.log_tail()}")
        if not self.alive() and not predicate():
            raise RuntimeError(f"{what}: exit {self.proc.returncode}: {self.log_tail()}")

    def wait(self, timeout: float = WAIT_S) -> int:
        """Its exit status, once it exits by itself; ``RuntimeError`` (with the log's
        tail) if it is still running after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"still running after {timeout:g} s: {self.log_tail()}") from None

    def stop(self, timeout: float = 5, sig: int = signal.SIGTERM) -> int:
        """``sig`` (SIGKILL after ``timeout`` seconds), reaped; its exit status. Again is
        harmless."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
        rundir: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` in the namespace (``ip netns exec``; with ``rundir``, see
        :func:`in_netns`), ``input`` on its stdin, its output captured as text
        (:class:`CommandError` on failure unless ``check`` is false)."""
        return _run(self.exec_argv(*argv, rundir=rundir), check, input, timeout)

    def popen(self, *argv: str, rundir: str | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        """Starts ``argv`` in the namespace (with ``rundir``, see :func:`in_netns`);
        ``kwargs`` go to ``subprocess.Popen``."""
        return subprocess.Popen(self.exec_argv(*argv, rundir=rundir), **kwargs)

    def start(
        self,
        *argv: str,
        log: str | os.PathLike[str],
        rundir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Daemon:
        """Starts ``argv`` in the namespace (with ``rundir``, see :func:`in_netns`) as a
        :class:`Daemon`, its output appended to ``log``."""
        return Daemon(self.exec_argv(*argv, rundir=rundir), log, env)

    def exec_argv(self, *argv: str, rundir: str | None = None) -> list[str]:
        """The command line that runs ``argv`` in the namespace (see :func:`in_netns`)."""
        return in_netns(self, argv, rundir)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def link_up(self, dev: str, address: str | None = None) -> None:
        """Gives link ``dev`` ``address`` ("ADDR/PREFIX"), if any, and sets it up."""
        if address is not None:
            self.ip("addr", "add", address, "dev", dev)
        self.ip("link", "set", dev, "up")

    def socket(
        self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """A socket made in the namespace (it stays there wherever it is used)."""
        with self.entered():
            return socket.socket(family, kind, proto)

    def udp_counters(self) -> dict[str, int]:
        """The namespace's UDP counters (``/proc/net/snmp``): ``InDatagrams`` (delivered
        to a socket), ``NoPorts``, ``InErrors``, ``RcvbufErrors`` (dropped on a full
        socket buffer), ``InCsumErrors``, ..."""
        text = self.run("cat", "/proc/net/snmp").stdout
        names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
        return dict(zip(names, map(int, values), strict=True))

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
    ``devs[i]`` in namespace i with address ``addrs[i]/24``, both up, IPv6 off on every
    link made in them (no autoconfiguration: only the caller's own packets cross it);
    deleted on leaving."""
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
