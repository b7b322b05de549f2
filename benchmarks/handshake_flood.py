"""What a flood of WireGuard handshake initiations costs the native device, per message,
called from Python as ``tunoffload.wireguard.Interface`` calls it.

Rows (each checks that its messages landed in the device counter its label names):

- ``decrypt, bad mac1 (batch of 64)``: initiations whose mac1 is not made for our key, as
  they arrive: a batch of 64 received with ``UdpSocket.recv_multiple`` (inside a network
  namespace of this benchmark's own; needs root, else left out) and given to
  ``decrypt``, which drops them (``hs_bad_mac1``, one keyed BLAKE2s each): no Python per
  message. This is what junk and initiations made for another key cost the daemon.
- ``handle_control, bad mac1``: the same check, one Python call per message.
- ``handle_control, valid mac1, below the load threshold``: mac1 made for our key around
  garbage: the device does the Noise work up to the failed decryption of the static key
  (one X25519), ``hs_invalid``. Only the first 128 handshake messages of a second reach
  this (wireguard-go's threshold); each batch of 100 runs on a fresh device.
- ``handle_control, a genuine initiation replayed, below the threshold``: a real
  initiation from a configured peer, accepted once, then again and again: the Noise work
  (X25519, the static key and the timestamp decrypted) before the replay is refused
  (``hs_replayed`` / ``hs_flood``); fresh devices as above.
- ``handle_control, under load, no mac2``: past the threshold every handshake message
  without a valid mac2 gets a cookie reply instead of the DH work (a BLAKE2s MAC and an
  XChaCha20-Poly1305 seal of 16 bytes, ``hs_cookie_sent``).
- ``handle_control, under load, valid mac2, rate-limited``: an initiation carrying mac2
  made with the cookie we gave its sender, past the per-address limit (20 a second,
  burst 5): mac1, mac2 and the limiter's table, ``hs_rate_limited`` (the 20 a second
  let through are replays: ``hs_replayed``).
- ``call overhead (next_deadline)``: a call into the device that does nothing, for scale.

Nothing is sent anywhere but inside the benchmark's own namespace: the device's answers
(responses, cookie replies) are bytes returned to this program and dropped. Figures move
with the machine's load; compare rows of one run.

    python benchmarks/handshake_flood.py [--seconds 1] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import time
from collections.abc import Callable

import tunoffload as t
from tunoffload.bench.wgpeers import INITIATION_LEN, mac1
from tunoffload.testing import Netns, missing_requirements

SOURCE = ("192.0.2.1", 40000)  # what handle_control is told; nothing is sent there
ENDPOINT = "192.0.2.2:51820"  # the victim as the initiating device knows it; ditto
BATCH = 64
BELOW_THRESHOLD = 100  # messages per fresh device, under the 128 a second
MAC1_AT = INITIATION_LEN - 32


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def victim(force_under_load: bool = False) -> t.WireGuardDevice:
    """A device with a fresh key and no peer yet (see :func:`add_peer`)."""
    dev = t.WireGuardDevice(force_under_load=force_under_load)
    dev.uapi_set(f"private_key={os.urandom(32).hex()}\n")
    return dev


def add_peer(dev: t.WireGuardDevice, public_key: bytes | None) -> None:
    assert public_key is not None
    dev.uapi_set(f"public_key={public_key.hex()}\nallowed_ip=10.0.0.1/32\n")


def pair(force_under_load: bool = False) -> tuple[t.WireGuardDevice, t.WireGuardDevice]:
    """A victim and an initiating device that are each other's peer."""
    v = victim(force_under_load)
    assert v.public_key is not None
    a = initiator(v.public_key)
    add_peer(v, a.public_key)
    return v, a


def initiator(responder: bytes) -> t.WireGuardDevice:
    """A device with ``responder`` as its peer, a handshake queued (a persistent
    keepalive turned on) and retried quickly."""
    dev = t.WireGuardDevice(timers={"rekey_timeout": 0.05})
    dev.uapi_set(
        f"private_key={os.urandom(32).hex()}\npublic_key={responder.hex()}\n"
        f"endpoint={ENDPOINT}\npersistent_keepalive_interval=25\nallowed_ip=10.0.0.2/32\n"
    )
    return dev


