"""X25519 public keys computed outside tunoffload (``cryptography``), so that a test of
the native WireGuard device does not check its key derivation against itself."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamped or not: X25519 clamps)."""
    return (
        X25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
