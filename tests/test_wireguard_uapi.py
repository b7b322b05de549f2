"""WireGuard's configuration protocol: the native device's rules, and the socket.

The rules (value syntax, ``get`` byte for byte in wireguard-go's order and format, ``set``
semantics section by section, the errno and kind of each refusal and what stays applied
before it) are the native ``WireGuardDevice``'s (``uapi_get``/``uapi_set``, the Rust
core's ``wireguard::uapi``, where cargo tests cover the same tables): these tables run
against it. So does the server (``UapiServer``: framing, several operations on one
connection, the socket's modes, a stale socket replaced, one in use refused, removal),
without root; the pure-Python helpers run alone. Public keys are checked against
``cryptography``'s X25519.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from _wgkeys import public_key_of
from tunoffload import WireGuardDevice
from tunoffload.wireguard import peers_of, uapi
from tunoffload.wireguard.uapi import (
    ERROR_INVALID,
    ERROR_IO,
    ERROR_PROTOCOL,
    UapiError,
    UapiServer,
    uapi_error,
)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
K3 = bytes(range(64, 96))
PSK = bytes([7] * 32)
PRIV = bytes([0x11] * 32)


def device(private_key: bytes | None = PRIV) -> WireGuardDevice:
    """A native device with ``private_key`` (None: none)."""
    dev = WireGuardDevice()
    if private_key is not None:
        dev.uapi_set(f"private_key={private_key.hex()}\n")
    return dev


def refusal(dev: Any, text: str) -> tuple[int, str | None]:
    """The errno a client would read for ``text``, and the refusal's kind."""
    with pytest.raises(ValueError) as err:
        dev.uapi_set(text)
    return uapi_error(err.value).code, getattr(err.value, "kind", None)


def peer_of(dev: Any, key: bytes) -> dict[str, Any]:
    return next(p for p in peers_of(dev.uapi_get()) if p["public_key"] == key)


def keys_of(dev: Any) -> list[bytes]:
    return [p["public_key"] for p in peers_of(dev.uapi_get())]


