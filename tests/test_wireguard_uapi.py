"""WireGuard's configuration protocol (``tunoffload.wireguard.uapi``), without root.

Table-driven: the value parsers (keys, numbers, endpoints, allowed IPs) against what
wireguard-go accepts and refuses; ``get`` output byte for byte in wireguard-go's order and
format; ``set`` operations against the stand-in device (``wgfake``), including the errno
of each refusal and what stays applied before it; several operations on one connection;
and the socket itself (modes, a stale socket replaced, one in use refused, removal).
"""

from __future__ import annotations

import io
import os
import socket
import stat
import threading

import pytest

pytest.importorskip("cryptography")

from tunoffload.wireguard import uapi  # noqa: E402
from tunoffload.wireguard.uapi import (  # noqa: E402
    ERROR_INVALID,
    ERROR_IO,
    ERROR_PORT_IN_USE,
    ERROR_PROTOCOL,
    SetOperation,
    UapiError,
    UapiServer,
    apply_set,
    format_get,
)
from wgfake import FakeDevice, public_key_of  # noqa: E402

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
K3 = bytes(range(64, 96))
PSK = bytes([7] * 32)
PRIV = bytes([0x11] * 32)


def device(private_key: bytes | None = PRIV) -> FakeDevice:
    return FakeDevice(private_key=private_key)


@pytest.fixture(params=["fake", "native"])
def new_device(request):  # type: ignore[no-untyped-def]
    """A device factory: the stand-in, and the native device where this build has it
    (the configuration semantics must be the same)."""
    if request.param == "fake":
        return device
    from tunoffload import _native

    cls = getattr(_native, "WireGuardDevice", None)
    if cls is None:
        pytest.skip("this build has no native WireGuardDevice yet")
    return lambda private_key=PRIV: cls(private_key=private_key)


# --- values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4:51820", ("1.2.3.4", 51820)),
        ("10.0.0.1:0", ("10.0.0.1", 0)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
        ("[fd00::1]:51820", ("fd00::1", 51820)),
        ("[FD00:0:0::1]:1", ("fd00::1", 1)),
        ("[::ffff:1.2.3.4]:53", ("::ffff:1.2.3.4", 53)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("1.2.3.4:051820", ("1.2.3.4", 51820)),  # ParseUint takes leading zeros
    ],
)
def test_endpoint_accepted(text: str, expected: tuple[str, int]) -> None:
    assert uapi.parse_endpoint(text) == expected


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
    ],
)
def test_endpoint_refused(text: str) -> None:
    with pytest.raises(UapiError) as err:
        uapi.parse_endpoint(text)
    assert err.value.code == ERROR_INVALID


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        (("1.2.3.4", 51820), "1.2.3.4:51820"),
        (("fd00::1", 1), "[fd00::1]:1"),
        (("::ffff:1.2.3.4", 53), "[::ffff:1.2.3.4]:53"),
        (("FD00:0::2", 7), "[fd00::2]:7"),
    ],
)
def test_endpoint_format(endpoint: tuple[str, int], text: str) -> None:
    assert uapi.format_endpoint(endpoint) == text


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
    assert uapi.parse_prefix(text) == expected


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
    with pytest.raises(UapiError) as err:
        uapi.parse_prefix(text)
    assert err.value.code == ERROR_INVALID


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (K1.hex(), True),
        (K1.hex().upper(), True),
        (K1.hex()[:-2], False),
        (K1.hex() + "00", False),
        ("zz" + K1.hex()[2:], False),
        ("0 " + K1.hex()[2:], False),
        ("", False),
    ],
)
def test_hex_key(text: str, ok: bool) -> None:
    if ok:
        assert uapi.parse_hex_key(text, "k") == K1
    else:
        with pytest.raises(UapiError) as err:
            uapi.parse_hex_key(text, "k")
        assert err.value.code == ERROR_INVALID


@pytest.mark.parametrize(
    ("text", "bits", "value"),
    [
        ("0", 16, 0),
        ("65535", 16, 65535),
        ("65536", 16, None),
        ("4294967295", 32, 4294967295),
        ("4294967296", 32, None),
        ("-1", 16, None),
        ("+1", 16, None),
        (" 1", 16, None),
        ("1_000", 16, None),
        ("", 16, None),
        ("\u0661", 16, None),  # an Arabic-Indic digit: not ASCII
    ],
)
def test_uint(text: str, bits: int, value: int | None) -> None:
    if value is None:
        with pytest.raises(UapiError):
            uapi.parse_uint(text, bits, "n")
    else:
        assert uapi.parse_uint(text, bits, "n") == value


# --- get ---------------------------------------------------------------------------


