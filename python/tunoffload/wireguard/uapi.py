"""WireGuard's cross-platform configuration protocol (UAPI), as wireguard-go speaks it.

The protocol (https://www.wireguard.com/xplatform/) runs over the unix socket
``/var/run/wireguard/IFNAME.sock``; ``wg`` and ``wg-quick`` use it for every userspace
implementation. A client sends an operation and reads the answer, several times per
connection if it likes:

- ``get=1\\n\\n`` -> ``key=value`` lines (``private_key``, ``listen_port``, ``fwmark``,
  then per peer ``public_key``, ``preshared_key``, ``protocol_version``, ``endpoint``,
  ``last_handshake_time_sec``/``_nsec``, ``tx_bytes``, ``rx_bytes``,
  ``persistent_keepalive_interval`` and each ``allowed_ip``), then ``errno=0`` and a
  blank line;
- ``set=1\\n`` and ``key=value`` lines up to a blank line -> ``errno=N`` and a blank line.
  Device keys first (``private_key``, ``listen_port``, ``fwmark``, ``replace_peers``),
  then a ``public_key`` line opens each peer's section (``remove``, ``update_only``,
  ``preshared_key``, ``endpoint``, ``persistent_keepalive_interval``,
  ``replace_allowed_ips``, ``allowed_ip`` (``-PREFIX`` removes one), ``protocol_version``).

Errors are wireguard-go's: ``errno=-22`` (``-EINVAL``) for a bad key or value,
``-98`` (``-EADDRINUSE``) when the listen port cannot be bound or the fwmark set,
``-71`` (``-EPROTO``) for a line without ``=``, ``-5`` (``-EIO``) for an unreadable
request, ``-55`` for anything else. As in wireguard-go, the lines before a bad one stay
applied. Unlike wireguard-go, the rest of a failed ``set`` is read up to its blank line,
so a client may go on with another operation on the same connection.

:func:`format_get` and :class:`SetOperation` are the protocol; :class:`UapiServer`
serves it on the socket for any :class:`~tunoffload.wireguard._device.PeerConfigTarget`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ._device import KEY_LEN, Endpoint, PeerConfigTarget

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

_DIGITS = re.compile(r"[0-9]+")
_ZERO_KEY = bytes(KEY_LEN)

log = logging.getLogger("tunoffload.wireguard")


class UapiError(Exception):
    """A failed operation: ``code`` is the (negative) errno the client reads."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"IPC error {self.code}: {self.args[0]}"


# --- values ------------------------------------------------------------------------


def socket_path(ifname: str, directory: str = SOCKET_DIRECTORY) -> str:
    """Where the configuration socket of ``ifname`` lives."""
    return os.path.join(directory, f"{ifname}.sock")


def parse_hex_key(value: str, what: str) -> bytes:
    """32 bytes from exactly 64 hexadecimal digits (either case), else ``-EINVAL``."""
    try:
        key = bytes.fromhex(value) if len(value) == 2 * KEY_LEN else b""
    except ValueError:
        key = b""
    if len(key) != KEY_LEN:
        raise UapiError(ERROR_INVALID, f"failed to set {what}: not 64 hexadecimal digits")
    return key


def parse_uint(value: str, bits: int, what: str) -> int:
    """A decimal number of at most ``bits`` bits (as Go's ``strconv.ParseUint``)."""
    if not _DIGITS.fullmatch(value) or int(value) >> bits:
        raise UapiError(ERROR_INVALID, f"failed to parse {what}: {value!r}")
    return int(value)


def parse_true(value: str, what: str) -> None:
    if value != "true":
        raise UapiError(ERROR_INVALID, f"failed to set {what}, invalid value: {value}")


def format_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as Go's ``netip`` writes it (an IPv4-mapped IPv6 one as
    ``::ffff:1.2.3.4``, where Python writes ``::ffff:102:304``)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        zone = f"%{addr.scope_id}" if addr.scope_id else ""
        return f"::ffff:{addr.ipv4_mapped}{zone}"
    return str(addr)