# --- values (the native device's parsers) -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "written"),
    [
        ("1.2.3.4:51820", ("1.2.3.4", 51820), "1.2.3.4:51820"),
        ("10.0.0.1:0", ("10.0.0.1", 0), "10.0.0.1:0"),
        ("10.0.0.1:65535", ("10.0.0.1", 65535), "10.0.0.1:65535"),
        ("[fd00::1]:51820", ("fd00::1", 51820), "[fd00::1]:51820"),
        ("[FD00:0:0::1]:1", ("fd00::1", 1), "[fd00::1]:1"),
        ("[::ffff:1.2.3.4]:53", ("::ffff:1.2.3.4", 53), "[::ffff:1.2.3.4]:53"),
        ("[fe80::1%lo]:9", ("fe80::1%lo", 9), "[fe80::1%lo]:9"),  # a zone: an interface
        ("1.2.3.4:051820", ("1.2.3.4", 51820), "1.2.3.4:51820"),  # ParseUint: leading zeros
    ],
)
def test_endpoint_accepted(text: str, expected: tuple[str, int], written: str) -> None:
    dev = device()
    dev.uapi_set(f"public_key={K1.hex()}\nendpoint={text}\n")
    assert f"\nendpoint={written}\n" in dev.uapi_get()
    assert peer_of(dev, K1)["endpoint"] == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:+1",
        "1.2.3.4:0x10",
        "fd00::1:51820",  # IPv6 without brackets
        "[1.2.3.4]:51820",  # brackets are for IPv6 only
        "[fd00::1]51820",
        "[fd00::1:51820",
        "example.com:51820",  # names are not resolved by the daemon (wg resolves them)
        "1.2.3.04:1",  # leading zero in an IPv4 octet
        "256.0.0.1:1",
        "[fe80::1%]:9",  # an empty zone
    ],
)
def test_endpoint_refused(text: str) -> None:
    dev = device()
    assert refusal(dev, f"public_key={K1.hex()}\nendpoint={text}\n") == (
        ERROR_INVALID,
        "bad_address",
    )
    assert peer_of(dev, K1)["endpoint"] is None  # the peer's line before it applied


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/24", "10.0.0.0/24"),
        ("10.0.0.1/24", "10.0.0.0/24"),  # masked, as wireguard-go stores it
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("10.1.2.3/32", "10.1.2.3/32"),
        ("fd00::1/64", "fd00::/64"),
        ("::/0", "::/0"),
        ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
        ("FD00::/8", "fd00::/8"),
    ],
)
def test_prefix_accepted(text: str, expected: str) -> None:
    dev = device()
    dev.uapi_set(f"public_key={K1.hex()}\nallowed_ip={text}\n")
    assert peer_of(dev, K1)["allowed_ips"] == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/024",
        "10.0.0.0/255.255.255.0",
        "10.0.0.0/-1",
        "fe80::1%eth0/64",
        "/24",
        "host/24",
    ],
)
def test_prefix_refused(text: str) -> None:
    dev = device()
    assert refusal(dev, f"public_key={K1.hex()}\nallowed_ip={text}\n") == (
        ERROR_INVALID,
        "bad_allowed_ip",
    )


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (PSK.hex(), True),
        (PSK.hex().upper(), True),
        (PSK.hex()[:-2], False),
        (PSK.hex() + "00", False),
        ("zz" + PSK.hex()[2:], False),
        ("0 " + PSK.hex()[2:], False),
        ("", False),
    ],
)
def test_hex_key(text: str, ok: bool) -> None:
    dev = device()
    section = f"public_key={K1.hex()}\npreshared_key={text}\n"
    if ok:
        dev.uapi_set(section)
        assert peer_of(dev, K1)["preshared_key"] == PSK
    else:
        assert refusal(dev, section) == (ERROR_INVALID, "bad_key")


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("0", 0, None),
        ("65535", 65535, None),
        ("00065535", 65535, None),  # leading zeros, as ParseUint takes them
        ("65536", None, "out_of_range"),
        ("-1", None, "bad_uapi_line"),
        ("+1", None, "bad_uapi_line"),
        (" 1", None, "bad_uapi_line"),
        ("1_000", None, "bad_uapi_line"),
        ("", None, "bad_uapi_line"),
        ("\u0661", None, "bad_uapi_line"),  # an Arabic-Indic digit: not ASCII
    ],
)
def test_uint(text: str, value: int | None, kind: str | None) -> None:
    dev = device()
    if value is None:
        assert refusal(dev, f"listen_port={text}\n") == (ERROR_INVALID, kind)
    else:
        dev.uapi_set(f"listen_port={text}\n")
        assert dev.listen_port == value


# --- get ---------------------------------------------------------------------------


def test_get_empty_device() -> None:
    assert device(None).uapi_get() == ""


def test_get_in_wireguard_go_order() -> None:
    dev = device()
    dev.uapi_set(
        f"listen_port=51820\nfwmark=32\npublic_key={K1.hex()}\npreshared_key={PSK.hex()}\n"
        "endpoint=192.0.2.1:51821\npersistent_keepalive_interval=25\n"
        "allowed_ip=fd00::/64\nallowed_ip=10.0.0.1/24\n"
        f"public_key={K2.hex()}\nallowed_ip=10.9.0.0/16\nendpoint=[fd00::9]:7\n"
    )
    private = dev.uapi_get().splitlines()[0].partition("=")[2]
    assert public_key_of(bytes.fromhex(private)) == dev.public_key
    assert dev.uapi_get() == (
        f"private_key={private}\n"
        "listen_port=51820\n"
        "fwmark=32\n"
        f"public_key={K1.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "protocol_version=1\n"
        "endpoint=192.0.2.1:51821\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=fd00::/64\n"  # in the order added, both families together
        "allowed_ip=10.0.0.0/24\n"
        f"public_key={K2.hex()}\n"
        f"preshared_key={bytes(32).hex()}\n"
        "protocol_version=1\n"
        "endpoint=[fd00::9]:7\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "allowed_ip=10.9.0.0/16\n"
    )


