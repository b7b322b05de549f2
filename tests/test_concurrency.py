"""TunDevice under threads and signals: nothing hangs, nothing crashes, no data is mixed up.

test_device.py already has: close() waking a reader blocked in recv_multiple (offload),
``ip link del`` under a reader blocked in recv (no offload), and a SIGALRM handler that is
retried through once and then raises out of a blocking recv. This file adds:

- close() from another thread under every blocking call (recv, read, recv_multiple with
  and without offload, wait_readable), several readers at once, and close racing a
  reader that is just starting (many rounds);
- ``ip link del`` under recv_multiple with offload and under wait_readable;
- several threads on several queues of multi-queue devices forwarding TCP at once, with
  every stream's bytes checked (SHA-256);
- the GIL is released during a blocking read (in a child process, so a held GIL fails
  the test by timeout instead of hanging pytest);
- signals: a handler that returns is retried through (EINTR) and the read then returns
  the packet; SIGINT's default handler (KeyboardInterrupt) and a raising SIGALRM handler
  stop recv_multiple / wait_readable / read.

Every device lives in a namespace created here. No test sleeps for a guessed time: a
thread is known to be blocked when the kernel shows it asleep in poll(2) (tests/_threads.py);
every wait is bounded by a generous hang guard, which is not a measurement. Needs root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading

import pytest
from _netns import Netns, can_use_netns
from _threads import HANG_GUARD, MainSignaller, wait_blocked_in_poll

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

if _reason is None:
    import tunoffload as t

HDR = 10
JOIN = HANG_GUARD  # a hang guard for joins, not a measurement


@pytest.fixture
def ns():
    with Netns("tunoff-conc") as n:
        yield n


def _blocking_calls(dev) -> dict:
    off = HDR if dev.offload else 0
    return {
        "recv": lambda: dev.recv(bytearray(70000)),
        "read": lambda: dev.read(),
        "recv_multiple": lambda: dev.recv_multiple(
            bytearray(HDR + 65535), [bytearray(off + 65535)], [0], off
        ),
        "wait_readable": lambda: dev.wait_readable(),
    }


class Blocked:
    """Runs `call` in a thread and records how it ended."""

    def __init__(self, call) -> None:
        self.result: list[object] = []
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call) -> None:
        try:
            self.result.append(("returned", call()))
        except BaseException as e:  # noqa: BLE001 - recorded for the assertions
            self.result.append(("raised", e))

    def join(self) -> tuple[str, object]:
        self.thread.join(JOIN)
        assert not self.thread.is_alive(), "the blocked call did not return"
        return self.result[0]


def _ebadf(outcome) -> bool:
    kind, value = outcome
    return kind == "raised" and isinstance(value, OSError) and value.errno == errno.EBADF


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_close_wakes_every_blocking_call(ns, offload):
    with ns.entered():
        dev = t.TunDevice("cl0", offload=offload)
    calls = _blocking_calls(dev)
    # Two threads in each blocking call at once.
    waiting = {f"{name}#{k}": Blocked(call) for name, call in calls.items() for k in range(2)}
    for name, b in waiting.items():
        wait_blocked_in_poll(b.thread, name)  # fails if it returned without a packet
    dev.close()
    for name, b in waiting.items():
        outcome = b.join()
        assert _ebadf(outcome), f"{name}: {outcome}"


def test_close_races_starting_readers(ns, seed):
    """close() at random moments around a reader's start (right away, after a few
    yields, or once it is blocked): it always ends with EBADF, never hangs."""
    rng = random.Random(seed ^ 6)
    with ns.entered():
        base = t.TunDevice("race0", multi_queue=True, offload=True)
    blocked_rounds = 0
    try:
        for _ in range(40):
            q = base.clone_queue()
            b = Blocked(_blocking_calls(q)[rng.choice(["recv_multiple", "recv", "wait_readable"])])
            when = rng.choice(["now", "now", "yield", "blocked"])
            if when == "yield":
                for _ in range(rng.randrange(1, 200)):
                    os.sched_yield()
            elif when == "blocked":
                wait_blocked_in_poll(b.thread)
                blocked_rounds += 1
            q.close()
            assert _ebadf(b.join()), when
    finally:
        base.close()
    assert blocked_rounds > 0, "no round closed a blocked reader: the seed never chose it"


@pytest.mark.parametrize("call", ["recv_multiple", "wait_readable"])
def test_link_deleted_under_offload_reader(ns, call):
    with ns.entered():
        dev = t.TunDevice("gone0", offload=True)
    b = Blocked(_blocking_calls(dev)[call])
    wait_blocked_in_poll(b.thread, call)
    ns.run("ip", "link", "del", "gone0")
    kind, value = b.join()
    if call == "wait_readable":
        # It wakes (as poll does: a read would not block now); the read then fails.
        assert kind == "returned" or isinstance(value, OSError), (kind, value)
    else:
        assert kind == "raised" and isinstance(value, OSError), (kind, value)
    with pytest.raises(OSError):
        dev.recv_multiple(bytearray(HDR + 65535), [bytearray(HDR + 65535)], [0], HDR)
    dev.close()


# --- the GIL -----------------------------------------------------------------------------

GIL_SPINS = 100_000

_GIL_CHILD = r"""
import sys, threading
sys.path.insert(0, sys.argv[2])
import tunoffload as t
from _threads import HANG_GUARD, wait_blocked_in_poll
dev = t.TunDevice("gil0", offload=True)
calls = {
    "recv": lambda: dev.recv(bytearray(70000)),
    "recv_multiple": lambda: dev.recv_multiple(bytearray(70000), [bytearray(70000)], [0], 10),
    "wait_readable": lambda: dev.wait_readable(),
}
call = calls[sys.argv[1]]
started = threading.Event()
ended = []
def reader():
    started.set()
    try:
        call()
    except OSError as e:
        ended.append(e.errno)
