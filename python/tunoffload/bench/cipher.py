"""The packet cipher of ``examples/vpn.py`` and the bench's ``tunnel+vpn`` row:
ChaCha20-Poly1305 per packet from ``cryptography``, with a pre-shared 32-byte key.

Interim: the Rust batch AEAD (``tunoffload.Sealer``/``Opener``, WireGuard's transport
format) replaces it; this module is then deleted whole. Not part of the API contract
(``docs/API.md``); do not build on it.

Each datagram on the wire is::

    | sender id (4) | counter (8, little-endian) | ciphertext (= IP packet length) | tag (16) |

The first 12 bytes are the AEAD nonce, sent in the clear and authenticated by the tag (a
nonce is bound to its ciphertext). A nonce must never repeat for one key:

- the two peers use disjoint halves of the nonce space: the sender id is the last four
  bytes of the sender's own tunnel address (``--address``), and the two ends of one link
  have different addresses (they must, for routing; two ends configured with the same
  address would reuse nonces, so never do that with a key in use). A datagram that
  carries the receiver's own id (one of its own datagrams reflected back at it) is
  dropped as replayed;
- within one sender the 64-bit counter goes up by one per datagram and starts, when the
  process starts, at the wall clock in nanoseconds since 1970, so a restarted sender
  continues above every counter it used before (a process sends far fewer than one
  datagram per nanosecond). The receiver's replay window simply moves up to it. This
  assumes the clock is not stepped back by more than the previous run lasted; a real VPN
  (WireGuard) makes fresh keys with a handshake instead.

The receiver keeps a sliding window of the last ``REPLAY_WINDOW`` counters (a ring of
flags, as WireGuard keeps it): a counter already seen or older than the window is a
replay. The window is updated only after the tag verified, so a forged datagram cannot
move it. Without a handshake, a receiver that restarts will accept once each datagram
captured before its restart that is newer than what it has seen since; this example does
not defend against that.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Sequence

HEADER_LEN = 12  # sender id + counter: the nonce
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
REPLAY_WINDOW = 2048
MIN_IP_LEN = 20
_HEADER = struct.Struct("<4sQ")
_COUNTER_LIMIT = 1 << 64


def read_key(path: str) -> bytes:
    """The 32-byte key in file ``path``, written as 64 hexadecimal digits."""
    with open(path) as f:
        text = "".join(f.read().split())
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: the key must be 64 hexadecimal digits") from None
    if len(key) != 32:
        raise ValueError(f"{path}: the key must be 32 bytes (64 hex digits), not {len(key)}")
    return key


def sender_id(address: str) -> bytes:
    """The 4-byte sender id of the peer whose tunnel address is ``address`` ("10.0.0.1/24")."""
    return ipaddress.ip_interface(address).ip.packed[-4:]


class ReplayWindow:
    """The counters seen lately, as WireGuard keeps them: ``top`` is the highest accepted,
    and a ring of ``size`` flags (a power of two) says which of the counters ``top - size
    + 1 .. top`` were seen; the flag of counter c is ``ring[c % size]``. Anything older is
    too old to tell, and refused."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError("the window size must be a power of two")
        self.size = size
        self.top = -1
        self._mask = size - 1
        self._ring = bytearray(size)
        self._zeros = memoryview(bytes(size))

    def seen(self, counter: int) -> bool:
        """True when ``counter`` was accepted already or is too old to tell."""
        top = self.top
        if counter > top:
            return False
        return top - counter >= self.size or self._ring[counter & self._mask] == 1

    def mark(self, counter: int) -> None:
        """Records ``counter`` (call it only for a datagram whose tag verified)."""
        ring, mask = self._ring, self._mask
        top = self.top
        if counter > top:
            # the window slides up: the flags of the counters skipped over are cleared
            gap = counter - top - 1
            if gap >= self.size:
                ring[:] = self._zeros
            elif gap:
                start = (top + 1) & mask
                end = start + gap
                if end <= self.size:
                    ring[start:end] = self._zeros[:gap]
                else:
                    ring[start:] = self._zeros[: self.size - start]
                    ring[: end - self.size] = self._zeros[: end - self.size]
            self.top = counter
        ring[counter & mask] = 1