def parse_endpoint(value: str) -> Endpoint:
    """``1.2.3.4:51820`` or ``[fd00::1]:51820`` (with an optional ``%zone``) -> ``(host,
    port)``, the host in canonical form. IP literals only, as wireguard-go takes them."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address
        if value.startswith("["):
            host, sep, port = value[1:].partition("]:")
            if not sep:
                raise ValueError("no ']:'")
            addr = ipaddress.IPv6Address(host)
        else:
            host, sep, port = value.rpartition(":")
            if not sep:
                raise ValueError("no ':'")
            addr = ipaddress.IPv4Address(host)
        return (format_address(addr), parse_uint(port, 16, "port"))
    except (ValueError, UapiError):
        raise UapiError(ERROR_INVALID, f"failed to set endpoint {value}") from None


def format_endpoint(endpoint: Endpoint) -> str:
    """``(host, port)`` as the protocol writes it: ``h:p``, or ``[h]:p`` for IPv6."""
    host, port = endpoint[0], endpoint[1]
    addr = ipaddress.ip_address(host)
    if addr.version == 6:
        return f"[{format_address(addr)}]:{port}"
    return f"{addr}:{port}"


def parse_prefix(value: str) -> str:
    """``10.0.0.1/24`` -> ``10.0.0.0/24``: an allowed IP, masked (as wireguard-go keeps
    it). ``-EINVAL`` for anything else (no zones, no netmask form, no leading zeros)."""
    addr_text, sep, bits_text = value.rpartition("/")
    try:
        if not sep or not _DIGITS.fullmatch(bits_text):
            raise ValueError("bad prefix length")
        if len(bits_text) > 1 and bits_text[0] == "0":
            raise ValueError("a prefix length with a leading zero")
        if "%" in addr_text:
            raise ValueError("a zone")
        addr = ipaddress.ip_address(addr_text)
        net = ipaddress.ip_network((addr, int(bits_text)), strict=False)
    except ValueError:
        raise UapiError(ERROR_INVALID, f"failed to set allowed ip: {value!r}") from None
    return f"{format_address(net.network_address)}/{net.prefixlen}"


# --- get ---------------------------------------------------------------------------


def format_get(target: PeerConfigTarget) -> str:
    """The body of a ``get=1`` answer (everything before ``errno=0``), in wireguard-go's
    order and format."""
    lines: list[str] = []
    private_key = target.private_key
    if private_key is not None and private_key != _ZERO_KEY:
        lines.append(f"private_key={private_key.hex()}")
    if target.listen_port:
        lines.append(f"listen_port={target.listen_port}")
    if target.fwmark:
        lines.append(f"fwmark={target.fwmark}")
    for peer in target.peers():
        psk = peer.get("preshared_key") or _ZERO_KEY
        sec, nsec = peer.get("last_handshake") or (0, 0)
        lines.append(f"public_key={bytes(peer['public_key']).hex()}")
        lines.append(f"preshared_key={bytes(psk).hex()}")
        lines.append("protocol_version=1")
        if peer.get("endpoint") is not None:
            lines.append(f"endpoint={format_endpoint(peer['endpoint'])}")
        lines.append(f"last_handshake_time_sec={int(sec)}")
        lines.append(f"last_handshake_time_nsec={int(nsec)}")
        lines.append(f"tx_bytes={int(peer.get('tx_bytes', 0))}")
        lines.append(f"rx_bytes={int(peer.get('rx_bytes', 0))}")
        lines.append(f"persistent_keepalive_interval={int(peer.get('persistent_keepalive', 0))}")
        lines.extend(f"allowed_ip={prefix}" for prefix in peer.get("allowed_ips", ()))
    return "".join(line + "\n" for line in lines)


# --- set ---------------------------------------------------------------------------


@dataclass
class PeerUpdate:
    """One peer's section of a ``set``, reduced to one ``set_peer`` call. Allowed IPs are
    kept in order with the last word on each prefix winning (adds and removals of
    different prefixes commute; ``replace_allowed_ips`` forgets what came before it)."""

    public_key: bytes
    ignored: bool = False  # the device's own key: wireguard-go ignores such a section
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: dict[str, bool] = field(default_factory=dict)  # prefix -> add?

    def allowed_ip(self, prefix: str, add: bool) -> None:
        self.allowed_ips.pop(prefix, None)
        self.allowed_ips[prefix] = add

    def apply(self, target: PeerConfigTarget) -> None:
        """Calls ``target.set_peer`` once for the whole section."""
        if self.ignored:
            return
        if self.remove:
            _call(lambda: target.set_peer(self.public_key, remove=True), "remove peer")
            return
        adds = [p for p, add in self.allowed_ips.items() if add]
        removals = [p for p, add in self.allowed_ips.items() if not add]
        extra: dict[str, Any] = {}
        if removals and not self.replace_allowed_ips:
            extra["remove_allowed_ips"] = removals  # only when there are any: see notes
        _call(
            lambda: target.set_peer(
                self.public_key,
                update_only=self.update_only,
                preshared_key=self.preshared_key,
                endpoint=self.endpoint,
                persistent_keepalive=self.persistent_keepalive,
                replace_allowed_ips=self.replace_allowed_ips,
                allowed_ips=adds,
                **extra,
            ),
            "configure peer",
        )


def _call(fn: Callable[[], object], what: str, os_code: int = ERROR_IO) -> None:
    """Runs one change on the device, its refusal as the errno the client sees."""
    try:
        fn()
    except UapiError:
        raise
    except (ValueError, TypeError) as exc:
        raise UapiError(ERROR_INVALID, f"failed to {what}: {exc}") from exc
    except OSError as exc:
        raise UapiError(os_code, f"failed to {what}: {exc}") from exc
    except Exception as exc:
        raise UapiError(ERROR_UNKNOWN, f"failed to {what}: {exc!r}") from exc


class SetOperation:
    """One ``set=1`` operation, fed line by line (without the newline).

    Device lines take effect at once, in order; a peer's section is applied as one
    ``set_peer`` call when the next ``public_key`` line or the end comes. ``line`` raises
    :class:`UapiError`; then call :meth:`abort` (which applies what the section had
    before the bad line, as wireguard-go would have) and feed nothing more.
    """

    def __init__(self, target: PeerConfigTarget) -> None:
        self._target = target
        self._peer: PeerUpdate | None = None
        self._device_lines = True

    def line(self, line: str) -> None:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(ERROR_PROTOCOL, f"failed to parse line {line!r}")
        if key == "public_key":
            self._flush()
            self._device_lines = False
            try:
                public_key = parse_hex_key(value, "public_key")
            except UapiError:
                raise UapiError(ERROR_INVALID, "failed to get peer by public key") from None
            own = self._target.public_key
            self._peer = PeerUpdate(public_key, ignored=own is not None and own == public_key)
        elif self._device_lines:
            self._device_line(key, value)
        else:
            assert self._peer is not None
            self._peer_line(self._peer, key, value)

    def finish(self) -> None:
        """The end of the operation (a blank line or the end of input)."""
        self._flush()

    def abort(self) -> None:
        """After an error: applies the section up to the bad line, then stops."""
        self._flush()

    def _flush(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.apply(self._target)

    def _device_line(self, key: str, value: str) -> None:
        target = self._target
        if key == "private_key":
            private_key = parse_hex_key(value, "private_key")
            new = None if private_key == _ZERO_KEY else private_key
            log.debug("UAPI: Updating private key")
            _call(lambda: setattr(target, "private_key", new), "set private_key")
        elif key == "listen_port":
            port = parse_uint(value, 16, "listen_port")
            log.debug("UAPI: Updating listen port")
            _call(
                lambda: setattr(target, "listen_port", port), "set listen_port", ERROR_PORT_IN_USE
            )
        elif key == "fwmark":
            mark = parse_uint(value, 32, "fwmark")
            log.debug("UAPI: Updating fwmark")
            _call(lambda: setattr(target, "fwmark", mark), "update fwmark", ERROR_PORT_IN_USE)
        elif key == "replace_peers":
            parse_true(value, "replace_peers")
            log.debug("UAPI: Removing all peers")
            _call(target.remove_all_peers, "remove all peers")
        else:
            raise UapiError(ERROR_INVALID, f"invalid UAPI device key: {key}")

    @staticmethod
    def _peer_line(peer: PeerUpdate, key: str, value: str) -> None:
        if key == "update_only":
            parse_true(value, "update only")
            peer.update_only = True
        elif key == "remove":
            parse_true(value, "remove")
            peer.remove = True
        elif key == "preshared_key":
            peer.preshared_key = parse_hex_key(value, "preshared key")
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive = parse_uint(value, 16, "persistent keepalive interval")
        elif key == "replace_allowed_ips":
            parse_true(value, "replace allowed ips")
            peer.replace_allowed_ips = True
            peer.allowed_ips.clear()
        elif key == "allowed_ip":
            add = not value.startswith("-")
            peer.allowed_ip(parse_prefix(value if add else value[1:]), add)
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(ERROR_INVALID, f"invalid protocol version: {value}")
        else:
            raise UapiError(ERROR_INVALID, f"invalid UAPI peer key: {key}")


def apply_set(target: PeerConfigTarget, text: str) -> None:
    """Applies the lines of a ``set`` (without ``set=1``; up to a blank line or the end)
    to ``target``; raises :class:`UapiError` as the server would answer it."""
    op = SetOperation(target)
    for line in text.split("\n"):
        if line == "":
            break
        try:
            op.line(line)
        except UapiError:
            op.abort()
            raise
    op.finish()


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
        target: PeerConfigTarget,
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
                            body = format_get(self.target)
                        except Exception as exc:
                            status = ERROR_UNKNOWN
                            log.error("IPC error %d: get: %r", status, exc)
            else:
                log.error("invalid UAPI operation: %r", op[:64])
                return
            write(f"{body}errno={status}\n\n".encode())

    def _set(self, reader: BinaryIO) -> tuple[int, bool]:
        """Reads and applies one ``set``; returns (errno, whether the stream is still in
        step, i.e. the operation's end was found)."""
        op = SetOperation(self.target)
        error: UapiError | None = None
        in_step = True
        with self._lock:
            while True:
                raw = reader.readline(MAX_LINE + 1)
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                elif len(raw) > MAX_LINE:
                    error = error or UapiError(ERROR_IO, "failed to read input: line too long")
                    in_step = False
                    break
                if raw.endswith(b"\r"):  # as bufio.ScanLines drops it
                    raw = raw[:-1]
                if not raw:
                    break  # a blank line, or the end of input
                if error is not None:
                    continue  # the rest of a failed operation, read and dropped
                try:
                    op.line(raw.decode("utf-8", "replace"))
                except UapiError as exc:
                    error = exc
                    try:
                        op.abort()
                    except UapiError as late:
                        log.error("%s", late)
            if error is None:
                try:
                    op.finish()
                except UapiError as exc:
                    error = exc
        if self._on_change is not None:
            self._on_change()
        if error is not None:
            log.error("%s", error)
            return error.code, in_step
        return 0, in_step