th = threading.Thread(target=reader, daemon=True)
th.start()
started.wait()
# This thread runs Python code while the reader is inside poll(2) (that is how it sees
# it there), then a fixed amount more. If the call held the GIL, none of it could run
# (and the parent's timeout fails the test).
wait_blocked_in_poll(th, sys.argv[1])
for _ in range(int(sys.argv[3])):
    pass
alive = th.is_alive()
dev.close()
th.join(HANG_GUARD)
print(alive, ended, flush=True)
"""


@pytest.mark.parametrize("call", ["recv", "recv_multiple", "wait_readable"])
def test_gil_is_released_during_a_blocking_read(ns, call):
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        r = ns.run(sys.executable, "-c", _GIL_CHILD, call, here, str(GIL_SPINS), check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the child hung: the blocking read holds the GIL")
    assert r.returncode == 0, r.stderr
    alive, ended = r.stdout.split(" ", 1)
    assert alive == "True", "the reader returned without a packet"
    assert ended.strip() == f"[{errno.EBADF}]"


# --- signals -----------------------------------------------------------------------------


def _main_thread_only():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")


@pytest.mark.parametrize("call", ["recv_multiple", "wait_readable", "read"])
def test_keyboard_interrupt_stops_a_blocking_read(ns, call):
    _main_thread_only()
    with ns.entered():
        dev = t.TunDevice("kbd0", offload=True)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        killer = MainSignaller(signal.SIGINT)  # once the call is blocked in poll(2)
        with pytest.raises(KeyboardInterrupt):
            _blocking_calls(dev)[call]()
        killer.join()
        assert killer.sent == 1
    finally:
        signal.signal(signal.SIGINT, old)
        dev.close()


class Alarm(Exception):
    pass


@pytest.mark.parametrize("call", ["recv_multiple", "wait_readable", "read"])
def test_raising_alarm_handler_stops_a_blocking_read(ns, call):
    _main_thread_only()
    with ns.entered():
        dev = t.TunDevice("alrm0", offload=True)

    def handler(signum, frame):
        raise Alarm

    old = signal.signal(signal.SIGALRM, handler)
    try:
        alarm = MainSignaller(signal.SIGALRM)  # once the call is blocked in poll(2)
        with pytest.raises(Alarm):
            _blocking_calls(dev)[call]()
        alarm.join()
        assert alarm.sent == 1
    finally:
        signal.signal(signal.SIGALRM, old)
        dev.close()


def test_eintr_is_retried_and_the_read_then_returns_the_packet(ns):
    """Signals whose handler returns interrupt the wait (EINTR) several times; the read
    goes on and returns the packet that arrives afterwards, intact."""
    _main_thread_only()
    with ns.entered():
        dev = t.TunDevice("eintr0", offload=True, up=True)
        dev.add_address("192.0.2.1/24")
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"after-the-signals:" + bytes(range(200))
    seen = []
    handled = threading.Semaphore(0)

    def handler(signum, frame):
        seen.append(signum)
        handled.release()

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        tx.bind(("192.0.2.1", 0))
        # Five signals, each while the main thread is blocked in poll(2), the next only
        # after the handler ran and the read blocked again.
        killer = MainSignaller(signal.SIGUSR1, count=5, handled=handled)

        def send_after_the_signals():
            killer.join()
            assert handled.acquire(timeout=JOIN), "the handler did not run for signal 5"
            wait_blocked_in_poll(threading.main_thread(), "the read after the signals")
            tx.sendto(payload, ("192.0.2.2", 9))

        sender = Blocked(send_after_the_signals)
        original = bytearray(HDR + 65535)
        bufs, sizes = [bytearray(HDR + 2000)], [0]
        for _ in range(100):  # skip the namespace's own IPv6 chatter
            assert dev.recv_multiple(original, bufs, sizes, HDR) == 1
            pkt = bytes(bufs[0][HDR : HDR + sizes[0]])
            if pkt[0] >> 4 == 4 and pkt[9] == 17:
                break
        else:
            pytest.fail("the packet was not among the first 100 packets read")
        kind, value = sender.join()
        assert kind == "returned", value
        assert seen == [signal.SIGUSR1] * 5, "the handler did not run for every signal"
        assert pkt.endswith(payload)
    finally:
        signal.signal(signal.SIGUSR1, old)
        tx.close()
        dev.close()


# --- several queues, several threads -----------------------------------------------------

QUEUES = 3
STREAMS = 6
STREAM_BYTES = 1 << 20


class QueueForwarder:
    """One thread per (queue pair, direction): recv_multiple on a queue of one device,
    send_multiple on the matching queue of the other, with its own buffers and table."""

    def __init__(self, qa: list, qb: list) -> None:
        self.errors: list[BaseException] = []
        self.threads = []
        for a, b in zip(qa, qb, strict=True):
            for src, dst in ((a, b), (b, a)):
                th = threading.Thread(target=self._run, args=(src, dst), daemon=True)
                th.start()
                self.threads.append(th)

    def _run(self, src, dst) -> None:
        original = bytearray(HDR + 65535)
        bufs = [bytearray(HDR + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
        sizes = [0] * t.IDEAL_BATCH_SIZE
        gro = t.GroTable()
        while True:
            try:
                n = src.recv_multiple(original, bufs, sizes, HDR)
            except OSError:
                return  # closed
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)
                continue
            try:
                dst.send_multiple(gro, bufs, HDR, sizes=sizes, count=n)
            except OSError:
                if dst.closed:
                    return
            except BaseException as e:  # noqa: BLE001
                self.errors.append(e)

    def join(self) -> None:
        for th in self.threads:
            th.join(JOIN)
            assert not th.is_alive(), "a forwarding thread did not stop after close()"


def test_multi_queue_forwarding_threads_keep_every_stream_intact():
    """Two namespaces joined by multi-queue offload devices (3 queues each), one
    forwarding thread per queue and direction; 6 TCP streams at once, each checked."""
    with Netns("tunoff-mqa") as na, Netns("tunoff-mqb") as nb:
        with na.entered():
            a0 = t.TunDevice("mqa", multi_queue=True, offload=True, mtu=1500)
            a0.add_address("198.19.1.1/24")
            a0.up()
        with nb.entered():
            b0 = t.TunDevice("mqb", multi_queue=True, offload=True, mtu=1500)
            b0.add_address("198.19.2.1/24")
            b0.up()
        qa = [a0] + [a0.clone_queue() for _ in range(QUEUES - 1)]
        qb = [b0] + [b0.clone_queue() for _ in range(QUEUES - 1)]
        na.run("ip", "route", "add", "198.19.2.0/24", "dev", "mqa")
        nb.run("ip", "route", "add", "198.19.1.0/24", "dev", "mqb")
        fwd = QueueForwarder(qa, qb)
        try:
            with nb.entered():
                srv = socket.create_server(("198.19.2.1", 0), backlog=STREAMS)
            port = srv.getsockname()[1]
            srv.settimeout(20)
            digests: dict[int, str] = {}
            received: dict[int, str] = {}
            errors: list[BaseException] = []

            def serve_one():
                try:
                    c, _ = srv.accept()
                    with c:
                        c.settimeout(20)
                        tag = int.from_bytes(c.recv(1, socket.MSG_WAITALL), "big")
                        h = hashlib.sha256()
                        n = 0
                        while True:
                            chunk = c.recv(1 << 16)
                            if not chunk:
                                break
                            h.update(chunk)
                            n += len(chunk)
                        received[tag] = f"{n}:{h.hexdigest()}"
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)

            def send_one(tag: int, sock: socket.socket):
                try:
                    data = random.Random(tag).randbytes(STREAM_BYTES)
                    digests[tag] = f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
                    with sock:
                        sock.settimeout(20)
                        sock.connect(("198.19.2.1", port))
                        sock.sendall(bytes([tag]) + data)
                        sock.shutdown(socket.SHUT_WR)
                        sock.recv(1)
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)

            with na.entered():
                socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(STREAMS)]
            threads = [threading.Thread(target=serve_one) for _ in range(STREAMS)]
            threads += [threading.Thread(target=send_one, args=(k, s)) for k, s in enumerate(socks)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
                assert not th.is_alive(), "a stream did not finish"
            srv.close()
            assert not errors, errors
            assert received == digests, "a stream arrived corrupted or incomplete"
            used = [q.stats["reads"] for q in qa + qb]
            assert sum(used) > 0
        finally:
            for q in qa + qb:
                q.close()
            fwd.join()
        assert not fwd.errors, fwd.errors