def next_initiation(dev: t.WireGuardDevice, deadline_s: float = 3.0) -> bytes:
    """The next handshake initiation ``dev`` sends (``tick`` until there is one)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for msg, _ in dev.tick():
            if len(msg) == INITIATION_LEN and msg[0] == 1:
                return msg
        time.sleep(0.005)
    raise RuntimeError("the initiating device sent no initiation")


def garbage_initiation(public_key: bytes | None, valid_mac1: bool) -> bytes:
    head = struct.pack("<I", 1) + os.urandom(MAC1_AT - 4)
    if valid_mac1:
        assert public_key is not None
        return head + mac1(b64(public_key), head) + bytes(16)
    return head + os.urandom(32)


class Row:
    def __init__(self, label: str, counters: tuple[str, ...]) -> None:
        self.label, self.counters = label, counters
        self.messages = 0
        self.seconds = 0.0
        self.counted = 0

    def add(self, messages: int, seconds: float) -> None:
        self.messages += messages
        self.seconds += seconds

    def check(self) -> None:
        if self.counters and self.counted != self.messages:
            raise RuntimeError(
                f"{self.label}: {self.messages} messages but {self.counted} counted in "
                f"{', '.join(self.counters)}"
            )

    def as_dict(self) -> dict[str, object]:
        rate = self.messages / self.seconds if self.seconds else 0.0
        return {
            "row": self.label,
            "messages": self.messages,
            "per_second": round(rate),
            "us_per_message": round(1e6 / rate, 3) if rate else None,
            "counters": list(self.counters),
        }


def counted(dev: t.WireGuardDevice, names: tuple[str, ...]) -> int:
    stats = dev.stats()
    return sum(stats[n] for n in names)


def timed_calls(
    row: Row, dev: t.WireGuardDevice, call: Callable[[], object], seconds: float
) -> None:
    """``call`` in chunks of 1000 until ``seconds`` have passed."""
    before = counted(dev, row.counters) if row.counters else 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(1000):
            call()
        row.add(1000, time.perf_counter() - t0)
    if row.counters:
        row.counted += counted(dev, row.counters) - before


def below_threshold(
    row: Row, make: Callable[[], tuple[t.WireGuardDevice, bytes]], seconds: float
) -> None:
    """Batches of ``BELOW_THRESHOLD`` calls, each on a fresh device (not timed) and its
    message, until ``seconds`` of calls have been timed."""
    while row.seconds < seconds:
        dev, msg = make()
        before = counted(dev, row.counters)
        t0 = time.perf_counter()
        for _ in range(BELOW_THRESHOLD):
            dev.handle_control(msg, SOURCE)
        row.add(BELOW_THRESHOLD, time.perf_counter() - t0)
        row.counted += counted(dev, row.counters) - before


def decrypt_row(seconds: float) -> Row | str:
    """Batches of bad-mac1 initiations through ``decrypt``, their senders in a
    ``RecvMeta`` filled by a real receive inside a namespace of our own."""
    why = missing_requirements(tun=False)
    if why:
        return why
    row = Row(f"decrypt, bad mac1 (batch of {BATCH})", ("hs_bad_mac1",))
    dev = victim()
    meta = t.RecvMeta(BATCH)
    template = [garbage_initiation(None, False) for _ in range(BATCH)]
    bufs = [bytearray(INITIATION_LEN + 64) for _ in range(BATCH)]
    sizes = [0] * BATCH
    with Netns("tunoff-flood") as ns:
        rx, tx = ns.socket(), ns.socket()
        with rx, tx:
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(5)
            for msg in template:
                tx.sendto(msg, rx.getsockname())
            udp = t.UdpSocket(rx)
            got = 0
            while got < BATCH:  # the metadata of a real receive, kept for every round
                got += udp.recv_multiple(bufs[got:], sizes[got:], 0, meta=meta)
    if got != BATCH:
        raise RuntimeError(f"received {got} of {BATCH} datagrams")
    before = counted(dev, row.counters)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for i, msg in enumerate(template):  # what the receive left there, again
            bufs[i][:INITIATION_LEN] = msg
            sizes[i] = INITIATION_LEN
        t0 = time.perf_counter()
        packets, control, _ = dev.decrypt(bufs, 0, sizes, BATCH, meta)
        row.add(BATCH, time.perf_counter() - t0)
        if packets or control:
            raise RuntimeError(f"decrypt kept {packets} packets, {control} control messages")
    row.counted = counted(dev, row.counters) - before
    return row


def rate_limited_row(seconds: float) -> Row:
    """An initiation with a valid mac2 (the cookie of a reply from the victim), from
    one address, past the limiter's burst."""
    # 20 a second get past the limiter, to the Noise work and a replay refused
    row = Row(
        "handle_control, under load, valid mac2, rate-limited",
        ("hs_rate_limited", "hs_replayed", "hs_flood"),
    )
    dev, init_dev = pair(force_under_load=True)
    first = next_initiation(init_dev)
    replies = dev.handle_control(first, SOURCE)
    if len(replies) != 1 or replies[0][0][0] != 3:
        raise RuntimeError(f"expected a cookie reply, got {replies}")
    init_dev.handle_control(replies[0][0], ("192.0.2.2", 51820))
    with_mac2 = next_initiation(init_dev)
    if with_mac2[-16:] == bytes(16):
        raise RuntimeError("the retried initiation carries no mac2")
    for _ in range(10):  # the burst (one accepted, then replays) and past it
        dev.handle_control(with_mac2, SOURCE)
    timed_calls(row, dev, lambda: dev.handle_control(with_mac2, SOURCE), seconds)
    return row


