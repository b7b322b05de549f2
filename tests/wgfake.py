"""A stand-in for the native ``tunoffload.WireGuardDevice``, for the tests of the Python
layer (configuration protocol, ``Interface``, daemon) before and besides the native one.

Its configuration takes the configuration protocol's lines as ``wg`` and ``Interface``
write them (``uapi_set``) and answers ``get`` (``uapi_get``) in the protocol's format:
enough for the plumbing around the device (the socket, the daemon, ``Interface``), not
the rules, which are the native device's (tested in the Rust core and in
``test_wireguard_uapi.py``). Its public key is X25519 of the private key, so ``wg`` shows
what it would show for a real device.

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

import errno
import ipaddress
import json
import os
import struct
import threading
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tunoffload.wireguard.uapi import ERROR_PORT_IN_USE, UapiError

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


class FakeRefusal(ValueError):
    """A line the stand-in refuses, with the errno the native device's refusal carries."""

    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_


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
        self._fwmark = 0
        self.mtu = 1420
        self.timers = timers
        self.force_under_load = force_under_load
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.control_log: list[tuple[bytes, tuple[str, int]]] = []
        self.counters = dict.fromkeys(
            ("no_route", "no_endpoint", "dropped_malformed", "dropped_filtered", "unknown"), 0
        )
        if private_key is not None:
            self._set_private_key(private_key)
        record = os.environ.get("WGFAKE_RECORD")
        if record:
            with open(record, "w") as f:
                json.dump({"timers": timers, "force_under_load": force_under_load}, f)

    # --- configuration: the configuration protocol's lines --------------------------------
    #
    # Enough of it for the Python layer's plumbing (what ``wg`` sends, what ``Interface``
    # writes): the rules themselves (values, semantics, refusals) are the native
    # device's, tested in the Rust core and in test_wireguard_uapi.py.

    @property
    def private_key(self) -> bytes | None:
        return self._private

    @property
    def public_key(self) -> bytes | None:
        return self._public

    @property
    def listen_port(self) -> int:
        return self._listen_port

    @property
    def fwmark(self) -> int:
        return self._fwmark

    def _set_private_key(self, key: bytes) -> None:
        if key == bytes(32):
            self._private = self._public = None
            return
        self._private = clamp(key)
        self._public = public_key_of(self._private)
        self._peers.pop(self._public, None)

    def uapi_get(self) -> str:
        with self._lock:
            lines = []
            if self._private is not None:
                lines.append(f"private_key={self._private.hex()}")
            if self._listen_port:
                lines.append(f"listen_port={self._listen_port}")
            if self._fwmark:
                lines.append(f"fwmark={self._fwmark}")
            for p in self._peers.values():
                lines.append(f"public_key={p.public_key.hex()}")
                lines.append(f"preshared_key={(p.preshared_key or bytes(32)).hex()}")
                lines.append("protocol_version=1")
                if p.endpoint is not None:
                    host, port = p.endpoint
                    host = f"[{host}]" if ":" in host else host
                    lines.append(f"endpoint={host}:{port}")
                lines.append(f"last_handshake_time_sec={p.last_handshake[0]}")
                lines.append(f"last_handshake_time_nsec={p.last_handshake[1]}")
                lines.append(f"tx_bytes={p.tx_bytes}")
                lines.append(f"rx_bytes={p.rx_bytes}")
                lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
                lines += [f"allowed_ip={n}" for n in p.allowed]
            return "".join(f"{line}\n" for line in lines)

    def uapi_set(self, text: str) -> None:
        with self._lock:
            peer: FakePeer | None = None
            created = in_peer = False
            for line in text.split("\n"):
                line = line.removesuffix("\r")
                if not line:
                    return
                key, sep, value = line.partition("=")
                if not sep:
                    raise FakeRefusal(errno.EPROTO, f"no '=' in {line!r}")
                try:
                    if key == "public_key":
                        in_peer = True
                        pk = bytes.fromhex(value)
                        peer, created = None, pk not in self._peers
                        if pk != self._public:
                            peer = self._peers.setdefault(pk, FakePeer(pk))
                    elif not in_peer:
                        self._device_line(key, value)
                    elif peer is not None:
                        peer = self._peer_line(peer, created, key, value)
                except (ValueError, IndexError) as exc:
                    if isinstance(exc, FakeRefusal):
                        raise
                    raise FakeRefusal(errno.EINVAL, f"{line!r}: {exc}") from None

    def _device_line(self, key: str, value: str) -> None:
        if key == "private_key":
            self._set_private_key(bytes.fromhex(value))
        elif key == "listen_port":
            if int(value) == self.fail_listen_port:  # as an Interface that cannot bind
                raise UapiError(ERROR_PORT_IN_USE, "failed to set listen_port: in use")
            self._listen_port = int(value)
        elif key == "fwmark":
            self._fwmark = int(value)
        elif key == "replace_peers":
            self._peers.clear()
        else:
            raise ValueError(f"invalid UAPI device key: {key}")

    def _peer_line(self, peer: FakePeer, created: bool, key: str, value: str) -> FakePeer | None:
        if key == "remove" or (key == "update_only" and created):
            self._peers.pop(peer.public_key, None)
            return None
        if key == "preshared_key":
            psk = bytes.fromhex(value)
            peer.preshared_key = None if psk == bytes(32) else psk
        elif key == "endpoint":
            host, _, port = value.rpartition(":")
            peer.endpoint = (host.removeprefix("[").removesuffix("]"), int(port))
        elif key == "persistent_keepalive_interval":
            was, peer.persistent_keepalive = peer.persistent_keepalive, int(value)
            if was == 0 and peer.persistent_keepalive and peer.endpoint is not None:
                self.outbox.append((b"keepalive", peer.endpoint))
        elif key == "replace_allowed_ips":
            peer.allowed.clear()
        elif key == "allowed_ip":
            net = ipaddress.ip_network(value.removeprefix("-"), strict=False)
            if net in peer.allowed:
                peer.allowed.remove(net)
            if not value.startswith("-"):
                for other in self._peers.values():
                    if net in other.allowed:
                        other.allowed.remove(net)
                peer.allowed.append(net)
        elif key not in ("update_only", "protocol_version"):
            raise ValueError(f"invalid UAPI peer key: {key}")
        return peer

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
    ) -> tuple[int, int, bool]:
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
                peer.endpoint = meta.source(i)[:2]  # (host, port) of a 4-tuple too
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
        return len(packets), len(control), False

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
