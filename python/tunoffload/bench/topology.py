"""The benchmark's two namespaces, A and B, and what joins them: a veth pair or a TUN
device in each. Built on :mod:`tunoffload.testing`, the namespaces the tests use."""

from __future__ import annotations

import contextlib

from tunoffload import TunDevice
from tunoffload.testing import Netns, veth_between

ADDR_A, ADDR_B = "10.99.0.1", "10.99.0.2"  # A's and B's end of the forwarder rows, /24
TUN_NAME = "tob0"  # the TUN device in each namespace
VETH_NAMES = ("tobv0", "tobv1")  # the veth ends in A and B


class Topology:
    """Namespaces A and B (``a``, ``b``: :class:`~tunoffload.testing.Netns`, named
    ``tunoff-bench-{a,b}-<pid>-...``) and the devices made in them; ``close`` deletes it
    all."""

    def __init__(self) -> None:
        self.devices: list[TunDevice] = []
        made: list[Netns] = []
        try:
            for side in ("a", "b"):
                made.append(Netns(f"tunoff-bench-{side}"))
        except BaseException:
            for ns in made:  # the one made already
                ns.close()
            raise
        self.a, self.b = made

    def veth(self, addr_a: str = ADDR_A, addr_b: str = ADDR_B) -> None:
        """A joined to B by a veth pair with addresses ``addr_a``/24 and ``addr_b``/24."""
        veth_between(self.a, self.b, VETH_NAMES, (f"{addr_a}/24", f"{addr_b}/24"))

    def tuns(self, offload: bool) -> tuple[TunDevice, TunDevice]:
        """A TUN device ``tob0`` in each namespace (A's with ``ADDR_A``/24, B's with
        ``ADDR_B``/24), up; closed by ``close``."""
        for ns, addr in ((self.a, ADDR_A), (self.b, ADDR_B)):
            dev = TunDevice(TUN_NAME, offload=offload, netns=ns.name)
            self.devices.append(dev)
            dev.add_address(f"{addr}/24")
            dev.up()
        return self.devices[-2], self.devices[-1]

    def address_links(self, dev: str = TUN_NAME) -> None:
        """Gives link ``dev``, made in both namespaces by someone else, ``ADDR_A``/24 in A
        and ``ADDR_B``/24 in B, and sets it up."""
        self.a.link_up(dev, f"{ADDR_A}/24")
        self.b.link_up(dev, f"{ADDR_B}/24")

    def close(self) -> None:
        for d in self.devices:
            with contextlib.suppress(Exception):
                d.close()
        self.a.close()
        self.b.close()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