# --- set ---------------------------------------------------------------------------


def test_set_device_keys() -> None:
    dev = device(None)
    dev.uapi_set(f"private_key={PRIV.hex()}\nlisten_port=51820\nfwmark=7\n")
    assert dev.public_key == public_key_of(PRIV)
    assert (dev.listen_port, dev.fwmark) == (51820, 7)
    dev.uapi_set(f"private_key={bytes(32).hex()}\nfwmark=0\n")  # zeros: no key
    assert dev.public_key is None and dev.fwmark == 0 and dev.uapi_get() == "listen_port=51820\n"


def test_set_peer_everything() -> None:
    dev = device()
    dev.uapi_set(
        f"public_key={K1.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "protocol_version=1\n"
        "endpoint=[fd00::1]:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.0.0.1/24\n"
        "allowed_ip=fd00::/64\n",
    )
    p = peer_of(dev, K1)
    assert p["preshared_key"] == PSK
    assert p["endpoint"] == ("fd00::1", 51820)
    assert p["persistent_keepalive"] == 25
    assert p["allowed_ips"] == ["10.0.0.0/24", "fd00::/64"]
    # persistent keepalive turned on: a keepalive at once (without a session, the
    # handshake it needs: an initiation to the endpoint)
    out = dev.tick()
    assert [(len(m), ep) for m, ep in out] == [(148, ("fd00::1", 51820))]


@pytest.mark.parametrize(
    ("text", "peers", "allowed"),
    [
        # replace_peers removes everything before the new sections
        (f"replace_peers=true\npublic_key={K3.hex()}\n", [K3], {K3: []}),
        # remove anywhere in a section removes the peer
        (f"public_key={K1.hex()}\nallowed_ip=10.5.0.0/16\nremove=true\n", [K2], {}),
        (f"public_key={K1.hex()}\nremove=true\nallowed_ip=10.5.0.0/16\n", [K2], {}),
        # update_only: nothing for a peer that does not exist, changes for one that does
        (f"public_key={K3.hex()}\nupdate_only=true\nallowed_ip=10.7.0.0/16\n", [K1, K2], {}),
        (
            f"public_key={K1.hex()}\nupdate_only=true\nallowed_ip=10.7.0.0/16\n",
            [K1, K2],
            {K1: ["10.1.0.0/16", "10.7.0.0/16"]},
        ),
        # an allowed IP moves from the peer that had it to the one that takes it
        (
            f"public_key={K2.hex()}\nallowed_ip=10.1.0.0/16\n",
            [K1, K2],
            {K1: [], K2: ["10.2.0.0/16", "10.1.0.0/16"]},
        ),
        # -prefix removes one; the last word on a prefix wins
        (f"public_key={K1.hex()}\nallowed_ip=-10.1.0.0/16\n", [K1, K2], {K1: []}),
        (
            f"public_key={K1.hex()}\nallowed_ip=-10.1.0.0/16\nallowed_ip=10.1.0.0/16\n",
            [K1, K2],
            {K1: ["10.1.0.0/16"]},
        ),
        (
            f"public_key={K1.hex()}\nallowed_ip=10.8.0.0/16\nallowed_ip=-10.8.0.0/16\n",
            [K1, K2],
            {K1: ["10.1.0.0/16"]},
        ),
        # removing a prefix another peer holds changes nothing
        (f"public_key={K1.hex()}\nallowed_ip=-10.2.0.0/16\n", [K1, K2], {K2: ["10.2.0.0/16"]}),
        # replace_allowed_ips forgets what came before it in the section
        (
            f"public_key={K1.hex()}\nallowed_ip=10.8.0.0/16\nreplace_allowed_ips=true\nallowed_ip=10.9.0.0/16\n",
            [K1, K2],
            {K1: ["10.9.0.0/16"]},
        ),
        # a peer with the device's own public key is ignored (as wireguard-go does)
        ("public_key={OWN}\nallowed_ip=10.6.0.0/16\n", [K1, K2], {}),
        # a key in two sections of one operation: both apply, in order
        (
            f"public_key={K1.hex()}\nallowed_ip=10.8.0.0/16\npublic_key={K2.hex()}\n"
            f"allowed_ip=10.8.0.0/16\npublic_key={K1.hex()}\nendpoint=1.2.3.4:5\n",
            [K1, K2],
            {K1: ["10.1.0.0/16"], K2: ["10.2.0.0/16", "10.8.0.0/16"]},
        ),
    ],
)
def test_set_peer_semantics(text: str, peers: list[bytes], allowed: dict[bytes, list[str]]) -> None:
    dev = device()
    dev.uapi_set(
        f"public_key={K1.hex()}\nallowed_ip=10.1.0.0/16\n"
        f"public_key={K2.hex()}\nallowed_ip=10.2.0.0/16\n"
    )
    dev.uapi_set(text.replace("{OWN}", dev.public_key.hex()))
    assert keys_of(dev) == peers  # in the order they were added
    for key, expected in allowed.items():
        assert peer_of(dev, key)["allowed_ips"] == expected