def test_get_empty_device() -> None:
    assert format_get(device(None)) == ""


def test_get_in_wireguard_go_order(new_device) -> None:  # type: ignore[no-untyped-def]
    dev = new_device()
    dev.listen_port = 51820
    dev.fwmark = 0x20
    dev.set_peer(
        K1,
        preshared_key=PSK,
        endpoint=("192.0.2.1", 51821),
        persistent_keepalive=25,
        allowed_ips=["10.0.0.0/24", "fd00::/64"],
    )
    dev.set_peer(K2, allowed_ips=["10.9.0.0/16"], endpoint=("fd00::9", 7))
    hs, rx, tx = (0, 0), 0, 0
    if isinstance(dev, FakeDevice):  # counters only the stand-in can be given
        hs, rx, tx = (1700000000, 123), 1234, 5678
        dev.set_stats(K1, rx_bytes=rx, tx_bytes=tx, last_handshake=hs)
    assert format_get(dev) == (
        f"private_key={dev.private_key.hex()}\n"
        "listen_port=51820\n"
        "fwmark=32\n"
        f"public_key={K1.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "protocol_version=1\n"
        "endpoint=192.0.2.1:51821\n"
        f"last_handshake_time_sec={hs[0]}\n"
        f"last_handshake_time_nsec={hs[1]}\n"
        f"tx_bytes={tx}\n"
        f"rx_bytes={rx}\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=10.0.0.0/24\n"
        "allowed_ip=fd00::/64\n"
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


def peer_of(dev: FakeDevice, key: bytes) -> dict:
    return next(p for p in dev.peers() if p["public_key"] == key)


def test_set_device_keys(new_device) -> None:  # type: ignore[no-untyped-def]
    dev = new_device(None)
    apply_set(dev, f"private_key={PRIV.hex()}\nlisten_port=51820\nfwmark=7\n")
    assert dev.public_key == public_key_of(dev.private_key)  # type: ignore[arg-type]
    assert (dev.listen_port, dev.fwmark) == (51820, 7)
    apply_set(dev, f"private_key={bytes(32).hex()}\nfwmark=0\n")  # zeros: no key
    assert dev.private_key is None and dev.fwmark == 0


def test_set_peer_everything(new_device) -> None:  # type: ignore[no-untyped-def]
    dev = new_device()
    apply_set(
        dev,
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
    if isinstance(dev, FakeDevice):
        # persistent keepalive turned on: the device queued one keepalive (sent by tick)
        assert dev.tick() == [(b"keepalive", ("fd00::1", 51820))]


@pytest.mark.parametrize(
    ("text", "peers", "allowed"),
    [
        # replace_peers removes everything before the new sections
        (f"replace_peers=true\npublic_key={K3.hex()}\n", {K3}, {K3: []}),
        # remove anywhere in a section removes the peer
        (f"public_key={K1.hex()}\nallowed_ip=10.5.0.0/16\nremove=true\n", {K2}, {}),
        (f"public_key={K1.hex()}\nremove=true\nallowed_ip=10.5.0.0/16\n", {K2}, {}),
        # update_only: nothing for a peer that does not exist, changes for one that does
        (f"public_key={K3.hex()}\nupdate_only=true\nallowed_ip=10.7.0.0/16\n", {K1, K2}, {}),
        (
            f"public_key={K1.hex()}\nupdate_only=true\nallowed_ip=10.7.0.0/16\n",
            {K1, K2},
            {K1: ["10.1.0.0/16", "10.7.0.0/16"]},
        ),
        # an allowed IP moves from the peer that had it to the one that takes it
        (
            f"public_key={K2.hex()}\nallowed_ip=10.1.0.0/16\n",
            {K1, K2},
            {K1: [], K2: ["10.2.0.0/16", "10.1.0.0/16"]},
        ),
        # -prefix removes one; the last word on a prefix wins
        (f"public_key={K1.hex()}\nallowed_ip=-10.1.0.0/16\n", {K1, K2}, {K1: []}),
        (
            f"public_key={K1.hex()}\nallowed_ip=-10.1.0.0/16\nallowed_ip=10.1.0.0/16\n",
            {K1, K2},
            {K1: ["10.1.0.0/16"]},
        ),
        (
            f"public_key={K1.hex()}\nallowed_ip=10.8.0.0/16\nallowed_ip=-10.8.0.0/16\n",
            {K1, K2},
            {K1: ["10.1.0.0/16"]},
        ),
        # removing a prefix another peer holds changes nothing
        (f"public_key={K1.hex()}\nallowed_ip=-10.2.0.0/16\n", {K1, K2}, {K2: ["10.2.0.0/16"]}),
        # replace_allowed_ips forgets what came before it in the section
        (
            f"public_key={K1.hex()}\nallowed_ip=10.8.0.0/16\nreplace_allowed_ips=true\nallowed_ip=10.9.0.0/16\n",
            {K1, K2},
            {K1: ["10.9.0.0/16"]},
        ),
        # a peer with the device's own public key is ignored (as wireguard-go does)
        ("public_key={OWN}\nallowed_ip=10.6.0.0/16\n", {K1, K2}, {}),
        # a key in two sections of one operation: both apply, in order
        (
            f"public_key={K1.hex()}\nallowed_ip=10.8.0.0/16\npublic_key={K2.hex()}\n"
            f"allowed_ip=10.8.0.0/16\npublic_key={K1.hex()}\nendpoint=1.2.3.4:5\n",
            {K1, K2},
            {K1: ["10.1.0.0/16"], K2: ["10.2.0.0/16", "10.8.0.0/16"]},
        ),
    ],
)
def test_set_peer_semantics(  # type: ignore[no-untyped-def]
    new_device, text: str, peers: set[bytes], allowed: dict[bytes, list[str]]
) -> None:
    dev = new_device()
    dev.set_peer(K1, allowed_ips=["10.1.0.0/16"])
    dev.set_peer(K2, allowed_ips=["10.2.0.0/16"])
    own = dev.public_key
    assert own is not None
    apply_set(dev, text.replace("{OWN}", own.hex()))
    assert {p["public_key"] for p in dev.peers()} == peers
    for key, expected in allowed.items():
        assert peer_of(dev, key)["allowed_ips"] == expected


def test_set_private_key_of_a_peer_removes_it(new_device) -> None:  # type: ignore[no-untyped-def]
    dev = new_device(None)
    dev.set_peer(public_key_of(PRIV), allowed_ips=["10.1.0.0/16"])
    dev.set_peer(K1)
    apply_set(dev, f"private_key={PRIV.hex()}\n")
    assert [p["public_key"] for p in dev.peers()] == [K1]


@pytest.mark.parametrize(
    ("text", "code", "applied"),
    [
        ("listen_port=65536\n", ERROR_INVALID, False),
        ("listen_port=abc\n", ERROR_INVALID, False),
        ("fwmark=-1\n", ERROR_INVALID, False),
        ("private_key=123\n", ERROR_INVALID, False),
        ("replace_peers=false\n", ERROR_INVALID, False),
        ("bogus=1\n", ERROR_INVALID, False),
        ("no equals sign\n", ERROR_PROTOCOL, False),
        ("listen_port=1\n", ERROR_PORT_IN_USE, False),  # the device refuses port 1
        # device keys after a peer are peer keys, and invalid ones
        (f"public_key={K3.hex()}\nlisten_port=5\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()[:10]}\n", ERROR_INVALID, False),
        # the lines before the bad one stay applied (the peer and its endpoint)
        (f"public_key={K3.hex()}\nendpoint=1.2.3.4:5\nallowed_ip=bad\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\nendpoint=1.2.3.4\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\npreshared_key=00\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\npersistent_keepalive_interval=65536\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\nprotocol_version=2\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\nremove=1\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\nupdate_only=false\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\nreplace_allowed_ips=yes\n", ERROR_INVALID, True),
        (f"public_key={K3.hex()}\nunknown=1\n", ERROR_INVALID, True),
    ],
)
def test_set_refusals(text: str, code: int, applied: bool) -> None:
    dev = device()
    dev.fail_listen_port = 1
    with pytest.raises(UapiError) as err:
        apply_set(dev, text)
    assert err.value.code == code
    assert str(err.value).startswith(f"IPC error {code}: ")
    assert any(p["public_key"] == K3 for p in dev.peers()) == applied
    if "endpoint=1.2.3.4:5" in text:
        assert peer_of(dev, K3)["endpoint"] == ("1.2.3.4", 5)


def test_set_operation_lines_after_abort_are_not_applied() -> None:
    dev = device()
    op = SetOperation(dev)
    op.line(f"public_key={K1.hex()}")
    with pytest.raises(UapiError):
        op.line("allowed_ip=nope")
    op.abort()
    assert peer_of(dev, K1)["allowed_ips"] == []


# --- the stream: several operations, errors, framing ----------------------------------


def serve(dev: FakeDevice, data: bytes) -> bytes:
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
    key = dev.private_key.hex()  # type: ignore[union-attr]
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


def test_server_socket_modes_and_removal(tmp_path) -> None:
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


def test_server_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path) -> None:
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


def test_server_notices_its_socket_removed(tmp_path) -> None:
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


def test_server_close_ends_open_connections(tmp_path) -> None:
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
