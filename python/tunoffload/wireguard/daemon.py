"""``python -m tunoffload wireguard [-f] IFNAME``: a WireGuard daemon that behaves as
``wireguard-go [-f] IFNAME``.

It creates the TUN device IFNAME in the current network namespace, serves the
configuration protocol on ``/var/run/wireguard/IFNAME.sock`` (so ``wg`` and ``wg-quick``
drive it), and runs an :class:`~tunoffload.wireguard.Interface` until SIGTERM or SIGINT,
until the interface is deleted (``ip link del IFNAME``) or its socket removed (what
``wg-quick down`` does to a userspace implementation); then it removes the socket and the
device and exits 0.

Without ``-f`` (or ``WG_PROCESS_FOREGROUND=1``) it detaches once the device and the
socket exist: the parent exits 0 when the child is serving (1 if the child fails to
start), the child runs in a new session with its standard streams on ``/dev/null``,
unless ``LOG_LEVEL`` is set (and not ``silent``), as wireguard-go keeps them then.

Environment, as wireguard-go's: ``LOG_LEVEL`` = ``verbose`` (or ``debug``), ``error``
(the default) or ``silent``; log lines go to standard output as
``DEBUG: (IFNAME) 2006/01/02 15:04:05 message``.

Testing only (never in production: these weaken or slow the protocol on purpose):

- ``TUNOFFLOAD_WG_TESTING_TIMERS="rekey_after_time=5,reject_after_time=15"``: the
  protocol's timers in seconds (message counts for ``*_messages``), passed to the native
  device's ``timers``; names in :data:`TESTING_TIMER_NAMES`.
- ``TUNOFFLOAD_WG_TESTING_UNDER_LOAD=1``: the device behaves as under load, answering
  every handshake message without a valid cookie MAC with a cookie reply.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

ENV_FOREGROUND = "WG_PROCESS_FOREGROUND"
ENV_LOG_LEVEL = "LOG_LEVEL"
ENV_TESTING_TIMERS = "TUNOFFLOAD_WG_TESTING_TIMERS"
ENV_TESTING_UNDER_LOAD = "TUNOFFLOAD_WG_TESTING_UNDER_LOAD"

TESTING_TIMER_NAMES = (
    "rekey_after_time",  # 120 s
    "reject_after_time",  # 180 s
    "rekey_attempt_time",  # 90 s
    "rekey_timeout",  # 5 s
    "keepalive_timeout",  # 10 s
    "cookie_refresh_time",  # 120 s
    "rekey_after_messages",  # 2^60
    "reject_after_messages",  # 2^64 - 2^13 - 1
)
"""The timers ``TUNOFFLOAD_WG_TESTING_TIMERS`` may set (wireguard-go's constants,
lower case; the defaults are the protocol's)."""

WAIT_S = 0.25  # how often the main thread looks at the socket file and the signals

log = logging.getLogger("tunoffload.wireguard")


class DaemonError(Exception):
    """A setting the daemon cannot start with."""


def log_level(value: str | None) -> int | None:
    """``LOG_LEVEL`` -> a ``logging`` level, ``None`` for silent (wireguard-go's names;
    anything else is ``error``)."""
    if value in ("verbose", "debug"):
        return logging.DEBUG
    if value == "silent":
        return None
    return logging.ERROR


class _WgFormatter(logging.Formatter):
    """wireguard-go's log lines: ``DEBUG: (wg0) 2006/01/02 15:04:05 message``."""

    def __init__(self, ifname: str) -> None:
        super().__init__(f"%(wglevel)s: ({ifname}) %(asctime)s %(message)s", "%Y/%m/%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.wglevel = "ERROR" if record.levelno >= logging.ERROR else "DEBUG"
        return super().format(record)


def configure_logging(ifname: str, level: int | None) -> None:
    log.handlers.clear()
    log.propagate = False
    if level is None:
        log.addHandler(logging.NullHandler())
        log.setLevel(logging.CRITICAL + 1)
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_WgFormatter(ifname))
    log.addHandler(handler)
    log.setLevel(level)


def testing_options(env: Mapping[str, str]) -> dict[str, Any]:
    """The native device's testing keywords from the environment (empty when unset).
    ``DaemonError`` for a malformed value."""
    out: dict[str, Any] = {}
    text = env.get(ENV_TESTING_TIMERS, "").strip()
    if text:
        timers: dict[str, float] = {}
        for item in text.split(","):
            name, sep, value = item.strip().partition("=")
            if not sep or name not in TESTING_TIMER_NAMES:
                raise DaemonError(
                    f"{ENV_TESTING_TIMERS}: {item.strip()!r} is not NAME=VALUE with NAME one "
                    f"of {', '.join(TESTING_TIMER_NAMES)}"
                )
            try:
                number = int(value) if name.endswith("_messages") else float(value)
            except ValueError:
                raise DaemonError(
                    f"{ENV_TESTING_TIMERS}: {name}: not a number: {value!r}"
                ) from None
            if number <= 0:
                raise DaemonError(f"{ENV_TESTING_TIMERS}: {name} must be above 0")
            timers[name] = number
        out["timers"] = timers
    if env.get(ENV_TESTING_UNDER_LOAD, "") not in ("", "0"):
        out["force_under_load"] = True
    return out


def _redirect_stdio(keep_output: bool) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if not keep_output:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.close(devnull)


def run(ifname: str, foreground: bool = False) -> int:
    """Runs the daemon for ``ifname``; returns the exit status (in the foreground
    process; a detaching parent leaves through ``os._exit``)."""
    from .interface import Interface
    from .uapi import UapiServer

    env = os.environ
    foreground = foreground or env.get(ENV_FOREGROUND) == "1"
    level = log_level(env.get(ENV_LOG_LEVEL))
    configure_logging(ifname, level)
    from tunoffload import __version__

    log.debug("Starting tunoffload wireguard version %s", __version__)
    try:
        iface = Interface(ifname, **testing_options(env))
    except Exception as exc:
        log.error("Failed to create TUN device: %s", exc)
        return 1
    try:
        server = UapiServer(iface, iface.name, on_change=iface.config_changed)
    except OSError as exc:
        log.error("UAPI listen error: %s", exc)
        iface.stop()
        return 1

    ready_w = -1
    if not foreground:
        ready_r, ready_w = os.pipe()
        if os.fork() > 0:  # the parent: done once the child says it serves
            os.close(ready_w)
            ready = os.read(ready_r, 1) == b"1"
            os._exit(0 if ready else 1)
        os.close(ready_r)
        os.setsid()
        _redirect_stdio(keep_output=env.get(ENV_LOG_LEVEL, "") != "" and level is not None)

    stop: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        iface.start()
        log.debug("Device started")
        server.start()
        log.debug("UAPI listener started")
        if ready_w >= 0:
            os.write(ready_w, b"1")
            os.close(ready_w)
            ready_w = -1
        while not stop:
            if iface.wait(WAIT_S):
                log.debug("Interface stopped: %s", iface.reason)
                break
            if not server.present():
                log.debug("UAPI socket removed")
                break
        if stop:
            log.debug("Received %s", stop[0])
    finally:
        server.close()
        iface.stop()
        log.debug("Shutting down")
    return 1 if iface.error is not None else 0


def main() -> int:
    """The ``tunoffload-wireguard [-f] IFNAME`` console script: ``python -m tunoffload
    wireguard`` as one executable, for ``WG_QUICK_USERSPACE_IMPLEMENTATION``."""
    from ..cli import main as cli_main

    return cli_main(["wireguard", *sys.argv[1:]])