def test_set_private_key_of_a_peer_removes_it() -> None:
    dev = device(None)
    dev.uapi_set(
        f"public_key={public_key_of(PRIV).hex()}\nallowed_ip=10.1.0.0/16\npublic_key={K1.hex()}\n"
    )
    dev.uapi_set(f"private_key={PRIV.hex()}\n")
    assert keys_of(dev) == [K1]


@pytest.mark.parametrize(
    ("text", "code", "kind", "applied"),
    [
        ("listen_port=65536\n", ERROR_INVALID, "out_of_range", False),
        ("listen_port=abc\n", ERROR_INVALID, "bad_uapi_line", False),
        ("fwmark=-1\n", ERROR_INVALID, "bad_uapi_line", False),
        ("private_key=123\n", ERROR_INVALID, "bad_key", False),
        ("replace_peers=false\n", ERROR_INVALID, "bad_uapi_line", False),
        ("bogus=1\n", ERROR_INVALID, "bad_uapi_line", False),
        ("no equals sign\n", ERROR_PROTOCOL, "bad_uapi_line", False),
        # device keys after a peer are peer keys, and invalid ones
        (f"public_key={K3.hex()}\nlisten_port=5\n", ERROR_INVALID, "bad_uapi_line", True),
        (f"public_key={K3.hex()[:10]}\n", ERROR_INVALID, "bad_key", False),
        # the lines before the bad one stay applied (the peer and its endpoint)
        (
            f"public_key={K3.hex()}\nendpoint=1.2.3.4:5\nallowed_ip=bad\n",
            ERROR_INVALID,
            "bad_allowed_ip",
            True,
        ),
        (f"public_key={K3.hex()}\nendpoint=1.2.3.4\n", ERROR_INVALID, "bad_address", True),
        (f"public_key={K3.hex()}\npreshared_key=00\n", ERROR_INVALID, "bad_key", True),
        (
            f"public_key={K3.hex()}\npersistent_keepalive_interval=65536\n",
            ERROR_INVALID,
            "out_of_range",
            True,
        ),
        (
            f"public_key={K3.hex()}\nprotocol_version=2\n",
            ERROR_INVALID,
            "bad_protocol_version",
            True,
        ),
        (f"public_key={K3.hex()}\nremove=1\n", ERROR_INVALID, "bad_uapi_line", True),
        (f"public_key={K3.hex()}\nupdate_only=false\n", ERROR_INVALID, "bad_uapi_line", True),
        (
            f"public_key={K3.hex()}\nreplace_allowed_ips=yes\n",
            ERROR_INVALID,
            "bad_uapi_line",
            True,
        ),
        (f"public_key={K3.hex()}\nunknown=1\n", ERROR_INVALID, "bad_uapi_line", True),
    ],
)
def test_set_refusals(text: str, code: int, kind: str, applied: bool) -> None:
    dev = device()
    with pytest.raises(ValueError) as err:
        dev.uapi_set(text)
    error = uapi_error(err.value)
    assert (error.code, getattr(err.value, "kind", None)) == (code, kind)
    assert str(error).startswith(f"IPC error {code}: ")
    assert (K3 in keys_of(dev)) == applied
    if "endpoint=1.2.3.4:5" in text:
        assert peer_of(dev, K3)["endpoint"] == ("1.2.3.4", 5)


