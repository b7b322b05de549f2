"""The real ``wg`` tool against ``UapiServer`` serving the native ``WireGuardDevice``.

What ``wg`` reads and writes is the device's configuration protocol (its format and
rules are the native device's), so these run against the native device; the refusal of a
port in use is an ``Interface``'s (it binds the sockets), served the same way.

The server's socket lives in a directory of the test's; every ``wg`` command runs in its
own mount namespace with that directory on ``/run/wireguard`` and in a network namespace
of its own (``tunoffload.testing.wg``), so it sees this server and nothing else on the
machine. Checked: ``wg show`` (all and one interface, and each field), ``wg show IF
dump``, ``wg showconf``, ``wg set``, ``wg setconf``, ``wg addconf``, ``wg syncconf`` (a
peer in both configurations kept, not made again), and a refusal (the errno read back as
``wg``'s error message). Handshake times and byte counters after traffic are checked in
``test_wireguard_interop.py`` (``wg show dump`` of daemons) and the Rust core's tests.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from _wgkeys import public_key_of
from tunoffload import WireGuardDevice
from tunoffload.testing import Netns, missing_requirements, wg
from tunoffload.wireguard import Interface, UapiTarget, peers_of
from tunoffload.wireguard.uapi import UapiServer

_why = missing_requirements(tun=False, tools=["wg"])
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

IF = "wgt0"
PRIV = bytes(range(1, 33))
K1 = bytes(range(100, 132))
K2 = bytes(range(140, 172))
K3 = bytes(range(180, 212))
PSK = bytes([9] * 32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


class Served:
    def __init__(self, rundir: str, dev: Any, server: UapiServer) -> None:
        self.rundir, self.dev, self.server = rundir, dev, server

    def wg(self, *args: str, check: bool = True, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return wg(*args, rundir=self.rundir, check=check, input=stdin)

    def peer(self, key: bytes) -> dict[str, Any]:
        return next(p for p in peers_of(self.dev.uapi_get()) if p["public_key"] == key)

    def keys(self) -> list[bytes]:
        return [p["public_key"] for p in peers_of(self.dev.uapi_get())]

    def private_key(self) -> bytes:
        """The private key as the device stores it (clamped)."""
        line = self.dev.uapi_get().splitlines()[0]
        assert line.startswith("private_key=")
        return bytes.fromhex(line.partition("=")[2])


@contextlib.contextmanager
def _serve(tmp_path, target: UapiTarget, dev: Any) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    rundir = str(tmp_path / "run")
    os.mkdir(rundir)
    server = UapiServer(target, IF, directory=rundir)
    server.start()
    try:
        yield Served(rundir, dev, server)
    finally:
        server.close()


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """The native device, with ``PRIV``, served."""
    dev = WireGuardDevice()
    dev.uapi_set(f"private_key={PRIV.hex()}\n")
    with _serve(tmp_path, dev, dev) as s:
        yield s


def configure(s: Served) -> None:
    s.dev.uapi_set(
        f"listen_port=51820\nfwmark=32\npublic_key={K1.hex()}\npreshared_key={PSK.hex()}\n"
        "endpoint=192.0.2.7:51821\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.1.0.0/16\nallowed_ip=fd00:1::/64\n"
        f"public_key={K2.hex()}\nallowed_ip=10.2.0.0/16\n"
    )


def test_show_dump(served: Served) -> None:
    configure(served)
    out = served.wg("show", IF, "dump").stdout.splitlines()
    private = served.private_key()
    assert out == [
        f"{b64(private)}\t{b64(public_key_of(private))}\t51820\t0x20",
        f"{b64(K1)}\t{b64(PSK)}\t192.0.2.7:51821\t10.1.0.0/16,fd00:1::/64\t0\t0\t0\t25",
        f"{b64(K2)}\t(none)\t(none)\t10.2.0.0/16\t0\t0\t0\toff",
    ]


def test_show(served: Served) -> None:
    configure(served)
    text = served.wg("show", IF).stdout
    assert f"interface: {IF}" in text
    assert f"public key: {b64(served.dev.public_key)}" in text
    assert "private key: (hidden)" in text
    assert "listening port: 51820" in text
    assert "fwmark: 0x20" in text
    assert f"peer: {b64(K1)}" in text and f"peer: {b64(K2)}" in text
    assert "preshared key: (hidden)" in text
    assert "endpoint: 192.0.2.7:51821" in text
    assert "allowed ips: 10.1.0.0/16, fd00:1::/64" in text
    assert "latest handshake" not in text and "transfer" not in text  # none yet
    assert "persistent keepalive: every 25 seconds" in text
    # all interfaces: this one (and no other: the command has its own namespaces)
    assert served.wg("show", "interfaces").stdout.split() == [IF]
    assert served.wg("show").stdout.startswith(f"interface: {IF}\n")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("public-key", lambda s: b64(s.dev.public_key)),
        ("private-key", lambda s: b64(s.private_key())),
        ("listen-port", lambda s: "51820"),
        ("fwmark", lambda s: "0x20"),
        ("peers", lambda s: f"{b64(K1)}\n{b64(K2)}"),
        ("endpoints", lambda s: f"{b64(K1)}\t192.0.2.7:51821\n{b64(K2)}\t(none)"),
        ("allowed-ips", lambda s: f"{b64(K1)}\t10.1.0.0/16 fd00:1::/64\n{b64(K2)}\t10.2.0.0/16"),
        ("transfer", lambda s: f"{b64(K1)}\t0\t0\n{b64(K2)}\t0\t0"),
        ("persistent-keepalive", lambda s: f"{b64(K1)}\t25\n{b64(K2)}\toff"),
        ("preshared-keys", lambda s: f"{b64(K1)}\t{b64(PSK)}\n{b64(K2)}\t(none)"),
        ("latest-handshakes", lambda s: f"{b64(K1)}\t0\n{b64(K2)}\t0"),
    ],
)
def test_show_field(served: Served, field: str, expected) -> None:  # type: ignore[no-untyped-def]
    configure(served)
    assert served.wg("show", IF, field).stdout.strip() == expected(served)


def test_showconf(served: Served) -> None:
    configure(served)
    assert served.wg("showconf", IF).stdout == (
        "[Interface]\n"
        "ListenPort = 51820\n"
        "FwMark = 0x20\n"
        f"PrivateKey = {b64(served.private_key())}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {b64(K1)}\n"
        f"PresharedKey = {b64(PSK)}\n"
        "AllowedIPs = 10.1.0.0/16, fd00:1::/64\n"
        "Endpoint = 192.0.2.7:51821\n"
        "PersistentKeepalive = 25\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {b64(K2)}\n"
        "AllowedIPs = 10.2.0.0/16\n"
    )


def test_set(served: Served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    keyfile, pskfile = tmp_path / "key", tmp_path / "psk"
    new_private = bytes(range(50, 82))
    keyfile.write_text(b64(new_private) + "\n")
    pskfile.write_text(b64(PSK) + "\n")
    served.wg(
        "set", IF, "listen-port", "51999", "fwmark", "0x10", "private-key", str(keyfile),
        "peer", b64(K1), "preshared-key", str(pskfile), "endpoint", "[fd00::7]:4242",
        "persistent-keepalive", "15", "allowed-ips", "10.5.0.1/24,fd00:5::/64",
    )  # fmt: skip
    dev = served.dev
    assert (dev.listen_port, dev.fwmark) == (51999, 0x10)
    assert dev.public_key == public_key_of(new_private)
    p = served.peer(K1)
    assert p["preshared_key"] == PSK
    assert p["endpoint"] == ("fd00::7", 4242)
    assert p["persistent_keepalive"] == 15
    assert p["allowed_ips"] == ["10.5.0.0/24", "fd00:5::/64"]
    # allowed-ips replaces the list; persistent-keepalive off; fwmark off; removal
    served.wg("set", IF, "fwmark", "off", "peer", b64(K1), "allowed-ips", "10.6.0.0/16",
              "persistent-keepalive", "off")  # fmt: skip
    p = served.peer(K1)
    assert p["allowed_ips"] == ["10.6.0.0/16"] and p["persistent_keepalive"] == 0
    assert dev.fwmark == 0
    served.wg("set", IF, "peer", b64(K1), "remove")
    assert served.keys() == []


def test_set_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # an Interface (as the daemon serves it) cannot bind a port in use in its namespace
    why = missing_requirements(tools=["wg"])
    if why is not None:
        pytest.skip(why)
    with Netns("wgpy-w") as ns:
        blocker = ns.socket()
        blocker.bind(("0.0.0.0", 0))
        port = blocker.getsockname()[1]
        iface = Interface(IF, netns=ns.name, private_key=PRIV)
        try:
            with blocker:
                with _serve(tmp_path, iface, iface.device) as s:
                    proc = s.wg("set", IF, "listen-port", str(port), "fwmark", "7", check=False)
                    assert proc.returncode == 1
                    # errno=-98, as wireguard-go answers; the sockets and port kept
                    assert "Address already in use" in proc.stderr
                    assert iface.listen_port != port and s.dev.listen_port == iface.listen_port
                    assert s.wg("show", IF, "fwmark").stdout.strip() == "0x7"
        finally:
            iface.stop()


CONF = """[Interface]
PrivateKey = {priv}
ListenPort = 41000

