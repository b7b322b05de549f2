"""tunoffload: Linux TUN devices with the kernel's offloads (GSO/GRO) for Python.

The engine (checksums, the virtio header, GSO splitting and GRO coalescing) is Rust;
this package re-exports it. See ``help(tunoffload.gso_split)`` and the README.
"""

from tunoffload._native import (
    ERROR_KINDS,
    IDEAL_BATCH_SIZE,
    TRANSPORT_HEADER_LEN,
    TRANSPORT_OVERHEAD,
    UDP_MAX_SEGMENTS,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN,
    GroTable,
    InputError,
    NetnsSwitch,
    Opener,
    Sealer,
    TunDevice,
    UdpSocket,
    VirtioNetHdr,
    __version__,
    gso_split,
    handle_gro,
)
from tunoffload._netns import NetnsTarget, netns

__all__ = [
    "ERROR_KINDS",
    "IDEAL_BATCH_SIZE",
    "TRANSPORT_HEADER_LEN",
    "TRANSPORT_OVERHEAD",
    "UDP_MAX_SEGMENTS",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_GSO_ECN",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_UDP_L4",
    "VIRTIO_NET_HDR_LEN",
    "GroTable",
    "InputError",
    "NetnsSwitch",
    "NetnsTarget",
    "Opener",
    "Sealer",
    "TunDevice",
    "UdpSocket",
    "VirtioNetHdr",
    "__version__",
    "gso_split",
    "handle_gro",
    "netns",
]
