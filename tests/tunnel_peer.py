"""One end of the tunnel of ``test_tunnel.py``, on tunoffload's public API only (not the
package's benchmark peer): ``TunDevice(offload=True)`` and a UDP socket connected to the
other end (``UdpSocket``), and the two loops a tunnel made with tunoffload runs. Prints
``ready``; on SIGTERM prints its counters as one line of JSON and exits.

    python tests/tunnel_peer.py TUN ADDRESS/LEN LOCAL_UNDERLAY PEER_UNDERLAY PORT
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable

import tunoffload

BATCH = tunoffload.IDEAL_BATCH_SIZE
HDR = tunoffload.VIRTIO_NET_HDR_LEN
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32


def main(name: str, address: str, local: str, remote: str, port: str) -> None:
    tun = tunoffload.TunDevice(name, offload=True, mtu=1420)
    tun.add_address(address)
    tun.up()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
    sock.bind((local, int(port)))
    sock.connect((remote, int(port)))
    udp = tunoffload.UdpSocket(sock)
    keys = ["tun_reads", "tun_packets", "tun_bytes", "udp_reads", "udp_datagrams", "udp_bytes"]
    c = dict.fromkeys([*keys, "refused"], 0)

    def tun_to_udp() -> None:
        original = bytearray(HDR + 65535)
        bufs, sizes = [bytearray(65535) for _ in range(BATCH)], [0] * BATCH
        while True:
            n = tun.recv_multiple(original, bufs, sizes, 0)
            try:
                udp.send_multiple(bufs, 0, sizes=sizes, count=n)
            except ConnectionRefusedError:  # an ICMP error from before the peer was up
                c["refused"] += 1
            c["tun_reads"] += 1
            c["tun_packets"] += n
            c["tun_bytes"] += sum(sizes[:n])

    def udp_to_tun() -> None:
        gro = tunoffload.GroTable()
        bufs, sizes = [bytearray(HDR + 65535) for _ in range(BATCH)], [0] * BATCH
        while True:
            try:
                n = udp.recv_multiple(bufs, sizes, HDR)
            except ConnectionRefusedError:
                c["refused"] += 1
                continue
            tun.send_multiple(gro, bufs, HDR, sizes=sizes, count=n)
            c["udp_reads"] += 1
            c["udp_datagrams"] += n
            c["udp_bytes"] += sum(sizes[:n])

    def run(loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    def report(signum: int, frame: object) -> None:
        print(json.dumps({**c, "udp": udp.stats, "tun": tun.stats}), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)
    for loop in (tun_to_udp, udp_to_tun):
        threading.Thread(target=run, args=(loop,), daemon=True).start()
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(*sys.argv[1:6])
