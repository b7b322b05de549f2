"""Type stubs for the native module (Rust, PyO3)."""

# Conventions, checked by `python -m mypy.stubtest tunoffload._native` (in .ci/typecheck):
# - every #[pyclass] is `@final` here (PyO3 classes cannot be subclassed unless declared
#   `subclass`), and its constructor is `__new__` (PyO3's #[new]), never `__init__`;
# - dunder parameters are positional-only, as the runtime has them:
#   `def __eq__(self, value: object, /) -> bool`; a class with `__eq__` and no `__hash__`
#   is unhashable at runtime: say so with `__hash__: ClassVar[None]`;
# - `__all__` lists exactly the names the module adds (PyO3 appends every class and
#   function to the runtime `__all__`): add new names to it as well as to `__init__.py`;
# - buffers: `Buffer` (any object with the buffer protocol) where the runtime takes one.

import os
import socket
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any, ClassVar, Final, final

from typing_extensions import Buffer

__all__ = [
    "__version__",
    "VIRTIO_NET_HDR_LEN",
    "IDEAL_BATCH_SIZE",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VIRTIO_NET_HDR_GSO_UDP_L4",
    "VIRTIO_NET_HDR_GSO_ECN",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "UDP_MAX_SEGMENTS",
    "ECN_NOT_ECT",
    "ECN_ECT1",
    "ECN_ECT0",
    "ECN_CE",
    "ERROR_KINDS",
    "InputError",
    "VirtioNetHdr",
    "GroTable",
    "gso_split",
    "handle_gro",
    "TunDevice",
    "NetnsSwitch",
    "netns_enter",
    "UdpSocket",
    "TRANSPORT_HEADER_LEN",
    "TRANSPORT_OVERHEAD",
    "Sealer",
    "Opener",
    "RecvMeta",
    "WireGuardDevice",
]

__version__: Final[str]

VIRTIO_NET_HDR_LEN: Final[int]
IDEAL_BATCH_SIZE: Final[int]
UDP_MAX_SEGMENTS: Final[int]
ECN_NOT_ECT: Final[int]
"""0: not ECN-capable transport (RFC 3168)."""
ECN_ECT1: Final[int]
"""1: ECN-capable transport (1)."""
ECN_ECT0: Final[int]
"""2: ECN-capable transport (0)."""
ECN_CE: Final[int]
"""3: congestion experienced."""
ERROR_KINDS: Final[tuple[str, ...]]
"""Every ``kind`` an :class:`InputError` can carry. Names are stable; new ones may be
added."""
VIRTIO_NET_HDR_GSO_NONE: Final[int]
VIRTIO_NET_HDR_GSO_TCPV4: Final[int]
VIRTIO_NET_HDR_GSO_UDP: Final[int]
VIRTIO_NET_HDR_GSO_TCPV6: Final[int]
VIRTIO_NET_HDR_GSO_UDP_L4: Final[int]
VIRTIO_NET_HDR_GSO_ECN: Final[int]
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final[int]
VIRTIO_NET_HDR_F_DATA_VALID: Final[int]

class InputError(ValueError):
    """A packet, header or argument tunoffload refuses: a ``ValueError`` whose ``kind`` (one
    of ``ERROR_KINDS``) says which refusal and whose ``index`` which buffer or packet (or
    ``None``)."""

    kind: str
    index: int | None

@final
class VirtioNetHdr:
    """The 10-byte ``struct virtio_net_hdr``, in native byte order.

    A field out of its range (``flags``/``gso_type`` 0..=255, the others 0..=65535) raises
    ``OverflowError`` naming the field and the range; a non-int raises ``TypeError``.
    """

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    def __new__(
        cls,
        flags: int = 0,
        gso_type: int = 0,
        hdr_len: int = 0,
        gso_size: int = 0,
        csum_start: int = 0,
        csum_offset: int = 0,
    ) -> VirtioNetHdr: ...
    @staticmethod
    def decode(buf: Buffer) -> VirtioNetHdr: ...
    def encode(self, buf: Buffer) -> None: ...
    def __bytes__(self) -> bytes: ...
    def __eq__(self, value: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]
    def __copy__(self) -> VirtioNetHdr: ...
    def __deepcopy__(self, memo: object) -> VirtioNetHdr: ...

