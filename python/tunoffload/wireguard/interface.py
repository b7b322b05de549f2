"""``tunoffload.wireguard.Interface``: a WireGuard interface in a Python program.

The native ``WireGuardDevice`` holds the protocol (keys, peers, sessions, timers) and
encrypts and decrypts whole batches in place; this class gives it a TUN device with
offload, UDP sockets and threads, each of which makes a few calls per *batch*, never per
packet:

- TUN -> UDP: ``tun.recv_multiple`` (a super-packet split, at offset 16) ->
  ``wg.encrypt`` (messages at offset 0, one peer per read: a super-packet is one flow)
  -> ``udp.send_multiple`` to the peer's endpoint (runs of equal sizes as
  ``UDP_SEGMENT`` sends);
- UDP -> TUN, one thread per socket (IPv4, IPv6): ``udp.recv_multiple`` (coalesced reads
  split, each sender noted in a ``RecvMeta``) -> ``wg.decrypt`` (packets at offset 16,
  handshake and cookie messages after them) -> the optional ``hook`` -> one
  ``tun.send_multiple`` (GRO); the handshake messages -> ``wg.handle_control`` -> sends;
- timers: ``wg.tick()`` when ``wg.next_deadline()`` says, or when the device is kicked
  (``wg.wait_for_kick``: a packet staged for a handshake, a session confirmed, a
  configuration change) -> sends.

The sending thread always runs the device's native loop, ``wg.run_tx``, and so do the
receiving threads without a ``hook`` (``wg.run_rx``): the same steps, each thread's
whole loop in Rust with the GIL released (no interpreter work and no GIL hand-off per
batch); a call returns within half a second, for the thread to look at a stop or a
rebind, and the thread calls it again. With a hook the receiving threads run the steps
above in Python, a few calls per batch.

The configuration goes to the device as the configuration protocol's text (``uapi_set``)
and comes back from it the same way (``uapi_get``): the rules are the device's, this
class only writes its keywords as lines and reads the answer's lines back.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from tunoffload import (
    IDEAL_BATCH_SIZE,
    GroTable,
    RecvMeta,
    TunDevice,
    UdpSocket,
    WireGuardDevice,
)
from tunoffload._netns import NetnsTarget
from tunoffload._netns import netns as enter_netns

from ._device import KEY_LEN, MESSAGE_HEADER_LEN, MESSAGE_OVERHEAD, Datagrams, Endpoint, key_bytes
from .uapi import ERROR_PORT_IN_USE, UapiError, uapi_error

Hook = Callable[[list[bytearray], int, list[int], int], "int | None"]
"""``hook(bufs, offset, sizes, count)``: sees each batch of decrypted packets before it
is written to the TUN device; packet *i* is ``bufs[i][offset:offset + sizes[i]]`` for
*i* < ``count``. It may change packets in place (and their sizes), reorder the entries,
and return a smaller count to write only the first ones; ``None`` writes all."""

DEFAULT_MTU = 1420
BUFFER_SIZE = MESSAGE_HEADER_LEN + 65535 + MESSAGE_OVERHEAD  # a message, padding room
SOCKET_BUFFER = 7 << 20  # as wireguard-go asks for (SO_RCVBUFFORCE / SO_SNDBUFFORCE)
POLL_S = 0.5  # receive timeout: how soon a receiving thread sees a stop or a rebind
TIMER_MAX_WAIT_S = 0.25  # the timer thread looks at the device at least this often
TIMER_MIN_WAIT_S = 0.001  # ... and at most this often
RX_ERROR_WAIT_S = 0.01  # a receiving thread's pause after an error of its native loop
MTU_CHECK_S = 2.0  # how often the TUN device's MTU is re-read (for the padding)
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32
SO_MARK = getattr(socket, "SO_MARK", 36)
# The most buffers the native loops take (``MAX_BATCH`` of the core's ``PumpOptions``,
# which the native module does not export): a larger batch_size fails only in the threads.
MAX_BATCH = 4096
# Counted by the native sending loop alone (the sending thread always runs it): stats()
# takes them from pump_stats(), beside this layer's counters of the same names.
_NATIVE_TX_STATS = ("tun_reads", "tun_packets", "tx_batches", "tx_unsent", "tx_errors")
_OFFSET = MESSAGE_HEADER_LEN  # packets sit here in every buffer; messages at 0

log = logging.getLogger("tunoffload.wireguard")


class _Bound:
    """One bound UDP socket: the ``UdpSocket`` its receiving thread uses and the one the
    sending thread uses (one per thread, as ``UdpSocket`` wants)."""

    __slots__ = ("closing", "rx", "sock", "thread", "tx")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tx = UdpSocket(sock)
        self.rx = UdpSocket(sock)
        self.closing = False
        self.thread: threading.Thread | None = None


class _Binding:
    """The sockets of one listen port: IPv4 and IPv6 (``IPV6_V6ONLY``), as wireguard-go
    binds them; either may be missing where the system has no such family."""

    __slots__ = ("port", "v4", "v6")

    def __init__(self, v4: _Bound | None, v6: _Bound | None, port: int) -> None:
        self.v4, self.v6, self.port = v4, v6, port

    def all(self) -> list[_Bound]:
        return [b for b in (self.v4, self.v6) if b is not None]

    def for_host(self, host: str) -> _Bound | None:
        return self.v6 if ":" in host else self.v4


def _udp_socket(family: int, port: int, fwmark: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for force, plain in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if fwmark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.settimeout(POLL_S)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_binding(port: int, fwmark: int) -> _Binding:
    """IPv4 and IPv6 sockets on one port (``port`` 0: a free one, found in up to 100
    tries, as wireguard-go does). ``OSError`` (``EADDRINUSE``...) when it cannot."""
    for _ in range(100):
        try:
            v4: socket.socket | None = _udp_socket(socket.AF_INET, port, fwmark)
        except OSError as exc:
            if exc.errno != errno.EAFNOSUPPORT:
                raise
            v4 = None
        actual = v4.getsockname()[1] if v4 is not None else port
        try:
            v6: socket.socket | None = _udp_socket(socket.AF_INET6, actual, fwmark)
        except OSError as exc:
            if v4 is not None and exc.errno == errno.EADDRINUSE and port == 0:
                v4.close()
                continue
            if exc.errno != errno.EAFNOSUPPORT:
                if v4 is not None:
                    v4.close()
                raise
            v6 = None
        if v4 is None and v6 is None:
            raise OSError(errno.EAFNOSUPPORT, "neither IPv4 nor IPv6 UDP sockets are available")
        if v6 is not None:
            actual = v6.getsockname()[1]
        return _Binding(
            _Bound(v4) if v4 is not None else None, _Bound(v6) if v6 is not None else None, actual
        )
    raise OSError(errno.EADDRINUSE, "no port free for both IPv4 and IPv6 in 100 tries")


def _close_binding(binding: _Binding) -> None:
    for bound in binding.all():
        bound.closing = True
        bound.sock.close()


class Interface:
    """A WireGuard interface: the TUN device ``name`` with offload, UDP sockets on
    ``listen_port`` (0: any free port) for IPv4 and IPv6, and a native
    ``WireGuardDevice``; :meth:`start` runs it, :meth:`stop` removes it.

    The device and the sockets exist once the constructor returns (``listen_port`` then
    reports the port bound). ``netns`` puts them in that network namespace (a name under
    ``/run/netns``, a path or a descriptor, as ``TunDevice`` takes it). ``addresses``
    are added to the device and ``up=True`` brings it up (or use :attr:`tun`).
    ``private_key`` and the peers' keys may be 32 bytes or text as ``wg`` writes them
    (base64). ``hook`` sees each batch of decrypted packets (see :data:`Hook`).
    ``timers`` and ``force_under_load`` are for tests only: they shorten the protocol's
    timers (names as the native device takes them, e.g. ``{"rekey_after_time": 5}``)
    and make it answer every handshake with a cookie reply. ``device`` drives an
    existing ``WireGuardDevice`` instead of a new one (``timers`` and
    ``force_under_load`` are then the device's own).
    """

    def __init__(
        self,
        name: str,
        *,
        private_key: bytes | str | None = None,
        listen_port: int = 0,
        fwmark: int = 0,
        mtu: int = DEFAULT_MTU,
        netns: NetnsTarget | None = None,
        hook: Hook | None = None,
        addresses: Sequence[str] = (),
        up: bool = False,
        batch_size: int = IDEAL_BATCH_SIZE,
        timers: Mapping[str, float] | None = None,
        force_under_load: bool = False,
        device: WireGuardDevice | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in 1..={MAX_BATCH}, not {batch_size}")
        key = None if private_key is None else key_bytes(private_key, "private_key")
        if device is None:
            device = WireGuardDevice(
                timers=None if timers is None else dict(timers),
                force_under_load=force_under_load,
            )
        if key is not None:
            device.uapi_set(f"private_key={key.hex()}\n")
        self._wg = device
        self._netns = netns
        self._hook = hook
        self._batch = batch_size
        self._fwmark = fwmark
        self._lock = threading.Lock()  # configuration changes that touch the sockets
        self._stopping = threading.Event()
        self._done = threading.Event()  # stopped, or the device is gone, or a thread died
        self._threads: list[threading.Thread] = []
        self._started = False
        self.reason: str | None = None
        """Why the interface stopped: ``"stopped"``, ``"device deleted"``, or the
        error of a thread that failed; ``None`` while it runs."""
        self.error: BaseException | None = None
        self._counters_lock = threading.Lock()  # counted from several threads: see _count
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "udp_reads",
                "udp_datagrams",
                "rx_packets",
                "rx_control",
                "rx_errors",
                "tun_write_errors",
                "hook_errors",
                "control_sent",
                "control_errors",
            ),
            0,
        )
        self._tun = TunDevice(name, offload=True, mtu=mtu, netns=netns)
        binding: _Binding | None = None
        try:
            self._mtu = mtu
            self._apply_mtu(mtu)
            for address in addresses:
                self._tun.add_address(address)
            if up:
                self._tun.up()
            binding = self._binding = self._open_binding(listen_port, fwmark)
            self._wg.uapi_set(f"listen_port={binding.port}\nfwmark={fwmark}\n")
        except BaseException:
            if binding is not None:
                _close_binding(binding)
            self._tun.close()
            raise
        self.name = self._tun.name

    # --- configuration ----------------------------------------------------------------

    @property
    def device(self) -> WireGuardDevice:
        """The native ``WireGuardDevice`` (protocol state, counters)."""
        return self._wg

    @property
    def tun(self) -> TunDevice:
        """The TUN device (addresses, MTU, up/down, its counters)."""
        return self._tun

    @property
    def private_key(self) -> bytes | None:
        """The private key (as the device stores it, clamped); ``None`` when unset.
        Setting it (``None`` clears it) changes the public key."""
        for line in self._wg.uapi_get().splitlines():
            if line.startswith("private_key="):
                return bytes.fromhex(line.partition("=")[2])
        return None

    @private_key.setter
    def private_key(self, key: bytes | str | None) -> None:
        raw = bytes(KEY_LEN) if key is None else key_bytes(key, "private_key")
        self._wg.uapi_set(f"private_key={raw.hex()}\n")
        self._wg.kick()

    @property
    def public_key(self) -> bytes | None:
        return self._wg.public_key

    @property
    def listen_port(self) -> int:
        """The UDP port bound. Setting it binds new sockets (0: any free port) and
        closes the old ones once bound; ``OSError`` (the old ones kept) if it cannot."""
        return self._binding.port

    @listen_port.setter
    def listen_port(self, port: int) -> None:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"listen_port must be in 0..=65535, not {port}")
        with self._lock:
            self._rebind(port)

    @property
    def fwmark(self) -> int:
        return self._fwmark

    @fwmark.setter
    def fwmark(self, mark: int) -> None:
        if not 0 <= mark <= 0xFFFFFFFF:
            raise ValueError(f"fwmark must be in 0..=4294967295, not {mark}")
        with self._lock:
            self._mark(mark)

    def set_peer(
        self,
        public_key: bytes | str,
        *,
        remove: bool = False,
        update_only: bool = False,
        preshared_key: bytes | str | None = None,
        endpoint: Endpoint | str | None = None,
        persistent_keepalive: int | None = None,
        replace_allowed_ips: bool = False,
        allowed_ips: Sequence[str] = (),
        remove_allowed_ips: Sequence[str] = (),
    ) -> None:
        """Adds, changes or removes a peer, as one peer section of the configuration
        protocol (keys may be text as ``wg`` writes them; ``endpoint`` a ``(host, port)``
        tuple or ``"host:port"`` / ``"[v6]:port"``; ``None`` leaves a setting as it is;
        a preshared key of 32 zero bytes removes it). Lines go in the order of the
        keywords (``update_only`` first, ``replace_allowed_ips`` before the removals,
        then the additions). A refused value is the device's ``ValueError`` (with its
        ``kind``); the settings before it in that order stay applied, as with ``wg set``.
        """
        lines = [f"public_key={key_bytes(public_key, 'public_key').hex()}"]
        if update_only:
            lines.append("update_only=true")
        if remove:
            lines.append("remove=true")
        if preshared_key is not None:
            lines.append(f"preshared_key={key_bytes(preshared_key, 'preshared_key').hex()}")
        if endpoint is not None:
            lines.append(f"endpoint={_endpoint_text(endpoint)}")
        if persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={int(persistent_keepalive)}")
        if replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip=-{p}" for p in remove_allowed_ips]
        lines += [f"allowed_ip={p}" for p in allowed_ips]
        self._wg.uapi_set("".join(f"{line}\n" for line in lines))
        self._wg.kick()

    def remove_peer(self, public_key: bytes | str) -> None:
        self.set_peer(public_key, remove=True)

    def remove_all_peers(self) -> None:
        self._wg.uapi_set("replace_peers=true\n")
        self._wg.kick()

    def peers(self) -> list[dict[str, Any]]:
        """Each peer's configuration and counters, as the device reports them (see
        :func:`peers_of`)."""
        return peers_of(self._wg.uapi_get())

    def uapi_get(self) -> str:
        """The body of a configuration protocol ``get=1`` answer (the device's)."""
        return self._wg.uapi_get()

    def uapi_set(self, text: str) -> None:
        """Applies a configuration protocol ``set=1`` operation (its lines, without
        ``set=1``) to the device, then binds new sockets if it changed the listen port
        and marks them if it changed the fwmark. A refusal is a :class:`UapiError` with
        the errno a client reads: the device's for a bad line (the lines before it stay
        applied), ``-EADDRINUSE`` when the port cannot be bound or the mark set (the old
        sockets and the device's port or mark then kept). Unlike wireguard-go, which
        binds as it reads the ``listen_port`` line, the sockets change after the whole
        operation: a refused port does not stop the lines after it."""
        with self._lock:
            wg = self._wg
            port, mark = wg.listen_port, wg.fwmark
            error: UapiError | None = None
            try:
                wg.uapi_set(text)
            except Exception as exc:
                error = uapi_error(exc)
            # A listen_port or fwmark line that took effect came before any refused line
            # (the device stops at the first): its failure is the one to report. The
            # mark first, so that new sockets get the new one.
            for key, before, apply in (
                ("fwmark", mark, self._mark),
                ("listen_port", port, self._rebind),
            ):
                now = getattr(wg, key)
                if now == before:
                    continue
                try:
                    apply(now)
                except OSError as exc:
                    kept = self._fwmark if key == "fwmark" else self._binding.port
                    wg.uapi_set(f"{key}={kept}\n")  # the device keeps what the sockets have
                    error = UapiError(ERROR_PORT_IN_USE, f"failed to set {key}: {exc}")
        self._wg.kick()
        if error is not None:
            raise error

    def stats(self) -> dict[str, int]:
        """The native device's counters (drops by reason...) and this layer's: reads,
        batches and errors per direction (the native loops' and the Python ones')."""
        out = dict(self._wg.stats())
        native = self._wg.pump_stats()
        with self._counters_lock:
            counters = dict(self._counters)
        out.update({k: native.get(k, 0) for k in _NATIVE_TX_STATS})
        out.update({k: v + native.get(k, 0) for k, v in counters.items()})
        return out

    def _count(self, key: str, n: int = 1) -> None:
        """Adds ``n`` to one of this layer's counters: ``+=`` on a dict entry is no atomic
        step, and the receiving threads (one per socket) and the timer thread count."""
        with self._counters_lock:
            self._counters[key] += n

    def config_changed(self) -> None:
        """Lets the timer thread send what a configuration change queued (a keepalive
        for a persistent keepalive turned on, a handshake for staged packets)."""
        self._wg.kick()

    # --- running ----------------------------------------------------------------------

    def start(self) -> None:
        """Starts the threads (once)."""
        with self._lock:
            if self._started:
                raise RuntimeError(f"{self.name}: started already")
            if self._stopping.is_set():
                raise RuntimeError(f"{self.name}: stopped")
            self._started = True
            self._spawn("wg-tx", self._tx_native)
            self._spawn("wg-timer", self._timer_loop)
            for bound in self._binding.all():
                self._start_rx(bound)

    def stop(self) -> None:
        """Stops the threads, closes the sockets and the TUN device (which removes the
        interface); idempotent."""
        with self._lock:
            first = not self._stopping.is_set()
            self._stopping.set()
            self._wg.kick()
            if first:
                self._tun.close()  # wakes the sending thread
                for bound in self._binding.all():
                    bound.closing = True
        me = threading.current_thread()
        for th in list(self._threads):
            if th is not me:
                th.join()
        with self._lock:
            if first:
                _close_binding(self._binding)
            self._finish("stopped")

    close = stop

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the interface stops (:meth:`stop`, its device deleted, or a
        thread failed: see :attr:`reason`); returns whether it did within ``timeout``."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return self._started and not self._done.is_set()

    def __enter__(self) -> Interface:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else (self.reason or "not started")
        return f"<tunoffload.wireguard.Interface {self.name!r} port {self.listen_port} {state}>"

    # --- internals --------------------------------------------------------------------

    @contextlib.contextmanager
    def _in_netns(self) -> Iterator[None]:
        if self._netns is None:
            yield
        else:
            with enter_netns(self._netns):
                yield

    def _open_binding(self, port: int, fwmark: int) -> _Binding:
        with self._in_netns():
            return _open_binding(port, fwmark)

    def _rebind(self, port: int) -> None:
        """Binds sockets on ``port`` (0: a free one), starts their receivers and retires
        the old ones, and tells the device the port bound (``self._lock`` held);
        ``OSError`` keeps the old ones. The port already bound is kept as it is.
        ``OSError`` (``ENODEV``) once stopping: the sockets would be nobody's to close."""
        self._check_not_stopped()
        if port != 0 and port == self._binding.port:
            self._wg.uapi_set(f"listen_port={port}\n")
            return
        new = self._open_binding(port, self._fwmark)
        old, self._binding = self._binding, new
        self._wg.uapi_set(f"listen_port={new.port}\n")
        if self._started and not self._stopping.is_set():
            for bound in new.all():
                self._start_rx(bound)
        self._retire(old)
        log.debug("UDP bind has been updated (port %d)", new.port)

    def _mark(self, mark: int) -> None:
        """``SO_MARK`` on every socket (``self._lock`` held); ``OSError`` (``ENODEV``)
        once stopping."""
        self._check_not_stopped()
        for bound in self._binding.all():
            bound.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        self._fwmark = mark
        self._wg.uapi_set(f"fwmark={mark}\n")

    def _check_not_stopped(self) -> None:
        """``OSError`` once :meth:`stop` began (``self._lock`` held): a configuration
        change that would touch the sockets is refused, as a port that cannot be bound
        is (by :meth:`uapi_set` with ``-EADDRINUSE``, the device's setting put back)."""
        if self._stopping.is_set():
            raise OSError(errno.ENODEV, f"{self.name}: the interface is stopped")

    def _apply_mtu(self, mtu: int) -> None:
        """The padding limit of the device and the super-packet size of the TUN device
        (each super-packet read leaves in one ``UDP_SEGMENT`` send)."""
        self._wg.mtu = mtu
        datagram = min(max(mtu, 1) + MESSAGE_OVERHEAD, 65527)
        self._tun.gso_max_segs = UdpSocket.max_segments(datagram)

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.reason is None:
            self.reason, self.error = reason, error
        self._done.set()

    def _spawn(self, name: str, loop: Callable[..., None], *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                loop(*args)
            except BaseException as exc:
                if not self._stopping.is_set():
                    log.error("%s: %s failed: %r", self.name, name, exc, exc_info=True)
                    self._finish(f"{name} failed: {exc!r}", exc)

        th = threading.Thread(target=body, name=f"{name}:{self.name}", daemon=True)
        self._threads.append(th)
        th.start()
        return th

    def _start_rx(self, bound: _Bound) -> None:
        name = "wg-rx6" if bound.sock.family == socket.AF_INET6 else "wg-rx4"
        loop = self._rx_loop if self._hook else self._rx_native
        bound.thread = self._spawn(name, loop, bound)

    def _retire(self, binding: _Binding) -> None:
        """Old sockets after a rebind: each receiving thread closes its own socket when
        it sees ``closing`` (within ``POLL_S``), so no descriptor is closed under it."""
        for bound in binding.all():
            bound.closing = True
            if bound.thread is None:
                bound.sock.close()

    def _send_datagrams(self, out: Datagrams) -> None:
        """Sends the device's control output (handshakes, cookies, keepalives, packets
        that waited for a handshake), each to its endpoint."""
        binding = self._binding
        count = self._count
        for data, endpoint in out:
            bound = binding.for_host(endpoint[0])
            try:
                if bound is None:
                    raise OSError(errno.EAFNOSUPPORT, "no socket of that address family")
                bound.sock.sendto(data, endpoint)
                count("control_sent")
            except OSError as exc:
                count("control_errors")
                log.debug("%s: sending to %s: %s", self.name, endpoint, exc)

    def _tun_gone(self, exc: OSError) -> bool:
        """Whether an error of the TUN device ends the sending thread: the interface
        stopped, or deleted (``ip link del``: ``EBADFD``)."""
        if self._stopping.is_set():
            return True
        if exc.errno == errno.EBADFD:
            log.debug("%s: the device was deleted", self.name)
            self._finish("device deleted")
            return True
        return False

    def _tx_native(self) -> None:
        """TUN -> UDP as the device's native loop, on the sockets bound now.

        A call runs until the device's listen port differs from the one it started
        with, so it must not start on sockets of another port than the device's: a
        configuration change sets the device's port before :meth:`_rebind` binds the
        new sockets (and the ``listen_port`` setter the other way round), and a call
        started on the old sockets then would send from the old port for a whole slice
        (the peer roaming back to a port about to close). Both happen under
        ``self._lock``: a mismatch waits for it, then looks again. One that outlasts
        the lock (the device's port set directly, not through this class) runs on the
        sockets there are, as before."""
        while True:
            binding = self._binding
            if binding.port != self._wg.listen_port:
                with self._lock:  # a rebind under way: wait for it to finish
                    pass
                if self._binding is not binding or binding.port == self._wg.listen_port:
                    continue
            v4, v6 = binding.v4, binding.v6
            try:
                self._wg.run_tx(
                    self._tun, v4.tx if v4 else None, v6.tx if v6 else None, self._batch
                )
            except OSError as exc:
                if self._tun_gone(exc):
                    return
                if binding is not self._binding:
                    continue  # its sockets were closed by a rebind meanwhile
                raise

    def _rx_native(self, bound: _Bound) -> None:
        """UDP -> TUN as the device's native loop, until the socket is retired."""
        try:
            while not bound.closing:
                try:
                    self._wg.run_rx(self._tun, bound.rx, self._batch)
                except OSError as exc:
                    if bound.closing or self._stopping.is_set():
                        return
                    # deleted (the sending thread says so), or the TUN device closed
                    if exc.errno in (errno.EBADFD, errno.EBADF):
                        return
                    self._count("rx_errors")
                    log.debug("%s: UDP -> TUN: %s", self.name, exc)
                    self._stopping.wait(RX_ERROR_WAIT_S)  # an error that repeats: no spin
        finally:
            bound.sock.close()

    def _rx_loop(self, bound: _Bound) -> None:
        tun, wg, hook = self._tun, self._wg, self._hook
        stopping = self._stopping
        count = self._count
        udp = bound.rx
        bufs = [bytearray(BUFFER_SIZE) for _ in range(self._batch)]
        sizes = [0] * self._batch
        gro = GroTable()
        meta = RecvMeta(self._batch)
        try:
            while not bound.closing:
                try:
                    n = udp.recv_multiple(bufs, sizes, 0, meta=meta)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if bound.closing or stopping.is_set():
                        return
                    count("rx_errors")
                    log.debug("%s: UDP receive: %s", self.name, exc)
                    continue
                count("udp_reads")
                count("udp_datagrams", n)
                try:
                    # (wake: the device has kicked the timer thread already)
                    packets, control, _wake = wg.decrypt(bufs, 0, sizes, n, meta)
                except ValueError as exc:  # the batch refused as a whole: dropped
                    count("rx_errors")
                    log.debug("%s: decrypt: %s", self.name, exc)
                    continue
                messages = (
                    [
                        (bytes(memoryview(bufs[i])[: sizes[i]]), meta.source(i))
                        for i in range(packets, packets + control)
                    ]
                    if control
                    else ()
                )
                if packets and hook is not None:
                    try:
                        kept = hook(bufs, _OFFSET, sizes, packets)
                        if kept is not None:  # (a count that is no int: the hook failed)
                            packets = max(0, min(int(kept), packets))
                    except Exception as exc:
                        count("hook_errors")
                        log.error("%s: the hook failed: %r", self.name, exc, exc_info=True)
                        packets = 0
                if packets:
                    count("rx_packets", packets)
                    try:
                        tun.send_multiple(gro, bufs, _OFFSET, sizes=sizes, count=packets)
                    except (OSError, ValueError) as exc:
                        if stopping.is_set():
                            return
                        count("tun_write_errors")
                        log.debug("%s: TUN write: %s", self.name, exc)
                for msg, sender in messages:
                    count("rx_control")
                    if sender is None:  # no source reported: nowhere to answer
                        count("rx_errors")
                        continue
                    try:
                        out = wg.handle_control(msg, sender)
                    except ValueError as exc:  # a message refused: dropped
                        count("rx_errors")
                        log.debug("%s: handshake message from %s: %s", self.name, sender, exc)
                        continue
                    self._send_datagrams(out)
        finally:
            bound.sock.close()

    def _timer_loop(self) -> None:
        wg, stopping = self._wg, self._stopping
        mtu_due = time.monotonic() + MTU_CHECK_S
        while not stopping.is_set():
            out = wg.tick()
            if out:
                self._send_datagrams(out)
            deadline = wg.next_deadline()
            wait = TIMER_MAX_WAIT_S if deadline is None else min(deadline, TIMER_MAX_WAIT_S)
            wg.wait_for_kick(max(wait, TIMER_MIN_WAIT_S))  # GIL released; a kick ends it
            if time.monotonic() >= mtu_due and not stopping.is_set():
                mtu_due = time.monotonic() + MTU_CHECK_S
                self._check_mtu()

    def _check_mtu(self) -> None:
        try:
            mtu = self._tun.mtu
        except OSError:
            return  # the device is going away; the sending thread will tell
        if mtu != self._mtu:
            log.debug("%s: MTU %d -> %d", self.name, self._mtu, mtu)
            self._mtu = mtu
            self._apply_mtu(mtu)


def _endpoint_text(endpoint: Endpoint | str) -> str:
    """An endpoint as the configuration protocol writes it: ``host:port``, ``[v6]:port``
    for a ``(host, port)`` tuple whose host has a ``:``; text as it is (the device
    parses it)."""
    if isinstance(endpoint, str):
        return endpoint
    host, port = endpoint[0], int(endpoint[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peers_of(get: str) -> list[dict[str, Any]]:
    """The peers of a ``get=1`` answer's body, in its order, each a dict:
    ``public_key`` and ``preshared_key`` (``bytes``; ``None`` for no preshared key),
    ``endpoint`` (``(host, port)``, an IPv6 host without brackets, or ``None``),
    ``last_handshake`` (``(sec, nsec)``, wall clock; ``(0, 0)`` never), ``tx_bytes``,
    ``rx_bytes``, ``persistent_keepalive`` (seconds, 0 off) and ``allowed_ips`` (the
    prefixes as text, in the order added)."""
    peers: list[dict[str, Any]] = []
    peer: dict[str, Any] = {}
    for line in get.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            peer = {
                "public_key": bytes.fromhex(value),
                "preshared_key": None,
                "endpoint": None,
                "last_handshake": (0, 0),
                "tx_bytes": 0,
                "rx_bytes": 0,
                "persistent_keepalive": 0,
                "allowed_ips": [],
            }
            peers.append(peer)
        elif not peers:
            continue  # the device's own lines
        elif key == "preshared_key":
            psk = bytes.fromhex(value)
            peer["preshared_key"] = None if psk == bytes(KEY_LEN) else psk
        elif key == "endpoint":
            host, _, port = value.rpartition(":")
            peer["endpoint"] = (host.removeprefix("[").removesuffix("]"), int(port))
        elif key == "last_handshake_time_sec":
            peer["last_handshake"] = (int(value), peer["last_handshake"][1])
        elif key == "last_handshake_time_nsec":
            peer["last_handshake"] = (peer["last_handshake"][0], int(value))
        elif key in ("tx_bytes", "rx_bytes"):
            peer[key] = int(value)
        elif key == "persistent_keepalive_interval":
            peer["persistent_keepalive"] = int(value)
        elif key == "allowed_ip":
            peer["allowed_ips"].append(value)
    return peers
