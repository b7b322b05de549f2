"""A stand-in for the native ``tunoffload.WireGuardDevice``, for the tests of the Python
layer (configuration protocol, ``Interface``, daemon) before and besides the native one.

Its configuration behaves as wireguard-go's device does (peers created, updated and
removed; allowed IPs moved between peers, longest prefix; the peer with the device's own
public key removed when the private key changes to it), and its public key is X25519 of
the private key, so ``wg`` shows what it would show for a real device.

Its "data path" is no cipher at all, only the same shape: a transport message is a
16-byte header (type 4, three zero bytes, the sender's id = the first four bytes of its
public key, a counter) + the packet + 16 zero bytes; ``decrypt`` checks the header and
the inner source address against the sender's allowed IPs, notes the sender's address
(roaming) and compacts the batch as the native device does. A "handshake" is a type-1
message carrying the initiator's public key, answered with a type-2 message carrying
the responder's. Enough to move real traffic through real TUN devices and sockets.

Testing hooks: ``outbox`` (what ``tick`` returns next), ``control_log`` (each control
message handled, with its source), ``hook_log``; the constructor's keywords are written
as JSON to the file named by ``WGFAKE_RECORD`` (for the daemon tests).
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HEADER = struct.Struct("<B3x4sQ")
HEADER_LEN, TAG_LEN = 16, 16
TRANSPORT, INITIATION, RESPONSE = 4, 1, 2

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def public_key_of(private_key: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def clamp(key: bytes) -> bytes:
    k = bytearray(key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


class FakePeer:
    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.preshared_key: bytes | None = None
        self.endpoint: tuple[str, int] | None = None
        self.persistent_keepalive = 0
        self.allowed: list[Network] = []
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake = (0, 0)
        self.counter = 0


class FakeDevice:
    """The stand-in. Thread-safe through one lock (it is a test double, not fast)."""

    def __init__(
        self,
        *,
        private_key: bytes | None = None,
        timers: dict[str, float] | None = None,
        force_under_load: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._private: bytes | None = None
        self._public: bytes | None = None
        self._peers: dict[bytes, FakePeer] = {}
        self.fail_listen_port: int | None = None  # a port whose setting "fails" (tests)
        self._listen_port = 0
        self.fwmark = 0
        self.mtu = 1420
        self.timers = timers
        self.force_under_load = force_under_load
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.control_log: list[tuple[bytes, tuple[str, int]]] = []
        self.counters = dict.fromkeys(
            ("no_route", "no_endpoint", "dropped_malformed", "dropped_filtered", "unknown"), 0
        )
        if private_key is not None:
            self.private_key = private_key
        record = os.environ.get("WGFAKE_RECORD")
        if record:
            with open(record, "w") as f:
                json.dump({"timers": timers, "force_under_load": force_under_load}, f)

    # --- configuration ---------------------------------------------------------------

    @property
    def private_key(self) -> bytes | None:
        return self._private

    @private_key.setter
    def private_key(self, key: bytes | None) -> None:
        with self._lock:
            if key is None:
                self._private = self._public = None
                return
            if len(key) != 32:
                raise ValueError("a private key is 32 bytes")
            self._private = clamp(key)
            self._public = public_key_of(self._private)
            self._peers.pop(self._public, None)

    @property
    def public_key(self) -> bytes | None:
        return self._public

    @property
    def listen_port(self) -> int:
        return self._listen_port

    @listen_port.setter
    def listen_port(self, port: int) -> None:
        if port == self.fail_listen_port:
            raise OSError(98, "Address already in use")
        self._listen_port = port

    def set_peer(
        self,
        public_key: bytes,
        *,
        remove: bool = False,
        update_only: bool = False,
        preshared_key: bytes | None = None,
        endpoint: tuple[str, int] | None = None,
        persistent_keepalive: int | None = None,
        replace_allowed_ips: bool = False,
        allowed_ips: Sequence[str] = (),
        remove_allowed_ips: Sequence[str] = (),
    ) -> None:
        if len(public_key) != 32:
            raise ValueError("a public key is 32 bytes")
        nets = [ipaddress.ip_network(p, strict=False) for p in allowed_ips]
        gone = [ipaddress.ip_network(p, strict=False) for p in remove_allowed_ips]
        with self._lock:
            if public_key == self._public:
                return
            peer = self._peers.get(public_key)
            if remove:
                self._peers.pop(public_key, None)
                return
            if peer is None:
                if update_only:
                    return
                peer = self._peers[public_key] = FakePeer(public_key)
            if preshared_key is not None:
                peer.preshared_key = None if preshared_key == bytes(32) else preshared_key
            if endpoint is not None:
                peer.endpoint = (endpoint[0], endpoint[1])
            if persistent_keepalive is not None:
                was = peer.persistent_keepalive
                peer.persistent_keepalive = persistent_keepalive
                if was == 0 and persistent_keepalive and peer.endpoint is not None:
                    self.outbox.append((b"keepalive", peer.endpoint))
            if replace_allowed_ips:
                peer.allowed.clear()
            for net in gone:
                if net in peer.allowed:
                    peer.allowed.remove(net)
            for net in nets:
                for other in self._peers.values():
                    if other is not peer and net in other.allowed:
                        other.allowed.remove(net)
                if net not in peer.allowed:
                    peer.allowed.append(net)

    def remove_all_peers(self) -> None:
        with self._lock:
            self._peers.clear()

    def peers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "public_key": p.public_key,
                    "preshared_key": p.preshared_key,
                    "endpoint": p.endpoint,
                    "last_handshake": p.last_handshake,
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                    "persistent_keepalive": p.persistent_keepalive,
                    "allowed_ips": [str(n) for n in p.allowed],
                }
                for p in self._peers.values()
            ]

    def peer(self, public_key: bytes) -> FakePeer:
        return self._peers[public_key]

    def set_stats(self, public_key: bytes, **fields: Any) -> None:
        """Sets a peer's counters or handshake time (tests of what ``get`` reports)."""
        with self._lock:
            peer = self._peers[public_key]
            for name, value in fields.items():
                setattr(peer, name, value)

    # --- the data path (no cipher: the shape only) -------------------------------------

    def _route(self, packet: bytes | bytearray | memoryview) -> FakePeer | None:
        version = packet[0] >> 4
        if version == 4:
            dst: Any = ipaddress.IPv4Address(bytes(packet[16:20]))
        elif version == 6:
            dst = ipaddress.IPv6Address(bytes(packet[24:40]))
        else:
            return None
        best, best_len = None, -1
        for peer in self._peers.values():
            for net in peer.allowed:
                if net.version == dst.version and dst in net and net.prefixlen > best_len:
                    best, best_len = peer, net.prefixlen
        return best

    def encrypt(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int
    ) -> tuple[str, int] | None:
        if offset < HEADER_LEN:
            raise ValueError("offset below 16")
        with self._lock:
            if count == 0:
                return None
            peer = self._route(memoryview(bufs[0])[offset : offset + sizes[0]])
            if peer is None:
                self.counters["no_route"] += 1
                return None
            if peer.endpoint is None or self._public is None:
                self.counters["no_endpoint"] += 1
                return None
            sender = self._public[:4]
            for i in range(count):
                size, buf = sizes[i], bufs[i]
                end = offset + size + TAG_LEN
                if len(buf) < end:
                    buf.extend(bytes(end - len(buf)))
                HEADER.pack_into(buf, offset - HEADER_LEN, TRANSPORT, sender, peer.counter)
                buf[offset + size : end] = bytes(TAG_LEN)
                peer.counter += 1
                sizes[i] = size + HEADER_LEN + TAG_LEN
                peer.tx_bytes += sizes[i]
            return peer.endpoint

    def decrypt(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int, meta: Any
    ) -> tuple[int, int]:
        packets: list[int] = []
        control: list[int] = []
        with self._lock:
            for i in range(count):
                size, buf = sizes[i], bufs[i]
                kind = buf[offset] if size else 0
                if kind in (INITIATION, RESPONSE, 3):
                    control.append(i)
                    continue
                if kind != TRANSPORT or size < HEADER_LEN + TAG_LEN:
                    self.counters["dropped_malformed"] += 1
                    continue
                sender = bytes(buf[offset + 4 : offset + 8])
                peer = next((p for p in self._peers.values() if p.public_key[:4] == sender), None)
                if peer is None:
                    self.counters["unknown"] += 1
                    continue
                inner = memoryview(buf)[offset + HEADER_LEN : offset + size - TAG_LEN]
                if inner and not self._source_allowed(peer, inner):
                    self.counters["dropped_filtered"] += 1
                    continue
                peer.endpoint = meta.source(i)
                peer.rx_bytes += size
                sizes[i] = size - HEADER_LEN - TAG_LEN
                if sizes[i]:
                    packets.append(i)
            order = packets + control
            rest = [i for i in range(count) if i not in order]
            perm = order + rest
            bufs[:count] = [bufs[i] for i in perm]
            sizes[:count] = [sizes[i] for i in perm]
            if hasattr(meta, "addrs"):
                meta.addrs[:count] = [meta.addrs[i] for i in perm]
        return len(packets), len(control)

    @staticmethod
    def _source_allowed(peer: FakePeer, packet: memoryview) -> bool:
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            src: Any = ipaddress.IPv4Address(bytes(packet[12:16]))
        elif version == 6 and len(packet) >= 40:
            src = ipaddress.IPv6Address(bytes(packet[8:24]))
        else:
            return False
        return any(net.version == src.version and src in net for net in peer.allowed)

    def handle_control(
        self, msg: bytes, source: tuple[str, int]
    ) -> list[tuple[bytes, tuple[str, int]]]:
        with self._lock:
            self.control_log.append((msg, source))
            if msg == b"\x03refuse":  # how a test makes the device refuse a message
                raise ValueError("refused (test)")
            if len(msg) != 33 or msg[0] not in (INITIATION, RESPONSE) or self._public is None:
                return []
            peer = self._peers.get(bytes(msg[1:]))
            if peer is None:
                return []
            peer.endpoint = source
            now = time.time_ns()
            peer.last_handshake = (now // 10**9, now % 10**9)
            if msg[0] == INITIATION:
                return [(bytes([RESPONSE]) + self._public, source)]
            return []

    def initiate(self, public_key: bytes) -> None:
        """Queues a "handshake initiation" to that peer (sent by the next ``tick``)."""
        with self._lock:
            peer = self._peers[public_key]
            assert self._public is not None and peer.endpoint is not None
            self.outbox.append((bytes([INITIATION]) + self._public, peer.endpoint))

    def tick(self) -> list[tuple[bytes, tuple[str, int]]]:
        with self._lock:
            out, self.outbox = self.outbox, []
            return out

    def next_deadline(self) -> float | None:
        return None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)