[Peer]
PublicKey = {k2}
AllowedIPs = 10.22.0.0/16
Endpoint = 198.51.100.2:7000

[Peer]
PublicKey = {k3}
AllowedIPs = 10.33.0.0/16, fd33::/48
PersistentKeepalive = 5
"""


def conf_file(tmp_path, name: str = "wg.conf") -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(CONF.format(priv=b64(PRIV), k2=b64(K2), k3=b64(K3)))
    return str(path)


def with_k3(s: Served) -> None:
    """K3 too, with an endpoint the configuration file does not give it."""
    configure(s)
    s.dev.uapi_set(f"public_key={K3.hex()}\nendpoint=192.0.2.33:3\n")


def test_setconf_replaces_everything(served: Served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with_k3(served)
    served.wg("setconf", IF, conf_file(tmp_path))
    assert served.keys() == [K2, K3]  # K1 gone: setconf replaces the peers
    assert served.dev.listen_port == 41000
    assert served.dev.fwmark == 0  # setconf sends fwmark=0 when the file has none
    assert served.peer(K2)["allowed_ips"] == ["10.22.0.0/16"]  # replaced, not added
    assert served.peer(K2)["endpoint"] == ("198.51.100.2", 7000)
    assert served.peer(K3)["allowed_ips"] == ["10.33.0.0/16", "fd33::/48"]
    assert served.peer(K3)["persistent_keepalive"] == 5
    assert served.peer(K3)["endpoint"] is None  # made again: what the file says only


def test_addconf_adds(served: Served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    configure(served)
    served.wg("addconf", IF, conf_file(tmp_path))
    assert set(served.keys()) == {K1, K2, K3}  # K1 kept: addconf adds
    assert served.peer(K2)["allowed_ips"] == ["10.22.0.0/16"]  # a peer's list is replaced
    assert served.peer(K1)["allowed_ips"] == ["10.1.0.0/16", "fd00:1::/64"]


def test_syncconf_keeps_unchanged_peers(served: Served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with_k3(served)
    served.wg("syncconf", IF, conf_file(tmp_path))
    assert served.keys() == [K2, K3]  # K1 gone, the others kept
    assert served.peer(K3)["endpoint"] == ("192.0.2.33", 3)  # the same peer, updated
    assert served.peer(K2)["allowed_ips"] == ["10.22.0.0/16"]
    assert served.peer(K3)["allowed_ips"] == ["10.33.0.0/16", "fd33::/48"]
    assert served.dev.listen_port == 41000
