"""What the Python layer needs of the native WireGuard device, as typing protocols.

``tunoffload.WireGuardDevice`` (Rust, through the binding) holds the protocol state and
does no I/O: keys, peers, sessions, timers, and the batch encryption and decryption. The
Python layer (``interface.py``, ``uapi.py``) owns the TUN device, the sockets and the
threads, and talks to the device only through the methods below, so a stand-in with the
same methods (the tests' fake) can take its place. The configuration is the device's
configuration protocol text (``uapi_get``/``uapi_set``): its rules (values, semantics,
refusals) live in the native device alone.

The native class and its ``RecvMeta`` are looked up when first needed, not imported, so
that this package imports (and runs against a stand-in) on a build without them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

KEY_LEN = 32
MESSAGE_HEADER_LEN = 16  # type, reserved, receiver index, counter
MESSAGE_OVERHEAD = 32  # the header and the Poly1305 tag

Endpoint = tuple[str, int]
"""A peer's UDP address: ``(host, port)``, the host an IP literal (IPv6 possibly with a
``%zone``), as ``socket.sendto`` takes it."""

Datagrams = list[tuple[bytes, Endpoint]]
"""Messages the device wants sent: ``(datagram, endpoint)`` pairs."""


@runtime_checkable
class RecvMetaLike(Protocol):
    """Per-datagram receive information, filled by ``UdpSocket.recv_multiple(...,
    meta=meta)`` and permuted by ``WireGuardDevice.decrypt`` along with the buffers."""

    def source(self, index: int) -> Endpoint: ...


class UapiTarget(Protocol):
    """What WireGuard's configuration protocol (UAPI) serves: the body of a ``get=1``
    answer, and a ``set=1`` operation applied. ``WireGuardDevice`` (the rules, as
    wireguard-go's) and ``Interface`` (which also binds and marks its sockets) both
    have it.

    ``uapi_set`` raises ``ValueError`` for a refused line (the native device's
    ``InputError`` carries ``kind`` and ``errno``, the positive errno wireguard-go
    answers: ``EINVAL``, or ``EPROTO`` for a line without ``=``); the lines before it
    stay applied. :func:`tunoffload.wireguard.uapi.uapi_error` turns any refusal into
    the errno a client reads."""

    def uapi_get(self) -> str: ...
    def uapi_set(self, text: str) -> None: ...


class WireGuardDeviceLike(UapiTarget, Protocol):
    """The whole native device: configuration (UAPI text), data path, control and
    timers."""

    @property
    def public_key(self) -> bytes | None: ...
    @property
    def listen_port(self) -> int: ...
    @property
    def fwmark(self) -> int: ...
    @property
    def mtu(self) -> int: ...
    @mtu.setter
    def mtu(self, mtu: int) -> None: ...
    def encrypt(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int
    ) -> Endpoint | None: ...
    def decrypt(
        self,
        bufs: list[bytearray],
        offset: int,
        sizes: list[int],
        count: int,
        meta: Any,
    ) -> tuple[int, int, bool]: ...
    def handle_control(self, msg: bytes, source: Endpoint) -> Datagrams: ...
    def tick(self) -> Datagrams: ...
    def next_deadline(self) -> float | None: ...
    def stats(self) -> dict[str, int]: ...


def native_device(
    *,
    timers: Mapping[str, float] | None = None,
    force_under_load: bool = False,
) -> WireGuardDeviceLike:
    """A new native ``WireGuardDevice`` (no key, no peers: configure it through
    ``uapi_set``). The testing keywords are passed only when set, so a build whose
    device does not take them still makes ordinary devices.

    Raises ``RuntimeError`` when this build of tunoffload has no WireGuard device."""
    from tunoffload import _native

    cls = getattr(_native, "WireGuardDevice", None)
    if cls is None:
        raise RuntimeError(
            "this build of tunoffload has no native WireGuardDevice "
            "(tunoffload._native.WireGuardDevice is missing)"
        )
    kwargs: dict[str, Any] = {}
    if timers:
        kwargs["timers"] = dict(timers)
    if force_under_load:
        kwargs["force_under_load"] = True
    device: WireGuardDeviceLike = cls(**kwargs)
    return device


class AddrsMeta:
    """``RecvMeta`` for a build without the native one: the senders as ``recv_multiple``'s
    ``addrs=`` list fills it (one tuple object per run of datagrams from one sender, not
    one per datagram). Only a stand-in device can use it; the native device takes the
    native ``RecvMeta``."""

    __slots__ = ("addrs",)

    def __init__(self, capacity: int) -> None:
        self.addrs: list[Any] = [None] * capacity

    def source(self, index: int) -> Endpoint:
        addr = self.addrs[index]
        return (str(addr[0]), int(addr[1]))

    def swap(self, i: int, j: int) -> None:
        """Exchange the entries of datagrams ``i`` and ``j`` (as ``decrypt`` permutes)."""
        self.addrs[i], self.addrs[j] = self.addrs[j], self.addrs[i]


def new_recv_meta(capacity: int) -> Any:
    """A receive-metadata holder for ``capacity`` datagrams: the native
    ``tunoffload.RecvMeta`` when this build has it, else an :class:`AddrsMeta`."""
    from tunoffload import _native

    cls = getattr(_native, "RecvMeta", None)
    return AddrsMeta(capacity) if cls is None else cls(capacity)


def key_bytes(key: bytes | bytearray | str, what: str = "key") -> bytes:
    """A 32-byte key from bytes, or from text as ``wg`` writes keys (base64, 44
    characters) or as the configuration protocol does (64 hexadecimal digits).
    ``ValueError`` naming ``what`` otherwise."""
    if isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
    elif isinstance(key, str):
        text = key.strip()
        try:
            if len(text) == 2 * KEY_LEN:
                raw = bytes.fromhex(text)
            else:
                raw = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"{what}: not a key (44 base64 characters or 64 hexadecimal digits)"
            ) from None
    else:
        raise TypeError(f"{what} must be bytes or str, not {type(key).__name__}")
    if len(raw) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, not {len(raw)}")
    return raw
