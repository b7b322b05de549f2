"""Type stubs for the native module (Rust, PyO3)."""

from collections.abc import Sequence
from typing import Final

from typing_extensions import Buffer

__version__: Final[str]

VIRTIO_NET_HDR_LEN: Final[int]
IDEAL_BATCH_SIZE: Final[int]
UDP_MAX_SEGMENTS: Final[int]
VIRTIO_NET_HDR_GSO_NONE: Final[int]
VIRTIO_NET_HDR_GSO_TCPV4: Final[int]
VIRTIO_NET_HDR_GSO_UDP: Final[int]
VIRTIO_NET_HDR_GSO_TCPV6: Final[int]
VIRTIO_NET_HDR_GSO_UDP_L4: Final[int]
VIRTIO_NET_HDR_GSO_ECN: Final[int]
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final[int]
VIRTIO_NET_HDR_F_DATA_VALID: Final[int]

class VirtioNetHdr:
    """The 10-byte ``struct virtio_net_hdr``, in native byte order."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    def __init__(
        self,
        flags: int = 0,
        gso_type: int = 0,
        hdr_len: int = 0,
        gso_size: int = 0,
        csum_start: int = 0,
        csum_offset: int = 0,
    ) -> None: ...
    @staticmethod
    def decode(buf: Buffer) -> VirtioNetHdr: ...
    def encode(self, buf: Buffer) -> None: ...
    def __bytes__(self) -> bytes: ...
    def __eq__(self, other: object) -> bool: ...
    def __copy__(self) -> VirtioNetHdr: ...
    def __deepcopy__(self, memo: object) -> VirtioNetHdr: ...

class GroTable:
    """Reusable coalescing state for :func:`handle_gro`; one per thread."""

    def __init__(self) -> None: ...

def gso_split(
    packet: Buffer,
    hdr: VirtioNetHdr,
    out_bufs: Sequence[Buffer],
    sizes: list[int],
    out_offset: int = 0,
    is_v6: bool | None = None,
) -> int: ...
def handle_gro(
    bufs: list[bytearray],
    offset: int,
    table: GroTable,
    can_udp_gro: bool = True,
) -> list[int]: ...
