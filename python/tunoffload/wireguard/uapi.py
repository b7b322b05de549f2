"""WireGuard's cross-platform configuration protocol (UAPI) on its unix socket, as
wireguard-go serves it.

The protocol (https://www.wireguard.com/xplatform/) runs over the unix socket
``/var/run/wireguard/IFNAME.sock``; ``wg`` and ``wg-quick`` use it for every userspace
implementation. A client sends an operation and reads the answer, several times per
connection if it likes:

- ``get=1\\n\\n`` -> ``key=value`` lines, then ``errno=0`` and a blank line;
- ``set=1\\n`` and ``key=value`` lines up to a blank line -> ``errno=N`` and a blank line.

This module is the socket and the framing only: what the lines say (every key wireguard-go
reports and accepts, the values' syntax, the semantics, the refusals) is the native
device's (``WireGuardDevice.uapi_get`` / ``uapi_set``, the Rust core's
``wireguard::uapi``), served here for any :class:`~tunoffload.wireguard._device.UapiTarget`
(the device itself, or an ``Interface``, which also binds and marks its sockets).

Errors are wireguard-go's: ``errno=-22`` (``-EINVAL``) for a bad key or value,
``-98`` (``-EADDRINUSE``) when the listen port cannot be bound or the fwmark set,
``-71`` (``-EPROTO``) for a line without ``=``, ``-5`` (``-EIO``) for an unreadable
request, ``-55`` for anything else. As in wireguard-go, the lines before a bad one stay
applied. Unlike wireguard-go, a whole ``set`` is read (to its blank line) before it is
applied, so a client may go on with another operation on the same connection after a
refusal.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from ._device import UapiTarget

SOCKET_DIRECTORY = "/var/run/wireguard"
SOCKET_MODE = 0o700  # what wireguard-go's umask 077 leaves of a socket's 0777
DIRECTORY_MODE = 0o755

ERROR_IO = -errno.EIO
ERROR_PROTOCOL = -errno.EPROTO
ERROR_INVALID = -errno.EINVAL
ERROR_PORT_IN_USE = -errno.EADDRINUSE
ERROR_UNKNOWN = -55  # ENOANO, as wireguard-go's IpcErrorUnknown

MAX_LINE = 65536  # bufio.Scanner's largest token in wireguard-go
MAX_CONNECTIONS = 64  # served at once; more are closed at once

log = logging.getLogger("tunoffload.wireguard")


class UapiError(Exception):
    """A failed operation: ``code`` is the (negative) errno the client reads."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"IPC error {self.code}: {self.args[0]}"


def uapi_error(exc: BaseException) -> UapiError:
    """A target's refusal as the errno the client reads: a :class:`UapiError` as it is;
    a ``ValueError`` (the native device's ``InputError``) as its ``errno`` attribute
    says (``-EINVAL`` without one); anything else ``-55`` (unknown)."""
    if isinstance(exc, UapiError):
        return exc
    if isinstance(exc, ValueError):
        code = getattr(exc, "errno", None)
        return UapiError(-code if isinstance(code, int) and code > 0 else ERROR_INVALID, str(exc))
    return UapiError(ERROR_UNKNOWN, repr(exc))


def socket_path(ifname: str, directory: str = SOCKET_DIRECTORY) -> str:
    """Where the configuration socket of ``ifname`` lives."""
    return os.path.join(directory, f"{ifname}.sock")


# --- the socket --------------------------------------------------------------------


def listen_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path``, as wireguard-go opens it: the directory made
    (0755), the socket 0700; a stale socket (nobody answers on it) replaced; one that
    answers is ``OSError(EADDRINUSE)``."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), SOCKET_MODE)  # the mode bind() gives the file
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(path)
                except OSError:
                    pass
                else:
                    raise OSError(errno.EADDRINUSE, f"{path}: unix socket in use") from None
            os.remove(path)
            sock.bind(path)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


