"""The real ``wg`` tool against ``UapiServer`` (backed by the stand-in device ``wgfake``).

The server's socket lives in a directory of the test's; every ``wg`` command runs in its
own mount namespace with that directory on ``/run/wireguard`` and in a network namespace
of its own (``tunoffload.testing.wg``), so it sees this server and nothing else on the
machine. Checked: ``wg show`` (all and one interface, and each field), ``wg show IF
dump``, ``wg showconf``, ``wg set``, ``wg setconf``, ``wg addconf``, ``wg syncconf``, and a
refusal (the errno read back as ``wg``'s error message).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import pytest
from tunoffload.testing import missing_requirements, wg

_why = missing_requirements(tun=False, tools=["wg"])
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
pytest.importorskip("cryptography")

from tunoffload.wireguard.uapi import UapiServer  # noqa: E402
from wgfake import FakeDevice, public_key_of  # noqa: E402

IF = "wgt0"
PRIV = bytes(range(1, 33))
K1 = bytes(range(100, 132))
K2 = bytes(range(140, 172))
K3 = bytes(range(180, 212))
PSK = bytes([9] * 32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


class Served:
    def __init__(self, rundir: str, dev: FakeDevice, server: UapiServer) -> None:
        self.rundir, self.dev, self.server = rundir, dev, server

    def wg(self, *args: str, check: bool = True, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return wg(*args, rundir=self.rundir, check=check, input=stdin)

    def peer(self, key: bytes) -> dict:
        return next(p for p in self.dev.peers() if p["public_key"] == key)

    def keys(self) -> list[bytes]:
        return [p["public_key"] for p in self.dev.peers()]


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    rundir = str(tmp_path / "run")
    os.mkdir(rundir)
    dev = FakeDevice(private_key=PRIV)
    server = UapiServer(dev, IF, directory=rundir)
    server.start()
    try:
        yield Served(rundir, dev, server)
    finally:
        server.close()


def configure(s: Served) -> None:
    s.dev.listen_port = 51820
    s.dev.fwmark = 0x20
    s.dev.set_peer(
        K1,
        preshared_key=PSK,
        endpoint=("192.0.2.7", 51821),
        persistent_keepalive=25,
        allowed_ips=["10.1.0.0/16", "fd00:1::/64"],
    )
    s.dev.set_peer(K2, allowed_ips=["10.2.0.0/16"])
    s.dev.set_stats(K1, rx_bytes=1234, tx_bytes=567890, last_handshake=(int(time.time()) - 5, 7))


def test_show_dump(served: Served) -> None:
    configure(served)
    out = served.wg("show", IF, "dump").stdout.splitlines()
    pub = public_key_of(served.dev.private_key)  # type: ignore[arg-type]
    hs = served.peer(K1)["last_handshake"][0]
    assert out == [
        f"{b64(served.dev.private_key)}\t{b64(pub)}\t51820\t0x20",  # type: ignore[arg-type]
        f"{b64(K1)}\t{b64(PSK)}\t192.0.2.7:51821\t10.1.0.0/16,fd00:1::/64\t{hs}\t1234\t567890\t25",
        f"{b64(K2)}\t(none)\t(none)\t10.2.0.0/16\t0\t0\t0\toff",
    ]


def test_show(served: Served) -> None:
    configure(served)
    text = served.wg("show", IF).stdout
    assert f"interface: {IF}" in text
    assert f"public key: {b64(served.dev.public_key)}" in text  # type: ignore[arg-type]
    assert "private key: (hidden)" in text
    assert "listening port: 51820" in text
    assert "fwmark: 0x20" in text
    assert f"peer: {b64(K1)}" in text and f"peer: {b64(K2)}" in text
    assert "preshared key: (hidden)" in text
    assert "endpoint: 192.0.2.7:51821" in text
    assert "allowed ips: 10.1.0.0/16, fd00:1::/64" in text
    assert "latest handshake: 5 seconds ago" in text or "latest handshake: 6 seconds ago" in text
    assert "transfer: 1.21 KiB received, 554.58 KiB sent" in text
    assert "persistent keepalive: every 25 seconds" in text
    # all interfaces: this one (and no other: the command has its own namespaces)
    assert served.wg("show", "interfaces").stdout.split() == [IF]
    assert served.wg("show").stdout.startswith(f"interface: {IF}\n")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("public-key", lambda s: b64(s.dev.public_key)),
        ("private-key", lambda s: b64(s.dev.private_key)),
        ("listen-port", lambda s: "51820"),
        ("fwmark", lambda s: "0x20"),
        ("peers", lambda s: f"{b64(K1)}\n{b64(K2)}"),
        ("endpoints", lambda s: f"{b64(K1)}\t192.0.2.7:51821\n{b64(K2)}\t(none)"),
        ("allowed-ips", lambda s: f"{b64(K1)}\t10.1.0.0/16 fd00:1::/64\n{b64(K2)}\t10.2.0.0/16"),
        ("transfer", lambda s: f"{b64(K1)}\t1234\t567890\n{b64(K2)}\t0\t0"),
        ("persistent-keepalive", lambda s: f"{b64(K1)}\t25\n{b64(K2)}\toff"),
        ("preshared-keys", lambda s: f"{b64(K1)}\t{b64(PSK)}\n{b64(K2)}\t(none)"),
        (
            "latest-handshakes",
            lambda s: f"{b64(K1)}\t{s.peer(K1)['last_handshake'][0]}\n{b64(K2)}\t0",
        ),
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
        f"PrivateKey = {b64(served.dev.private_key)}\n"  # type: ignore[arg-type]
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


def test_set(served: Served, tmp_path) -> None:
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


def test_set_refused(served: Served) -> None:
    served.dev.fail_listen_port = 4242
    proc = served.wg("set", IF, "listen-port", "4242", check=False)
    assert proc.returncode == 1
    assert "Address already in use" in proc.stderr  # errno=-98, as wireguard-go answers


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


def conf_file(tmp_path, name: str = "wg.conf") -> str:
    path = tmp_path / name
    path.write_text(CONF.format(priv=b64(PRIV), k2=b64(K2), k3=b64(K3)))
    return str(path)


def test_setconf_replaces_everything(served: Served, tmp_path) -> None:
    configure(served)
    served.wg("setconf", IF, conf_file(tmp_path))
    assert served.keys() == [K2, K3]  # K1 gone: setconf replaces the peers
    assert served.dev.listen_port == 41000
    assert served.dev.fwmark == 0  # setconf sends fwmark=0 when the file has none
    assert served.peer(K2)["allowed_ips"] == ["10.22.0.0/16"]  # replaced, not added
    assert served.peer(K2)["endpoint"] == ("198.51.100.2", 7000)
    assert served.peer(K3)["allowed_ips"] == ["10.33.0.0/16", "fd33::/48"]
    assert served.peer(K3)["persistent_keepalive"] == 5


def test_addconf_adds(served: Served, tmp_path) -> None:
    configure(served)
    served.wg("addconf", IF, conf_file(tmp_path))
    assert set(served.keys()) == {K1, K2, K3}  # K1 kept: addconf adds
    assert served.peer(K2)["allowed_ips"] == ["10.22.0.0/16"]  # a peer's list is replaced
    assert served.peer(K1)["allowed_ips"] == ["10.1.0.0/16", "fd00:1::/64"]


def test_syncconf_keeps_unchanged_peers(served: Served, tmp_path) -> None:
    configure(served)
    served.dev.set_stats(K2, rx_bytes=99)  # a session's counters: syncconf keeps the peer
    served.wg("syncconf", IF, conf_file(tmp_path))
    assert set(served.keys()) == {K2, K3}
    assert served.peer(K2)["rx_bytes"] == 99  # the same peer, updated, not replaced
    assert served.peer(K2)["allowed_ips"] == ["10.22.0.0/16"]
    assert served.peer(K3)["allowed_ips"] == ["10.33.0.0/16", "fd33::/48"]
    assert served.dev.listen_port == 41000