def run(seconds: float) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    d = decrypt_row(seconds)
    if isinstance(d, str):
        notes.append(f"decrypt row left out: {d}")
    else:
        rows.append(d)

    dev = victim()
    row = Row("handle_control, bad mac1", ("hs_bad_mac1",))
    bad = garbage_initiation(None, False)
    timed_calls(row, dev, lambda: dev.handle_control(bad, SOURCE), seconds)
    rows.append(row)

    def garbage_victim() -> tuple[t.WireGuardDevice, bytes]:
        v = victim()
        return v, garbage_initiation(v.public_key, True)

    row = Row("handle_control, valid mac1, below the load threshold", ("hs_invalid",))
    below_threshold(row, garbage_victim, seconds)
    rows.append(row)

    def replay_victim() -> tuple[t.WireGuardDevice, bytes]:
        v, a = pair()
        msg = next_initiation(a)
        if len(v.handle_control(msg, SOURCE)) != 1:  # accepted once: a response
            raise RuntimeError("the genuine initiation was not answered")
        return v, msg

    row = Row(
        "handle_control, a genuine initiation replayed, below the threshold",
        ("hs_replayed", "hs_flood"),
    )
    below_threshold(row, replay_victim, seconds)
    rows.append(row)

    loaded = victim(force_under_load=True)
    row = Row("handle_control, under load, no mac2", ("hs_cookie_sent",))
    msg = garbage_initiation(loaded.public_key, True)
    timed_calls(row, loaded, lambda: loaded.handle_control(msg, SOURCE), seconds)
    rows.append(row)

    rows.append(rate_limited_row(seconds))

    row = Row("call overhead (next_deadline)", ())
    timed_calls(row, dev, dev.next_deadline, seconds)
    rows.append(row)
    for r in rows:
        r.check()
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per row")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    rows, notes = run(args.seconds)
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in rows], "notes": notes}, indent=2))
        return 0
    print(
        f"handshake flood: {args.seconds:g} s per row, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    width = max(len(r.label) for r in rows)
    print(f"{'row':{width}}  {'messages/s':>11}  {'us/message':>10}  counted in")
    for r in rows:
        rate = r.messages / r.seconds if r.seconds else 0.0
        us = f"{1e6 / rate:.2f}" if rate else "-"
        print(f"{r.label:{width}}  {rate:>11.0f}  {us:>10}  {', '.join(r.counters)}")
    for n in notes:
        print(n, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