@final
class GroTable:
    """Reusable coalescing state for :func:`handle_gro`; one per thread."""

    def __new__(cls) -> GroTable: ...

def gso_split(
    packet: Buffer,
    hdr: VirtioNetHdr,
    out_bufs: Sequence[Buffer],
    sizes: list[int],
    out_offset: int = 0,
    is_v6: bool | None = None,
) -> int: ...
def handle_gro(
    bufs: list[bytearray],
    offset: int,
    table: GroTable,
    can_udp_gro: bool = True,
) -> list[int]: ...

@final
class TunDevice:
    """A Linux TUN (or TAP) device, optionally with the kernel's offloads."""

    def __new__(
        cls,
        name: str | None = None,
        *,
        offload: bool = False,
        tap: bool = False,
        multi_queue: bool = False,
        packet_information: bool = False,
        mtu: int | None = None,
        persist: bool = False,
        owner: int | None = None,
        group: int | None = None,
        nonblocking: bool = False,
        up: bool = False,
        netns: str | bytes | os.PathLike[str] | os.PathLike[bytes] | int | None = None,
    ) -> TunDevice: ...
    @staticmethod
    def from_fd(fd: int, *, nonblocking: bool = False) -> TunDevice: ...
    def clone_queue(self) -> TunDevice: ...
    @property
    def name(self) -> str: ...
    @property
    def ifindex(self) -> int: ...
    @property
    def offload(self) -> bool: ...
    @property
    def udp_gso(self) -> bool: ...
    @property
    def tap(self) -> bool: ...
    @property
    def multi_queue(self) -> bool: ...
    @property
    def packet_information(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> TunDevice: ...
    def __exit__(self, *args: object) -> bool: ...
    def setblocking(self, flag: bool) -> None: ...
    def getblocking(self) -> bool: ...
    mtu: int
    def up(self) -> None: ...
    def down(self) -> None: ...
    @property
    def is_up(self) -> bool: ...
    def add_address(
        self, address: str | IPv4Interface | IPv6Interface, *, nodad: bool = False
    ) -> None: ...
    def remove_address(self, address: str | IPv4Interface | IPv6Interface) -> None: ...
    @property
    def addresses(self) -> list[str]: ...
    persist: bool
    @property
    def owner(self) -> int | None: ...
    @owner.setter
    def owner(self, uid: int) -> None: ...
    @property
    def group(self) -> int | None: ...
    @group.setter
    def group(self, gid: int) -> None: ...
    @property
    def mac(self) -> str | None: ...
    @mac.setter
    def mac(self, mac: str | bytes) -> None: ...
    tx_queue_len: int
    gso_max_segs: int
    tcp_segmentation: bool
    """The kernel may hand the device TCP super-packets (TSO4/TSO6); settable, for the
    whole device."""
    udp_segmentation: bool
    """The same for UDP super-packets (USO4/USO6)."""
    tcp_coalescing: bool
    """``send_multiple`` merges TCP segments into super-packets; settable, for the whole
    device; turned off by itself when the kernel refuses one."""
    udp_coalescing: bool
    """The same for UDP datagrams."""
    @property
    def stats(self) -> dict[str, int]:
        """Counters (ints), the coalescing fallbacks and the four switches (bools)."""
    def _inject_write_faults(self, errno: int, count: int, *, coalesced_only: bool = True) -> None:
        """Testing only: the next ``count`` writes (of super-packets only) fail with
        ``errno`` before reaching the kernel."""
    def recv(self, buf: Buffer) -> int: ...
    def read(self, size: int = 65545) -> bytes: ...
    def send(self, buf: Buffer) -> int: ...
    def write(self, buf: Buffer) -> int: ...
    def recv_multiple(
        self,
        original_buffer: Buffer | None,
        bufs: Sequence[Buffer],
        sizes: list[int],
        offset: int = 0,
        *,
        fit: bool = False,
    ) -> int: ...
    def send_multiple(
        self,
        gro_table: GroTable,
        bufs: list[bytearray] | Sequence[Buffer],
        offset: int,
        *,
        sizes: Sequence[int] | None = None,
        count: int | None = None,
    ) -> int: ...
    def wait_readable(self) -> None: ...

@final
class NetnsSwitch:
    """The calling thread's stay in a network namespace (``tunoffload.netns``)."""

    @property
    def name(self) -> str | None: ...
    @property
    def path(self) -> str | None: ...
    @property
    def inode(self) -> int: ...
    @property
    def thread_id(self) -> int: ...
    @property
    def active(self) -> bool: ...
    @property
    def entered_here(self) -> bool: ...
    def fileno(self) -> int: ...
    def leave(self) -> None: ...

def netns_enter(
    target: str | bytes | os.PathLike[str] | os.PathLike[bytes] | int,
) -> NetnsSwitch: ...

_Address = tuple[str, int] | tuple[str, int, int] | tuple[str, int, int, int]

@final
class UdpSocket:
    """Batched UDP on a ``socket.socket``, with the kernel's segmentation
    (``UDP_SEGMENT``) and coalescing (``UDP_GRO``) offloads.

    Wraps an ``AF_INET``/``AF_INET6`` ``SOCK_DGRAM`` socket (kept, never closed), whose
    ``fileno()`` and ``gettimeout()`` are re-read on every call. Turns ``UDP_GRO`` on for
    the socket unless ``gro=False``.
    """

    MAX_SEGMENTS: ClassVar[int]
    """The most datagrams one ``UDP_SEGMENT`` send carries (64: what every kernel takes)."""
    def __new__(
        cls,
        sock: socket.socket,
        *,
        gso: bool = True,
        gro: bool = True,
        pktinfo: bool = False,
        ecn: bool = False,
        dont_fragment: bool = False,
    ) -> UdpSocket: ...
    @property
    def gso(self) -> bool:
        """Runs of equal-size datagrams go out as ``UDP_SEGMENT`` sends."""
    @property
    def gro(self) -> bool:
        """This object turned ``UDP_GRO`` on; coalesced reads are split."""
    @property
    def pktinfo(self) -> bool:
        """Packet information was turned on: ``RecvMeta.destination`` and ``ifindex``."""
    @property
    def ecn(self) -> bool:
        """The received ECN codepoints were turned on: ``RecvMeta.ecn``."""
    @property
    def dont_fragment(self) -> bool:
        """Don't-fragment was turned on: a datagram over the path MTU is ``EMSGSIZE``."""
    @property
    def send_ecn(self) -> bool:
        """ECN codepoints still go out (False once the kernel refused one)."""
    def _inject_send_faults(self, errno: int, count: int, *, on: str = "any") -> None:
        """Testing only: the next ``count`` messages that ``on`` hits (``"any"``,
        ``"segmented"``, ``"ecn"``, ``"src"``) fail with ``errno``."""
    @staticmethod
    def max_segments(size: int) -> int: ...
    @property
    def socket(self) -> socket.socket:
        """The wrapped socket."""
    @property
    def family(self) -> int:
        """``socket.AF_INET`` or ``socket.AF_INET6``."""
    @property
    def pending(self) -> int:
        """Datagrams received but not yet delivered (the next ``recv_multiple`` returns
        them first)."""
    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``recv_calls``, ``recv_messages``, ``recv_datagrams``, ``send_calls``,
        ``send_messages``, ``send_datagrams``, ``fallbacks``, ``truncated``,
        ``ecn_fallbacks``, ``src_fallbacks``."""
    def fileno(self) -> int:
        """The socket's descriptor (-1 once it is closed)."""
    def recv_multiple(
        self,
        bufs: list[bytearray] | Sequence[Buffer],
        sizes: list[int],
        offset: int = 0,
        addrs: list[Any] | None = None,
        *,
        meta: RecvMeta | None = None,
    ) -> int:
        """Waits for a datagram, then takes all queued ones up to ``len(bufs)``: datagram
        *i* lands in ``bufs[i][offset:offset + sizes[i]]`` (bytearrays grow to fit);
        ``addrs[i]`` is its sender, and ``meta`` keeps each datagram's metadata without a
        Python object per datagram. Returns n >= 1; the rest stay pending."""
    def send_multiple(
        self,
        bufs: Sequence[Buffer],
        offset: int = 0,
        *,
        sizes: Sequence[int] | None = None,
        count: int | None = None,
        addr: _Address | list[Any] | None = None,
        ecn: int | list[int | None] | None = None,
        src: str | list[str | None] | None = None,
    ) -> int:
        """Sends ``bufs[i][offset:]`` (or ``[offset:offset + sizes[i]]``) for the first
        ``count``, in order, to ``addr`` (one, or one per datagram) or the connected peer,
        with an ECN codepoint and from a source address (one, or one per datagram); runs
        of equal sizes and metadata as ``UDP_SEGMENT`` sends. Returns the count; an
        exception carries ``datagrams_sent`` (and ``mtu`` for ``EMSGSIZE``)."""

TRANSPORT_HEADER_LEN: Final[int]
"""16: a WireGuard transport-data message's header (type, receiver index, counter)."""
TRANSPORT_OVERHEAD: Final[int]
"""32: what a message adds to its packet besides padding (header and tag)."""

@final
class Sealer:
    """Seals IP packets into WireGuard transport-data messages under one send key
    (ChaCha20-Poly1305, nonce = 4 zero bytes + a 64-bit counter, one counter per packet,
    packets zero-padded to 16 within ``mtu``), a batch per call, in place. The counter
    never passes ``REJECT_AFTER_MESSAGES`` (2**64 - 2**13 - 1): a batch that would is
    refused (``InputError``, kind ``key_exhausted``), so a nonce is never reused. The key
    is zeroed when the object is freed."""

    def __new__(
        cls, key: Buffer, receiver_index: int, *, counter: int = 0, mtu: int | None = None
    ) -> Sealer: ...
    @property
    def next_counter(self) -> int:
        """The counter the next packet gets."""
    @property
    def receiver_index(self) -> int:
        """The receiver index every message carries."""
    def seal(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int | None = None
    ) -> int:
        """Seals the first ``count`` (default ``len(sizes)``) packets: packet *i* at
        ``bufs[i][offset:offset + sizes[i]]`` (``offset >= TRANSPORT_HEADER_LEN``) becomes
        a message at ``bufs[i][offset - 16:]`` and ``sizes[i]`` its length; bytearrays
        grow where padding and tag need room. Returns the count."""

@final
class Opener:
    """Opens WireGuard transport-data messages under one receive key, a batch per call,
    in place, with an 8192-counter replay window (RFC 6479) checked after authentication.
    Forged, replayed, truncated and malformed messages are dropped and counted; messages
    that are not transport data for this key are handed back untouched. The key is
    zeroed when the object is freed."""

    def __new__(cls, key: Buffer, receiver_index: int) -> Opener: ...
    @property
    def receiver_index(self) -> int:
        """The receiver index this key opens messages for."""
    def open(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int | None = None
    ) -> tuple[int, int]:
        """Opens the first ``count`` (default ``len(sizes)``) messages: message *i* at
        ``bufs[i][offset:offset + sizes[i]]``. Returns ``(packets, other)``:
        ``bufs[:packets]`` hold the opened IP packets at ``offset + 16`` (``sizes`` set,
        padding stripped), ``bufs[packets:packets + other]`` the messages that are not
        transport data for this key, untouched, both in arrival order; list entries may
        be swapped."""
    @property
    def stats(self) -> dict[str, int]:
        """Every message since the opener was made: ``packets``, ``bytes``,
        ``keepalives``, ``other``, ``dropped_forged``, ``dropped_replayed``,
        ``dropped_malformed``, ``dropped_filtered``."""

@final
class RecvMeta:
    """Each datagram's metadata from one ``UdpSocket.recv_multiple(..., meta=meta)``, kept
    in Rust (no Python object per datagram); reusable. ``WireGuardDevice.decrypt``
    permutes it along with the buffers."""

    def __new__(cls, capacity: int = 0) -> RecvMeta: ...
    def __len__(self) -> int: ...
    def source(self, index: int) -> tuple[Any, ...] | None:
        """The sender of datagram ``index``, as ``socket.recvfrom`` gives it."""
    def destination(self, index: int) -> str | None:
        """The local address datagram ``index`` was sent to (with ``pktinfo``)."""
    def ifindex(self, index: int) -> int | None:
        """The interface datagram ``index`` came in on (with ``pktinfo``)."""
    def ecn(self, index: int) -> int | None:
        """The ECN codepoint of datagram ``index`` (with ``ecn``)."""
    def swap(self, i: int, j: int) -> None:
        """Exchanges the entries of datagrams ``i`` and ``j``."""

@final
class WireGuardDevice:
    """A WireGuard interface's protocol state (keys, peers, handshakes, timers, the
    transport data of its batches), configured through WireGuard's configuration protocol
    (``uapi_set``/``uapi_get``, the text ``wg`` speaks); no socket or device of its own.
    ``tunoffload.wireguard.Interface`` runs one between a ``TunDevice`` and UDP sockets."""

    def __new__(
        cls,
        *,
        timers: dict[str, float] | None = None,
        force_under_load: bool = False,
        mtu: int = 0,
    ) -> WireGuardDevice: ...
    def uapi_get(self) -> str:
        """The body of the configuration protocol's answer to ``get=1``."""
    def uapi_set(self, text: str) -> None:
        """Applies the lines of a ``set=1`` operation; a refused line raises
        ``InputError`` with ``errno`` (the lines before it stay applied)."""
    @property
    def public_key(self) -> bytes | None: ...
    @property
    def listen_port(self) -> int: ...
    @property
    def fwmark(self) -> int: ...
    @property
    def mtu(self) -> int:
        """Padding never goes past it (0: no limit)."""
    @mtu.setter
    def mtu(self, value: int) -> None: ...
    def encrypt(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int
    ) -> tuple[str, int] | None:
        """Seals the packets at ``offset`` (>= 16) for the peer the first one's destination
        routes to; returns its endpoint (send ``bufs[i][offset - 16:][:sizes[i]]`` there),
        or ``None`` (no route, or staged until a handshake completes). A packet that routes
        to another peer (or is not IP) refuses the whole batch: ``InputError``
        ``mixed_peers``."""
    def decrypt(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int, meta: RecvMeta
    ) -> tuple[int, int, bool]:
        """Opens the datagrams at ``offset``; returns ``(packets, control, wake)``:
        ``bufs[:packets]`` the decrypted packets at ``offset + 16``, then ``control``
        handshake messages for ``handle_control`` (``meta`` permuted alike); ``wake``:
        call ``tick`` soon."""
    def handle_control(
        self, msg: Buffer, source: tuple[Any, ...]
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """One handshake initiation, response or cookie reply; the datagrams to send."""
    def tick(self) -> list[tuple[bytes, tuple[str, int]]]:
        """The timers that are due: the datagrams to send."""
    def next_deadline(self) -> float | None:
        """Seconds until ``tick`` has something to do (``None``: nothing scheduled)."""
    def stats(self) -> dict[str, int]:
        """The device's counters, drops by reason."""
    def pump_stats(self) -> dict[str, int]:
        """The counters of the loops ``run_tx`` and ``run_rx`` (reads, batches, errors)."""
    def kick(self) -> None:
        """Wakes the thread in ``wait_for_kick`` (at once, or at its next wait)."""
    def wait_for_kick(self, timeout: float) -> bool:
        """Waits (GIL released) until ``kick`` is called or the device queues work for
        ``tick``: ``True``; ``False`` after ``timeout`` seconds without."""
    def run_tx(
        self,
        tun: TunDevice,
        udp4: UdpSocket | None,
        udp6: UdpSocket | None,
        batch_size: int | None = None,
    ) -> None:
        """TUN to UDP as one native loop, GIL released: reads ``tun``, seals each batch,
        sends it to the peer's endpoint on ``udp4`` or ``udp6``. Returns within half a
        second (call it again); ``OSError`` ``EBADF`` once ``tun`` is closed, ``EBADFD``
        once the interface is deleted."""
    def run_rx(self, tun: TunDevice, udp: UdpSocket, batch_size: int | None = None) -> None:
        """UDP to TUN as one native loop, GIL released: receives on ``udp``, opens each
        batch, writes the packets to ``tun``, answers the handshake messages on ``udp``.
        Returns within half a second or when a receive waited the socket's timeout (call
        it again); ``OSError`` ``EBADF`` once ``tun`` is closed, ``EBADFD`` once the
        interface is deleted."""
