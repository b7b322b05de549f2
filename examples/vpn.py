#!/usr/bin/env python3
"""A point-to-point encrypted tunnel (a very small VPN) on tunoffload.

    python -c "import os; print(os.urandom(32).hex())" > key.hex   # once; copy to the peer
    python examples/vpn.py --tun vpn0 --address 10.77.0.1/24 \\
        --listen 0.0.0.0:51820 --peer 192.0.2.2:51820 --key-file key.hex
    # on the peer: --address 10.77.0.2/24 --peer <this host>:51820, the same key

Two threads, one per direction, each moving a batch per system call:

- TUN -> peer: ``TunDevice(offload=True).recv_multiple`` reads one super-packet (up to
  64 KiB) and splits it into MTU-sized IP packets; each is encrypted into a datagram, and
  ``UdpSocket.send_multiple`` sends the batch (equal-size datagrams go out as one
  ``UDP_SEGMENT`` send). The device's ``gso_max_segs`` is set to what one such send
  carries (``UdpSocket.max_segments(mtu + 28)``: 45 at MTU 1420), so every super-packet
  leaves in one send.
- peer -> TUN: ``UdpSocket.recv_multiple`` takes every datagram queued (a ``UDP_GRO``
  read is split at its segment size); each is checked against the replay window,
  verified and decrypted, and ``TunDevice.send_multiple`` coalesces the packets again
  (GRO) into as few writes as it can.

Each datagram is ``sender id (4) | counter (8) | ciphertext | Poly1305 tag (16)``,
ChaCha20-Poly1305 with the pre-shared key; the first 12 bytes are the nonce. The nonce
never repeats for one key: the sender id is the last 4 bytes of the sender's own tunnel
address (the two ends of a link have different ones, so each has its own half of the
nonce space), and the counter goes up by one per datagram from the wall clock in
nanoseconds at start-up (so a restart continues above the counters used before). A
datagram that is too short or not an IP packet inside is dropped as malformed, one whose
tag does not verify as forged, and one whose counter was seen already, is older than the
2048-counter window, or that carries our own sender id (a reflection) as replayed; none
of them reaches the TUN device. The cipher and the window are
``tunoffload.bench.cipher.PacketCipher`` / ``ReplayWindow`` (shared with ``tunoffload
bench``); read them for the details and the limits (no handshake: no forward secrecy, and
a receiver that restarts forgets its window).

Counters (sent, received, dropped_forged, dropped_replayed, dropped_malformed, and
tun_errors / send_errors for what the kernel refused) are written as JSON to
``--stats-file`` (else to stderr) on SIGUSR1 and at exit. SIGTERM or SIGINT stops the
tunnel: the device is closed, which ends the blocked read, and both threads are joined.
Needs root (or CAP_NET_ADMIN) and ``pip install 'tunoffload[vpn]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable

import tunoffload as t
from tunoffload.bench.cipher import OVERHEAD, PacketCipher, read_key, sender_id
from tunoffload.bench.tunnel import make_socket, parse_endpoint

BATCH = t.IDEAL_BATCH_SIZE
OFFSET = t.VIRTIO_NET_HDR_LEN  # headroom for the virtio header of each packet to the TUN
BUF = 65535  # room for any datagram or packet


class Tunnel:
    def __init__(self, args: argparse.Namespace) -> None:
        key = read_key(args.key_file)
        own_id = sender_id(args.address)
        self.peer: tuple[str, int] = args.peer
        self.stats_file: str | None = args.stats_file
        self.sealer = PacketCipher(key, own_id)  # TUN -> peer: the send counter
        self.opener = PacketCipher(key, own_id)  # peer -> TUN: the replay window
        self.sent = self.received = self.tun_errors = self.send_errors = 0
        self.stopping = threading.Event()
        self.failed = False  # a thread ended by an error, not by the stop

        self.tun = t.TunDevice(args.tun, offload=True, mtu=args.mtu)
        # super-packets the kernel hands us fit one UDP_SEGMENT send of sealed datagrams
        self.tun.gso_max_segs = t.UdpSocket.max_segments(args.mtu + OVERHEAD)
        self.tun.add_address(args.address)
        self.tun.up()
        self.sock = make_socket(args.listen, peer=None)  # bound, with 4 MiB buffers
        self.sock.settimeout(0.5)  # so the receiving thread sees a stop within 0.5 s
        # one UdpSocket per thread on the one socket; not connected: datagrams are
        # accepted from any address (the tag says who sent them), sent to --peer
        self.udp_out = t.UdpSocket(self.sock)
        self.udp_in = t.UdpSocket(self.sock)

    def tun_to_peer(self) -> None:
        original = bytearray(t.VIRTIO_NET_HDR_LEN + BUF)  # one super-packet as read
        plain = [bytearray(BUF) for _ in range(BATCH)]  # the packets it splits into
        plain_views = [memoryview(b) for b in plain]  # views made once, not per packet
        sizes = [0] * BATCH
        wire = [bytearray(BUF) for _ in range(BATCH)]  # the datagrams
        wire_views = [memoryview(b) for b in wire]
        wire_sizes = [0] * BATCH
        while True:
            try:
                n = self.tun.recv_multiple(original, plain, sizes)
            except ValueError as e:  # a super-packet that cannot be split: lost, go on
                print(f"vpn: {e}", file=sys.stderr)
                continue
            self.sealer.seal(plain_views, 0, sizes, n, wire_views, wire_sizes)
            try:
                self.sent += self.udp_out.send_multiple(
                    wire, 0, sizes=wire_sizes, count=n, addr=self.peer
                )
            except OSError as e:  # no route to the peer, say: these are lost, go on
                if self.stopping.is_set():
                    raise
                self.send_errors += 1
                if self.send_errors == 1:
                    print(f"vpn: sending to the peer: {e}", file=sys.stderr)
                self.sent += getattr(e, "datagrams_sent", 0)

    def peer_to_tun(self) -> None:
        wire = [bytearray(BUF) for _ in range(BATCH)]
        wire_views = [memoryview(b) for b in wire]
        wire_sizes = [0] * BATCH
        # no memoryviews on these: send_multiple coalesces packets inside them
        plain = [bytearray(OFFSET + BUF) for _ in range(BATCH)]
        sizes = [0] * BATCH
        gro = t.GroTable()
        while not self.stopping.is_set():
            try:
                n = self.udp_in.recv_multiple(wire, wire_sizes)
            except TimeoutError:
                continue
            m = self.opener.open(wire_views, wire_sizes, n, plain, OFFSET, sizes)
            if not m:
                continue
            self.received += m  # counted first: whoever sees the packet sees the count
            try:
                self.tun.send_multiple(gro, plain, OFFSET, sizes=sizes, count=m)
            except OSError as e:
                if self.tun.closed:
                    raise
                self.tun_errors += 1  # the kernel refused a packet; the others went in
                self.received -= m - getattr(e, "packets_sent", 0)

    def run_thread(self, body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except BaseException:
                if not self.stopping.is_set():
                    self.failed = True
                    raise
            finally:
                self.stopping.set()  # one direction ending ends the tunnel

        th = threading.Thread(target=run, name=getattr(body, "__name__", "vpn"))
        th.start()
        return th

    def counters(self) -> dict[str, int]:
        o = self.opener
        return {
            "sent": self.sent,
            "received": self.received,
            "dropped_forged": o.dropped_forged,
            "dropped_replayed": o.dropped_replayed,
            "dropped_malformed": o.dropped_malformed,
            "tun_errors": self.tun_errors,
            "send_errors": self.send_errors,
        }

    def dump(self) -> None:
        text = json.dumps(self.counters())
        if self.stats_file is None:
            print(text, file=sys.stderr, flush=True)
            return
        tmp = f"{self.stats_file}.tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, self.stats_file)  # readers never see half a file

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGUSR1, lambda *_: self.dump())
        threads = [self.run_thread(self.tun_to_peer), self.run_thread(self.peer_to_tun)]
        print(f"vpn: {self.tun.name} up, peer {self.peer[0]}:{self.peer[1]}", file=sys.stderr)
        self.stopping.wait()
        self.tun.close()  # ends a blocked recv_multiple / send_multiple with OSError
        for th in threads:
            th.join()
        self.sock.close()
        self.dump()
        return 1 if self.failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A point-to-point encrypted tunnel on tunoffload.")
    p.add_argument("--tun", default="vpn0", help="TUN device name (default vpn0)")
    p.add_argument("--address", required=True, help="this end's tunnel address, 10.77.0.1/24")
    p.add_argument("--listen", required=True, type=parse_endpoint, help="HOST:PORT to bind")
    p.add_argument("--peer", required=True, type=parse_endpoint, help="the peer's HOST:PORT")
    p.add_argument("--key-file", required=True, help="pre-shared key: 64 hex digits")
    p.add_argument("--mtu", type=int, default=1420, help="TUN MTU (default 1420)")
    p.add_argument("--stats-file", help="where SIGUSR1 and the exit write the counters")
    args = p.parse_args(argv)
    try:
        tunnel = Tunnel(args)
    except (ValueError, OSError) as e:  # a bad key file, no such address, no permission
        p.exit(2, f"vpn: {e}\n")
    return tunnel.run()


if __name__ == "__main__":
    sys.exit(main())
