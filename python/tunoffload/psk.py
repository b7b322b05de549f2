"""A point-to-point tunnel's cipher with one pre-shared key, on the batch AEAD.

Both ends hold the same 32-byte key. Messages are WireGuard's transport-data messages
(:class:`tunoffload.Sealer` / :class:`tunoffload.Opener`: ChaCha20-Poly1305, a 64-bit
counter per message, a replay window of 8192), sealed and opened a batch per call in Rust.
What this module adds is how two ends share one key without ever reusing a nonce:

- **A key per direction.** Each end has a 32-bit *sender id*, the last four bytes of its
  own tunnel address (the two ends of a link have different addresses; they must, for
  routing). It seals under ``BLAKE2s(key=psk, data=LABEL || sender id)`` and puts its
  sender id in the message's index field, so the two directions use different keys.
- **Counters from the clock.** A sender's first counter is the wall clock in nanoseconds,
  so a restarted sender continues above every counter it used before under the same key
  (it sends far fewer than one message per nanosecond); the receiver's window simply moves
  up. This assumes the clock is not stepped back by more than the previous run lasted.
- **Receiving.** The receiver learns the peer's sender id from the first message that
  authenticates under that id's key, and keeps one :class:`~tunoffload.Opener` (with its
  window) per id it has authenticated, so captured messages of an earlier run are
  refused by the window they were counted in. A message that carries the receiver's own
  sender id (one of its own messages reflected back) is dropped as replayed; one that does
  not authenticate under its id's key, as forged.

There is no handshake: no forward secrecy, and a receiver that restarts forgets its
windows (messages captured before its restart and newer than anything it has seen since
are accepted once). WireGuard (``tunoffload.wireguard``) has neither limit.
"""

import hashlib
import ipaddress
import time
from collections.abc import MutableSequence

from tunoffload._native import TRANSPORT_OVERHEAD, Opener, Sealer

__all__ = [
    "LABEL",
    "MAX_PEER_IDS",
    "OVERHEAD",
    "PskCipher",
    "direction_key",
    "read_key",
    "sender_id",
]

LABEL = b"tunoffload psk direction v1"
OVERHEAD = TRANSPORT_OVERHEAD
#: Sender ids a receiver keeps a window for (only ids that authenticated get one).
MAX_PEER_IDS = 16
_FORGED, _REPLAYED, _MALFORMED = "dropped_forged", "dropped_replayed", "dropped_malformed"


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


def sender_id(address: str) -> int:
    """The sender id of the end whose tunnel address is ``address`` ("10.0.0.1/24")."""
    return int.from_bytes(ipaddress.ip_interface(address).ip.packed[-4:], "little")


def direction_key(psk: bytes, sender: int) -> bytes:
    """The key that the end with sender id ``sender`` seals under."""
    data = LABEL + sender.to_bytes(4, "little")
    return hashlib.blake2s(data, key=psk, digest_size=32).digest()


class PskCipher:
    """One end's cipher: :meth:`seal` for packets to the peer, :meth:`open` for messages
    from it. Each direction may run in its own thread (seal and open share nothing)."""

    def __init__(self, psk: bytes, address: str, *, mtu: int | None = None) -> None:
        if len(psk) != 32:
            raise ValueError(f"the pre-shared key must be 32 bytes, not {len(psk)}")
        self._psk = psk
        self.own_id = sender_id(address)
        self.sealer = Sealer(
            direction_key(psk, self.own_id), self.own_id, counter=time.time_ns(), mtu=mtu
        )
        self._openers: dict[int, Opener] = {}
        self._current: Opener | None = None
        self._extra = {_FORGED: 0, _REPLAYED: 0, _MALFORMED: 0}

    def seal(self, bufs: list[bytearray], offset: int, sizes: list[int], count: int) -> int:
        """Seals ``count`` packets in place: packet i at ``bufs[i][offset:offset +
        sizes[i]]`` (``offset >= TRANSPORT_HEADER_LEN``) becomes a message at
        ``offset - TRANSPORT_HEADER_LEN``, ``sizes[i]`` its length."""
        return self.sealer.seal(bufs, offset, sizes, count)

    def open(self, bufs: list[bytearray], offset: int, sizes: list[int], count: int) -> int:
        """Opens ``count`` messages in place (message i at ``bufs[i][offset:offset +
        sizes[i]]``); returns m: ``bufs[:m]`` hold the packets at ``offset +
        TRANSPORT_HEADER_LEN`` (``sizes`` set), in arrival order, everything else dropped
        and counted. List entries may be swapped."""
        if self._current is None:
            m, other = 0, count
        else:
            m, other = self._current.open(bufs, offset, sizes, count)
        if other:  # the rare path: another id (first contact, a reflection, junk)
            m = self._open_others(bufs, offset, sizes, m, other)
        return m

    def _open_others(
        self, bufs: list[bytearray], offset: int, sizes: MutableSequence[int], m: int, other: int
    ) -> int:
        for j in range(m, m + other):
            msg = bufs[j]
            if sizes[j] < 8 or msg[offset : offset + 4] != b"\x04\x00\x00\x00":
                self._extra[_MALFORMED] += 1  # not a transport message
                continue
            sender = int.from_bytes(msg[offset + 4 : offset + 8], "little")
            if sender == self.own_id:
                self._extra[_REPLAYED] += 1  # our own message, reflected
                continue
            opener = self._openers.get(sender)
            fresh = opener is None
            if opener is None:
                opener = Opener(direction_key(self._psk, sender), sender)
            one, one_size = [msg], [sizes[j]]
            before = opener.stats
            got, _ = opener.open(one, offset, one_size, 1)
            after = opener.stats
            accepted = after["packets"] + after["keepalives"] > (
                before["packets"] + before["keepalives"]
            )
            authentic = accepted or after[_REPLAYED] > before[_REPLAYED]
            if fresh:
                if not authentic:
                    # counted here: the opener that saw it is thrown away
                    for k in self._extra:
                        self._extra[k] += after[k] - before[k]
                    continue
                if len(self._openers) >= MAX_PEER_IDS:
                    self._openers.pop(next(iter(self._openers)))
                self._openers[sender] = opener
            if accepted:  # (not a replay: that would let anyone switch us back)
                self._current = opener
            if got:  # move the packet into the packets' part of the batch
                bufs[j], bufs[m] = bufs[m], one[0]
                sizes[m] = one_size[0]
                m += 1
        return m

    @property
    def stats(self) -> dict[str, int]:
        """``packets``, ``bytes``, ``keepalives`` and the drops (``dropped_forged``,
        ``dropped_replayed``, ``dropped_malformed``), over every peer id."""
        out = {"packets": 0, "bytes": 0, "keepalives": 0, **self._extra}
        for o in self._openers.values():
            s = o.stats
            for k in ("packets", "bytes", "keepalives", _FORGED, _REPLAYED, _MALFORMED):
                out[k] += s[k]
        return out