class UapiServer:
    """Serves the configuration protocol for ``target`` on ``socket_path(ifname)``.

    The socket is created (and bound) by the constructor, so that a daemon can fork
    after it exists; :meth:`start` serves it from a thread, one more thread per
    connection. :meth:`close` stops, ends open connections and removes the socket file
    if it is still this server's. Operations are serialized (one lock for all
    connections), as wireguard-go's are.
    """

    def __init__(
        self,
        target: UapiTarget,
        ifname: str,
        *,
        directory: str = SOCKET_DIRECTORY,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.path = socket_path(ifname, directory)
        self._on_change = on_change
        self._listener = listen_unix(self.path)
        st = os.lstat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._lock = threading.Lock()  # one operation at a time
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._closed = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        return self._listener.fileno()

    def present(self) -> bool:
        """Whether the socket file is still there and still this server's (``wg-quick
        down`` removes it to stop a userspace implementation)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._identity

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the UAPI server is started already")
        self._thread = threading.Thread(target=self._accept_loop, name="uapi", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops serving; idempotent. Removes the socket file if it is still ours."""
        if self._closed.is_set():
            return
        self._closed.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.present():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._listener.close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> UapiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        import select

        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._closed.is_set():
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    return
                try:
                    conn, _addr = self._listener.accept()
                except OSError:
                    continue
                with self._conns_lock:
                    if len(self._conns) >= MAX_CONNECTIONS:
                        log.error("UAPI: too many connections; closing a new one")
                        conn.close()
                        continue
                    self._conns.add(conn)
                threading.Thread(
                    target=self._serve, args=(conn,), name="uapi-conn", daemon=True
                ).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn.makefile("rb") as reader:
                self.serve_stream(reader, conn.sendall)
        except OSError:
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            conn.close()

    def serve_stream(self, reader: BinaryIO, write: Callable[[bytes], Any]) -> None:
        """Answers the operations read from ``reader`` until its end or a line that is
        no operation (then the connection is dropped, as wireguard-go drops it)."""
        while not self._closed.is_set():
            op = reader.readline(MAX_LINE + 1)
            if not op:
                return
            body = ""
            status = 0
            if op == b"set=1\n":
                status, resync = self._set(reader)
                if not resync:
                    write(f"errno={status}\n\n".encode())
                    return
            elif op == b"get=1\n":
                nxt = reader.read(1)
                if not nxt:
                    return
                if nxt != b"\n":
                    status = ERROR_INVALID
                    log.error("IPC error %d: trailing character in UAPI get: %r", status, nxt)
                else:
                    with self._lock:
                        try:
                            body = self.target.uapi_get()
                        except Exception as exc:
                            status = ERROR_UNKNOWN
                            log.error("IPC error %d: get: %r", status, exc)
            else:
                log.error("invalid UAPI operation: %r", op[:64])
                return
            write(f"{body}errno={status}\n\n".encode())

    def _set(self, reader: BinaryIO) -> tuple[int, bool]:
        """Reads one ``set`` to its blank line and applies it; returns (errno, whether the
        stream is still in step, i.e. the operation's end was found)."""
        lines: list[str] = []
        error: UapiError | None = None
        in_step = True
        while True:
            raw = reader.readline(MAX_LINE + 1)
            if not raw.endswith(b"\n") and len(raw) > MAX_LINE:
                # The lines before it are applied (as wireguard-go reads them), then EIO.
                error = UapiError(ERROR_IO, "failed to read input: line too long")
                in_step = False
                break
            line = raw.rstrip(b"\n").removesuffix(b"\r")  # as bufio.ScanLines reads it
            if not line:
                break  # a blank line, or the end of input
            lines.append(line.decode("utf-8", "replace"))
        with self._lock:
            try:
                self.target.uapi_set("".join(f"{line}\n" for line in lines))
            except Exception as exc:  # the lines before the bad one stay applied
                error = uapi_error(exc)
        if self._on_change is not None:
            self._on_change()
        if error is not None:
            log.error("%s", error)
            return error.code, in_step
        return 0, True