class PacketCipher:
    """Seals IP packets into datagrams and opens them again, a batch at a time.

    One instance per direction and thread: ``seal`` uses and advances the send counter,
    ``open`` the replay window and the drop counters.
    """

    def __init__(self, key: bytes, own_id: bytes, counter: int | None = None) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        if len(own_id) != 4:
            raise ValueError("the sender id is 4 bytes")
        self._aead = ChaCha20Poly1305(key)
        self._id = own_id
        self.counter = time.time_ns() if counter is None else counter
        self.window = ReplayWindow()
        self.dropped_forged = 0
        self.dropped_replayed = 0
        self.dropped_malformed = 0
        # cryptography >= 46 writes into our buffers; older versions return bytes
        self._into = hasattr(self._aead, "encrypt_into")

    def seal(
        self,
        plain: Sequence[memoryview],
        offset: int,
        sizes: Sequence[int],
        n: int,
        out: Sequence[memoryview],
        out_sizes: list[int],
    ) -> None:
        """Packet i = ``plain[i][offset:offset + sizes[i]]`` becomes datagram i =
        ``out[i][:out_sizes[i]]``. Both are memoryviews, made once (the ``out`` buffers
        hold at least 65535 bytes)."""
        counter = self.counter
        if counter + n >= _COUNTER_LIMIT:
            raise OverflowError("the send counter is exhausted: use a new key")
        self.counter = counter + n
        own_id, aead, pack = self._id, self._aead, _HEADER.pack
        into = self._into
        for i in range(n):
            size = sizes[i]
            nonce = pack(own_id, counter)
            counter += 1
            dst = out[i]
            dst[:HEADER_LEN] = nonce
            src = plain[i][offset : offset + size]
            if into:
                aead.encrypt_into(nonce, src, None, dst[HEADER_LEN : HEADER_LEN + size + TAG_LEN])
            else:
                dst[HEADER_LEN : HEADER_LEN + size + TAG_LEN] = aead.encrypt(nonce, src, None)
            out_sizes[i] = size + OVERHEAD

    def open(
        self,
        wire: Sequence[memoryview],
        sizes: Sequence[int],
        n: int,
        plain: Sequence[bytearray],
        offset: int,
        plain_sizes: list[int],
    ) -> int:
        """Datagrams ``wire[i][:sizes[i]]``, i < n, that verify and are not replays become
        packets ``plain[j][offset:offset + plain_sizes[j]]`` for j < the count returned.
        The others are counted in ``dropped_*`` and left out."""
        from cryptography.exceptions import InvalidTag

        aead, window, own_id, unpack = self._aead, self.window, self._id, _HEADER.unpack_from
        into = self._into
        j = 0
        for i in range(n):
            size = sizes[i]
            if size < OVERHEAD + MIN_IP_LEN:
                self.dropped_malformed += 1
                continue
            src = wire[i]
            sid, counter = unpack(src)
            if sid == own_id or window.seen(counter):
                self.dropped_replayed += 1
                continue
            length = size - OVERHEAD
            buf = plain[j]
            try:
                if into:
                    aead.decrypt_into(
                        src[:HEADER_LEN],
                        src[HEADER_LEN:size],
                        None,
                        memoryview(buf)[offset : offset + length],
                    )
                else:
                    nonce = bytes(src[:HEADER_LEN])
                    buf[offset : offset + length] = aead.decrypt(nonce, src[HEADER_LEN:size], None)
            except InvalidTag:
                self.dropped_forged += 1
                continue
            window.mark(counter)
            if buf[offset] >> 4 not in (4, 6):  # authentic, but not an IP packet
                self.dropped_malformed += 1
                continue
            plain_sizes[j] = length
            j += 1
        return j