def test_set_lines_after_a_bad_one_are_not_applied() -> None:
    dev = device()
    text = f"public_key={K1.hex()}\nallowed_ip=nope\nallowed_ip=10.0.0.0/8\n"
    assert refusal(dev, text) == (ERROR_INVALID, "bad_allowed_ip")
    assert peer_of(dev, K1)["allowed_ips"] == []


# --- the pure-Python helpers ---------------------------------------------------------------


def test_peers_of_reads_a_get_answer() -> None:
    text = (
        "private_key=" + "11" * 32 + "\nlisten_port=1\n"
        f"public_key={K1.hex()}\npreshared_key={PSK.hex()}\nprotocol_version=1\n"
        "endpoint=[fe80::1%lo]:9\nlast_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=123\ntx_bytes=5\nrx_bytes=6\n"
        "persistent_keepalive_interval=25\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/64\n"
        f"public_key={K2.hex()}\npreshared_key={bytes(32).hex()}\nprotocol_version=1\n"
        "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
    )
    assert peers_of(text) == [
        {
            "public_key": K1,
            "preshared_key": PSK,
            "endpoint": ("fe80::1%lo", 9),
            "last_handshake": (1700000000, 123),
            "tx_bytes": 5,
            "rx_bytes": 6,
            "persistent_keepalive": 25,
            "allowed_ips": ["10.0.0.0/8", "fd00::/64"],
        },
        {
            "public_key": K2,
            "preshared_key": None,
            "endpoint": None,
            "last_handshake": (0, 0),
            "tx_bytes": 0,
            "rx_bytes": 0,
            "persistent_keepalive": 0,
            "allowed_ips": [],
        },
    ]
    assert peers_of("") == [] and peers_of("listen_port=5\n") == []


class _Refusing(ValueError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (_Refusing("no =", errno.EPROTO), ERROR_PROTOCOL),
        (_Refusing("bad", errno.EINVAL), ERROR_INVALID),
        (ValueError("a ValueError without errno"), ERROR_INVALID),
        (UapiError(-98, "in use"), -98),
        (RuntimeError("a bug"), uapi.ERROR_UNKNOWN),
    ],
)
def test_uapi_error_maps_refusals(exc: BaseException, code: int) -> None:
    assert uapi_error(exc).code == code


# --- the stream: several operations, errors, framing ----------------------------------


def serve(dev: Any, data: bytes) -> bytes:
    server = UapiServer.__new__(UapiServer)  # the protocol without a socket
    server.target = dev
    server._lock = threading.Lock()  # noqa: SLF001
    server._closed = threading.Event()  # noqa: SLF001
    server._on_change = None  # noqa: SLF001
    out = bytearray()
    server.serve_stream(io.BytesIO(data), out.extend)
    return bytes(out)


def test_stream_several_operations() -> None:
    dev = device()
    data = (
        f"set=1\npublic_key={K1.hex()}\nallowed_ip=10.0.0.0/8\n\n"
        "get=1\n\n"
        f"set=1\npublic_key={K1.hex()}\nremove=true\n\n"
        "get=1\n\n"
    ).encode()
    key = dev.uapi_get().splitlines()[0].removeprefix("private_key=")
    assert public_key_of(bytes.fromhex(key)) == dev.public_key
    peer = (
        f"public_key={K1.hex()}\npreshared_key={bytes(32).hex()}\nprotocol_version=1\n"
        "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
        "persistent_keepalive_interval=0\nallowed_ip=10.0.0.0/8\n"
    )
    assert serve(dev, data).decode() == (
        f"errno=0\n\nprivate_key={key}\n{peer}errno=0\n\nerrno=0\n\nprivate_key={key}\nerrno=0\n\n"
    )


