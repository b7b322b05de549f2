"""tunoffload's WireGuard peer: the native protocol (``tunoffload.WireGuardDevice``) on
the batch paths of ``TunDevice`` and ``UdpSocket``.

- :class:`Interface`: a WireGuard interface in a Python program (TUN device, sockets,
  threads, a per-batch hook on decrypted packets);
- :mod:`tunoffload.wireguard.uapi`: WireGuard's configuration protocol, so ``wg`` and
  ``wg-quick`` drive it;
- :mod:`tunoffload.wireguard.daemon`: ``python -m tunoffload wireguard [-f] IFNAME``, which
  behaves as ``wireguard-go [-f] IFNAME``.

See ``docs/wireguard.md``.
"""

from ._device import Endpoint, UapiTarget, key_bytes
from .interface import Hook, Interface, peers_of
from .uapi import UapiError, UapiServer

__all__ = [
    "Endpoint",
    "Hook",
    "Interface",
    "UapiError",
    "UapiServer",
    "UapiTarget",
    "key_bytes",
    "peers_of",
]
