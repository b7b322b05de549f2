"""A WireGuard peer in a Python program, with a hook that counts what each inner source
address sent: ``tunoffload.wireguard.Interface`` (see docs/wireguard.md).

    python examples/wireguard_peer.py --name wg0 --key-file KEY --address 10.0.0.1/24 \\
        --listen-port 51820 --peer PUBKEY --allowed-ips 10.0.0.2/32 \\
        [--endpoint 192.0.2.2:51820]

``KEY`` holds a private key as ``wg genkey`` writes it; ``PUBKEY`` is the other side's
public key (``wg pubkey``). Needs CAP_NET_ADMIN and a build with the native
``WireGuardDevice``. Ctrl-C (or SIGTERM) stops it and prints the counters.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading

from tunoffload.wireguard import Interface


class SourceCounter:
    """The hook: bytes per inner IPv4 source address, one pass over each batch."""

    def __init__(self) -> None:
        self.bytes: collections.Counter[bytes] = collections.Counter()

    def __call__(self, bufs: list[bytearray], offset: int, sizes: list[int], count: int) -> None:
        for i in range(count):
            packet = bufs[i]
            if packet[offset] >> 4 == 4:
                self.bytes[bytes(packet[offset + 12 : offset + 16])] += sizes[i]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--name", default="wg0")
    p.add_argument("--key-file", required=True)
    p.add_argument("--address", required=True, help="this side's address, e.g. 10.0.0.1/24")
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--peer", required=True, help="the other side's public key (base64)")
    p.add_argument("--allowed-ips", default="", help="comma-separated prefixes")
    p.add_argument("--endpoint", help="HOST:PORT or [V6]:PORT of the other side")
    args = p.parse_args(argv)

    with open(args.key_file) as f:
        key = f.read().strip()
    counter = SourceCounter()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    iface = Interface(
        args.name,
        private_key=key,
        listen_port=args.listen_port,
        addresses=[args.address],
        up=True,
        hook=counter,
    )
    with iface:
        iface.set_peer(
            args.peer,
            endpoint=args.endpoint,
            allowed_ips=[a for a in args.allowed_ips.split(",") if a],
        )
        print(f"{iface.name}: listening on port {iface.listen_port}", flush=True)
        while not done.is_set() and not iface.wait(0.5):
            pass
    for peer in iface.peers():
        print(f"peer rx {peer['rx_bytes']} tx {peer['tx_bytes']} bytes")
    for source, n in counter.bytes.most_common():
        print(f"from {'.'.join(map(str, source))}: {n} bytes")
    return 0 if iface.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