def test_stream_failed_set_is_read_to_its_end() -> None:
    # the rest of a failed set is dropped, the next operation answered (wireguard-go
    # would lose it); the line before the bad one stays applied
    dev = device(None)
    data = b"set=1\nfwmark=3\nlisten_port=x\nfwmark=9\n\nget=1\n\n"
    assert serve(dev, data) == b"errno=-22\n\nfwmark=3\nerrno=0\n\n"


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"get=1\nx", b"errno=-22\n\n"),  # a get must be followed by a blank line
        (b"get=1\n", b""),  # the client left
        (b"hello\nget=1\n\n", b""),  # not an operation: the connection is dropped
        (b"set=1\r\nfwmark=1\r\n\r\n", b""),  # "set=1\r\n" is no operation either
        (b"set=1\nfwmark=1\r\n\r\nget=1\n\n", b"errno=0\n\nfwmark=1\nerrno=0\n\n"),
        (b"set=1\nfwmark=2", b"errno=0\n\n"),  # the end of input ends a set
        (b"set=1\nfwmark=2\n", b"errno=0\n\n"),
        (b"set=1\n" + b"x" * (uapi.MAX_LINE + 10) + b"\n\nget=1\n\n", b"errno=-5\n\n"),
    ],
)
def test_stream_framing(data: bytes, answer: bytes) -> None:
    assert serve(device(None), data) == answer
    assert ERROR_IO == -5


# --- the socket --------------------------------------------------------------------


def ask(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request)
        out = b""
        while not out.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_server_socket_modes_and_removal(tmp_path: Path) -> None:
    directory = str(tmp_path / "run" / "wireguard")
    dev = device()
    changes: list[int] = []
    server = UapiServer(dev, "wgx0", directory=directory, on_change=lambda: changes.append(1))
    try:
        path = os.path.join(directory, "wgx0.sock")
        assert server.path == path
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755 & ~_umask()
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        server.start()
        assert ask(path, f"set=1\npublic_key={K1.hex()}\n\n".encode()) == b"errno=0\n\n"
        assert changes == [1]
        assert f"public_key={K1.hex()}".encode() in ask(path, b"get=1\n\n")
        assert server.present()
    finally:
        server.close()
    assert not os.path.exists(path)
    server.close()  # idempotent


def test_server_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path: Path) -> None:
    directory = str(tmp_path)
    path = os.path.join(directory, "wgx1.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays: nobody listens on it
    with UapiServer(device(), "wgx1", directory=directory) as server:
        server.start()
        assert ask(path, b"get=1\n\n").endswith(b"errno=0\n\n")
        with pytest.raises(OSError) as err:
            UapiServer(device(), "wgx1", directory=directory)
        assert "in use" in str(err.value)
        assert ask(path, b"get=1\n\n").endswith(b"errno=0\n\n")  # the first one still serves


def test_server_notices_its_socket_removed(tmp_path: Path) -> None:
    server = UapiServer(device(), "wgx2", directory=str(tmp_path))
    try:
        assert server.present()
        os.unlink(server.path)
        assert not server.present()
        # another socket at the same path is not this server's either
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(server.path)
        assert not server.present()
    finally:
        server.close()
    assert os.path.exists(server.path)  # not ours: left alone
    other.close()


def test_server_close_ends_open_connections(tmp_path: Path) -> None:
    server = UapiServer(device(), "wgx3", directory=str(tmp_path))
    server.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(server.path)
    s.sendall(b"get=1\n\n")
    assert s.recv(65536).endswith(b"errno=0\n\n")
    server.close()
    assert s.recv(100) == b""  # the server's side was shut down
    s.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
