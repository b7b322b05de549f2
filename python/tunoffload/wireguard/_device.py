"""What the Python layer shares about the native WireGuard device.

``tunoffload.WireGuardDevice`` (Rust, through the binding) holds the protocol state and
does no I/O: keys, peers, sessions, timers, and the batch encryption and decryption. The
Python layer (``interface.py``, ``uapi.py``) owns the TUN device, the sockets and the
threads. The configuration is the device's configuration protocol text
(``uapi_get``/``uapi_set``): its rules (values, semantics, refusals) live in the native
device alone. Here: the message sizes the buffers need, the types of endpoints and of
the datagrams the device asks to send, :class:`UapiTarget` (what the configuration
socket serves: the device, or an ``Interface``) and :func:`key_bytes`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Protocol

from tunoffload import TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD

KEY_LEN = 32
MESSAGE_HEADER_LEN = TRANSPORT_HEADER_LEN  # type, reserved, receiver index, counter
MESSAGE_OVERHEAD = TRANSPORT_OVERHEAD  # the header and the Poly1305 tag

Endpoint = tuple[str, int]
"""A peer's UDP address: ``(host, port)``, the host an IP literal (IPv6 possibly with a
``%zone``), as ``socket.sendto`` takes it."""

Datagrams = list[tuple[bytes, Endpoint]]
"""Messages the device wants sent: ``(datagram, endpoint)`` pairs."""


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
