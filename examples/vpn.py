#!/usr/bin/env python3
"""A point-to-point encrypted tunnel (a very small VPN) on tunoffload.

    python -c "import os; print(os.urandom(32).hex())" > key.hex   # once; copy to the peer
    python examples/vpn.py --tun vpn0 --address 10.77.0.1/24 \\
        --listen 0.0.0.0:51820 --peer 192.0.2.2:51820 --key-file key.hex
    # on the peer: --address 10.77.0.2/24 --peer <this host>:51820, the same key

Two processes, one per direction (forked once the device and the socket exist, so the
two never wait for each other's GIL), each moving a batch per system call and sealing or
opening it with one call into Rust (no Python per packet):

- TUN -> peer: ``TunDevice(offload=True).recv_multiple`` reads one super-packet (up to
  64 KiB) and splits it into MTU-sized IP packets, each behind 16 bytes of headroom;
  ``PskCipher.seal`` (:class:`tunoffload.Sealer`) turns them into WireGuard
  transport-data messages in place, and ``UdpSocket.send_multiple`` sends the batch
  (equal-size datagrams go out as one ``UDP_SEGMENT`` send). The device's
  ``gso_max_segs`` is set to what one such send carries
  (``UdpSocket.max_segments(mtu + TRANSPORT_OVERHEAD)``: 45 at MTU 1420), so every
  super-packet leaves in one send.
- peer -> TUN: ``UdpSocket.recv_multiple`` takes every datagram queued (a ``UDP_GRO``
  read is split at its segment size); ``PskCipher.open`` (:class:`tunoffload.Opener`)
  verifies, checks the replay window and decrypts them in place, and
  ``TunDevice.send_multiple`` coalesces the packets again (GRO) into as few writes as it
  can.

Each datagram is a WireGuard transport-data message: ``4 | 0 0 0 | sender id (4) |
counter (8) | ChaCha20-Poly1305(packet padded to 16) | tag (16)``. Each direction has its
own key, derived from the pre-shared key and the sender's id (the last 4 bytes of its
tunnel address), and counters start at the wall clock in nanoseconds, so a nonce never
repeats under one key, across restarts too (:mod:`tunoffload.psk` says how, and its
limits: no handshake, no forward secrecy; ``python -m tunoffload wireguard`` has both).
A datagram that is not a transport message, or whose packet is not an IP packet, is
dropped as malformed; one whose tag does not verify, as forged; one whose counter was
seen already or is behind the 8192-counter window, or that carries our own sender id (a
reflection), as replayed. None of them reaches the TUN device.

Counters (sent, received, dropped_forged, dropped_replayed, dropped_malformed, and
tun_errors / send_errors for what the kernel refused) are written as JSON to
``--stats-file`` (else to stderr) on SIGUSR1 and at exit (by the receiving process, which
reads the sending one's counters from memory the two share). SIGTERM or SIGINT to the
process started stops the tunnel: it closes the device (which ends its blocked read),
tells the receiving process to stop, and waits for it. Needs root (or CAP_NET_ADMIN);
nothing beyond tunoffload itself.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import signal
import sys
import threading

import tunoffload as t
from tunoffload.bench.tunnel import make_socket, parse_endpoint
from tunoffload.psk import PskCipher, read_key

BATCH = t.IDEAL_BATCH_SIZE
HEAD = t.TRANSPORT_HEADER_LEN  # a message's header goes in front of its packet
BUF = 65535  # room for any datagram or packet
# Blocked across the fork until each process has its handlers: one that arrives sooner
# waits for them (a child that ended before the parent's SIGCHLD handler, a SIGTERM to
# the child before it took its own) instead of being lost or killing the wrong way.
SIGNALS = {signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}


class Tunnel:
    def __init__(self, args: argparse.Namespace) -> None:
        self.cipher = PskCipher(read_key(args.key_file), args.address, mtu=args.mtu)
        self.peer: tuple[str, int] = args.peer
        self.stats_file: str | None = args.stats_file
        self.received = self.tun_errors = 0
        # the sending process's counters (sent, send_errors), where the receiving one
        # reads them: memory the two processes share after the fork
        self.tx = memoryview(mmap.mmap(-1, 16)).cast("q")
        self.stopping = threading.Event()

        self.tun = t.TunDevice(args.tun, offload=True, mtu=args.mtu)
        # super-packets the kernel hands us fit one UDP_SEGMENT send of sealed datagrams
        self.tun.gso_max_segs = t.UdpSocket.max_segments(args.mtu + t.TRANSPORT_OVERHEAD)
        self.tun.add_address(args.address)
        self.tun.up()
        self.sock = make_socket(args.listen, peer=None)  # bound, with 4 MiB buffers
        self.sock.settimeout(0.5)  # so the receiving process sees a stop within 0.5 s
        # not connected: datagrams are accepted from any address (the tag says who sent
        # them), sent to --peer
        self.udp = t.UdpSocket(self.sock)

    def tun_to_peer(self) -> None:
        original = bytearray(t.VIRTIO_NET_HDR_LEN + BUF)  # one super-packet as read
        # packet i lands at bufs[i][HEAD:], and its message is sealed in place at bufs[i][0:]
        bufs = [bytearray(HEAD + BUF + t.TRANSPORT_OVERHEAD) for _ in range(BATCH)]
        sizes = [0] * BATCH
        tx = self.tx
        while True:
            try:
                n = self.tun.recv_multiple(original, bufs, sizes, HEAD)
            except ValueError as e:  # a super-packet that cannot be split: lost, go on
                print(f"vpn: {e}", file=sys.stderr)
                continue
            self.cipher.seal(bufs, HEAD, sizes, n)
            try:
                tx[0] += self.udp.send_multiple(bufs, 0, sizes=sizes, count=n, addr=self.peer)
            except OSError as e:  # no route to the peer, say: these are lost, go on
                if self.stopping.is_set():
                    raise
                tx[1] += 1
                if tx[1] == 1:
                    print(f"vpn: sending to the peer: {e}", file=sys.stderr)
                tx[0] += getattr(e, "datagrams_sent", 0)

    def peer_to_tun(self) -> None:
        # datagram i lands at bufs[i][0:] and opens in place to a packet at bufs[i][HEAD:];
        # no memoryviews on these: send_multiple coalesces packets inside them
        bufs = [bytearray(HEAD + BUF) for _ in range(BATCH)]
        sizes = [0] * BATCH
        gro = t.GroTable()
        while not self.stopping.is_set():
            try:
                n = self.udp.recv_multiple(bufs, sizes)
            except TimeoutError:
                continue
            m = self.cipher.open(bufs, 0, sizes, n)
            if not m:
                continue
            self.received += m  # counted first: whoever sees the packet sees the count
            try:
                self.tun.send_multiple(gro, bufs, HEAD, sizes=sizes, count=m)
            except (OSError, ValueError) as e:  # (ValueError: refused before any write)
                if self.tun.closed:
                    raise
                self.tun_errors += 1  # the kernel refused a packet; the others went in
                self.received -= m - getattr(e, "packets_sent", 0)

    def counters(self) -> dict[str, int]:
        c = self.cipher.stats
        return {
            "sent": self.tx[0],
            "received": self.received,
            "dropped_forged": c["dropped_forged"],
            "dropped_replayed": c["dropped_replayed"],
            "dropped_malformed": c["dropped_malformed"],
            "tun_errors": self.tun_errors,
            "send_errors": self.tx[1],
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

    def receiving(self, mask: set[int | signal.Signals]) -> int:
        """The forked process: peer -> TUN until SIGTERM, then the counters. ``mask``:
        the signal mask to restore once its handlers are in place."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sending process decides
        signal.signal(signal.SIGUSR1, lambda *_: self.dump())
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = 0
        try:
            self.peer_to_tun()
        except BaseException as e:  # noqa: BLE001 (reported, then the exit code says it)
            if not self.stopping.is_set():
                print(f"vpn: receiving: {e!r}", file=sys.stderr)
                code = 1
        self.tun.close()
        self.sock.close()
        self.dump()
        return code

    def run(self) -> int:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        child = os.fork()
        if child == 0:
            code = 1  # receiving() itself failed
            try:
                code = self.receiving(mask)
            except BaseException as e:  # noqa: BLE001 (reported, then the exit code says it)
                print(f"vpn: receiving: {e!r}", file=sys.stderr)
            finally:
                os._exit(code)
        failed = False

        def sending() -> None:
            nonlocal failed
            try:
                self.tun_to_peer()
            except BaseException:
                failed = not self.stopping.is_set()
                if failed:
                    raise
            finally:
                self.stopping.set()

        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGCHLD, lambda *_: self.stopping.set())  # it ended: so do we
        signal.signal(signal.SIGUSR1, lambda *_: os.kill(child, signal.SIGUSR1))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        th = threading.Thread(target=sending, name="tun_to_peer")
        th.start()
        print(f"vpn: {self.tun.name} up, peer {self.peer[0]}:{self.peer[1]}", file=sys.stderr)
        self.stopping.wait()
        self.tun.close()  # ends a blocked recv_multiple with OSError
        th.join()
        self.sock.close()
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(child, 0)
        return 1 if failed or os.waitstatus_to_exitcode(status) != 0 else 0


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
