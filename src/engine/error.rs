//! The engine's one error type: a malformed packet, header or argument.
//!
//! An [`Error`] is a [`ErrorKind`] (which refusal it is, with a stable snake_case name),
//! optionally the index of the buffer or packet it is about, and a message that names the
//! problem with its numbers. Nothing is allocated until an error is made. The device and
//! socket layers carry it as their `Invalid` errors; the Python layer raises it as
//! `tunoffload.InputError` (a `ValueError`) with the kind's name as `err.kind` and the
//! index as `err.index`.

use std::borrow::Cow;
use std::fmt;

macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Which refusal an [`Error`] is. New kinds may be added; a kind's name
        /// ([`ErrorKind::as_str`]) never changes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant,)*];

            /// The kind's stable snake_case name (Python's `err.kind`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $name,)*
                }
            }
        }
    };
}

kinds! {
    // --- The IP header (GSO, and the binding's version checks) ---
    /// A packet of 0 bytes.
    EmptyPacket = "empty_packet",
    /// The version nibble is neither 4 nor 6.
    BadIpVersion = "bad_ip_version",
    /// `is_v6` was given and disagrees with the packet's version nibble.
    IpVersionMismatch = "ip_version_mismatch",
    /// Fewer bytes than the fixed IPv4 (20) or IPv6 (40) header.
    TruncatedIpHeader = "truncated_ip_header",
    /// The IPv4 header length (IHL) is below 20 or beyond the packet.
    BadIhl = "bad_ihl",
    /// The IPv4 total length or IPv6 payload length disagrees with the packet's length.
    IpLengthMismatch = "ip_length_mismatch",
    /// An IPv6 extension header is cut short by the end of the packet.
    TruncatedIpv6Extension = "truncated_ipv6_extension",
    /// More IPv6 extension headers than the engine walks.
    TooManyIpv6Extensions = "too_many_ipv6_extensions",
    /// A GSO packet that is an IP fragment.
    IpFragment = "ip_fragment",

    // --- The virtio header ---
    /// Fewer than 10 bytes to decode a `virtio_net_hdr` from, or to encode one into.
    VirtioHdrTooShort = "virtio_hdr_too_short",
    /// A `gso_type` the engine does not do: `GSO_UDP` (UDP fragmentation offload).
    UnsupportedGsoType = "unsupported_gso_type",
    /// A `gso_type` that is no GSO type at all.
    UnknownGsoType = "unknown_gso_type",
    /// The ECN bit (0x80) on a `gso_type` that is not TCP (`GSO_NONE`, `GSO_UDP_L4`).
    EcnRefused = "ecn_refused",
    /// The `gso_type` is for the other IP version (`GSO_TCPV4` on IPv6, `GSO_TCPV6` on IPv4).
    GsoIpVersionMismatch = "gso_ip_version_mismatch",
    /// The `gso_type` is for another transport protocol than the packet's.
    GsoProtocolMismatch = "gso_protocol_mismatch",
    /// `gso_size` is 0 on a GSO packet.
    GsoSizeZero = "gso_size_zero",
    /// `csum_start` is inside the IP header or beyond the packet.
    CsumStartOutOfRange = "csum_start_out_of_range",
    /// `csum_start + csum_offset` (the checksum field) runs past the packet.
    CsumOffsetOutOfRange = "csum_offset_out_of_range",
    /// `csum_start` of a GSO packet is not the transport header's offset.
    CsumStartMismatch = "csum_start_mismatch",
    /// `csum_offset` of a GSO packet is not its TCP (16) or UDP (6) checksum's offset.
    CsumOffsetMismatch = "csum_offset_mismatch",
    /// `GSO_UDP_L4` without `F_NEEDS_CSUM` (the kernel refuses it).
    MissingNeedsCsum = "missing_needs_csum",

    // --- The transport header ---
    /// Fewer bytes after the IP header than the TCP (20) or UDP (8) header.
    TruncatedTransportHeader = "truncated_transport_header",
    /// The TCP data offset is below 20 bytes or runs past the packet.
    BadTcpDataOffset = "bad_tcp_data_offset",
    /// The UDP length disagrees with the bytes from the UDP header on.
    UdpLengthMismatch = "udp_length_mismatch",
    /// A well-formed packet the kernel drops on this path (a TCP payload that fits in
    /// `gso_size` only without its options).
    KernelWouldDrop = "kernel_would_drop",
    /// A UDP GSO packet of more than `UDP_MAX_SEGMENTS` (128) segments.
    TooManySegments = "too_many_segments",

    // --- The output of a split ---
    /// Fewer `out_bufs` than the packet has segments (or, for a batch call, fewer `bufs`
    /// than `sizes`).
    TooFewOutBufs = "too_few_out_bufs",
    /// `sizes` has fewer entries than the packet has segments.
    SizesTooShort = "sizes_too_short",
    /// An output buffer too small for its segment after `out_offset` (`index`: which).
    OutBufTooSmall = "out_buf_too_small",
    /// The packet's length changed between planning a split and writing it.
    PacketChanged = "packet_changed",
    /// `sizes` was shortened (by Python code run while it was filled) during the call.
    SizesChanged = "sizes_changed",

    // --- GRO's buffers ---
    /// `offset` leaves no room for the header in front of the packet (the 10-byte virtio
    /// header; the 16-byte header of a sealed message).
    OffsetTooSmall = "offset_too_small",
    /// More buffers than a GRO table can index.
    TooManyBuffers = "too_many_buffers",
    /// A buffer that ends at or before `offset` (`index`: which).
    NoPacketAfterOffset = "no_packet_after_offset",
    /// A buffer that had to grow and cannot (a fixed-size one, or out of memory).
    BufferCannotGrow = "buffer_cannot_grow",

    // --- Arguments of every batch call ---
    /// Two buffers of one call share memory (`index`: the second).
    OverlappingBuffers = "overlapping_buffers",
    /// A size or offset argument below 0.
    NegativeArgument = "negative_argument",

    // --- The AEAD (src/aead/) ---
    /// A key that is not 32 bytes long.
    BadKeyLength = "bad_key_length",
    /// A batch that would use a counter at or above `REJECT_AFTER_MESSAGES`: the send key
    /// is spent (a new handshake is due); nothing was sealed.
    KeyExhausted = "key_exhausted",
    /// A packet longer than the call can take (a plaintext beyond ChaCha20-Poly1305's
    /// 256 GiB).
    PacketTooLarge = "packet_too_large",
    /// A batch to seal for one WireGuard peer holds a packet that routes elsewhere (or is
    /// not an IP packet) (`index`: which): nothing was sealed.
    MixedPeers = "mixed_peers",

    // --- WireGuard (src/wireguard/) ---
    /// An allowed IP that is no `address/prefix-length` (or a length beyond 32 / 128).
    BadAllowedIp = "bad_allowed_ip",
    /// A `protocol_version` other than 1.
    BadProtocolVersion = "bad_protocol_version",
    /// A key that is not 64 hexadecimal digits (WireGuard's configuration protocol).
    BadKey = "bad_key",
    /// A configuration protocol (UAPI) line that is no `key=value`, names a key
    /// wireguard-go does not take there, or has a value of the wrong form (not `true`,
    /// not a decimal number).
    BadUapiLine = "bad_uapi_line",
    /// An option name the call does not take (a WireGuard timer's name).
    UnknownOption = "unknown_option",
    // --- Arguments of the device and socket calls (kept in one block) ---
    /// `count` is more than the buffers given.
    CountTooLarge = "count_too_large",
    /// A buffer too short for what the call puts in or takes from it: `offset +
    /// sizes[index]` past its end, an `original_buffer` with no room for a packet, a read
    /// buffer the kernel cut a packet to fit.
    BufferTooSmall = "buffer_too_small",
    /// A datagram over the largest UDP payload (65507 bytes over IPv4, 65527 over IPv6).
    DatagramTooLarge = "datagram_too_large",
    /// Fewer addresses than datagrams.
    TooFewAddresses = "too_few_addresses",
    /// An address the call cannot use: not an IP literal, a port, flow label, scope or
    /// prefix length out of range, an IPv6 address for an IPv4 socket.
    BadAddress = "bad_address",
    /// Not a MAC address (6 bytes, or `"aa:bb:cc:dd:ee:ff"`), or a multicast one.
    BadMac = "bad_mac",
    /// A name Linux refuses: an interface name that is empty, too long, or has `/`, `:`,
    /// NUL or spaces; a network namespace name or path that cannot be one.
    BadName = "bad_name",
    /// A number outside its range (an MTU, `gso_max_segs`, a queue length, a datagram
    /// size).
    OutOfRange = "out_of_range",
    /// Options that do not go together (offload with TAP or with packet information), or
    /// a call the device's options do not allow (`clone_queue` without `multi_queue`, a
    /// MAC address on TUN).
    IncompatibleOptions = "incompatible_options",
    /// A file of another type than the call needs: not a network namespace, not a
    /// TUN/TAP device, not a UDP socket.
    WrongFileType = "wrong_file_type",
    /// `bufs` (or `addr`) was shortened by Python code during the call.
    BufsChanged = "bufs_changed",
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A packet, virtio header or argument the engine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    index: Option<usize>,
    detail: Cow<'static, str>,
}

impl Error {
    /// An error with a fixed message.
    pub const fn fixed(kind: ErrorKind, msg: &'static str) -> Self {
        Error {
            kind,
            index: None,
            detail: Cow::Borrowed(msg),
        }
    }

    /// An error with a formatted message (only built on the error path).
    pub fn new(kind: ErrorKind, msg: String) -> Self {
        Error {
            kind,
            index: None,
            detail: Cow::Owned(msg),
        }
    }

    /// The same error, about buffer or packet `index` of the call.
    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// The same kind and index with another message (a caller that renames a buffer in
    /// it, say).
    pub fn with_message(self, msg: String) -> Self {
        Error {
            detail: Cow::Owned(msg),
            ..self
        }
    }

    /// Which refusal this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The index of the buffer or packet the error is about, when there is one.
    pub fn index(&self) -> Option<usize> {
        self.index
    }

    /// The message: the problem, with its numbers.
    pub fn message(&self) -> &str {
        &self.detail
    }

    /// The message, owned.
    pub fn into_message(self) -> String {
        self.detail.into_owned()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Error {}

/// `Result` with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with a formatted [`Error`] of a kind: `bail!(Kind, "fmt", args)`, or
/// `bail!(Kind @ index, "fmt", args)` for an error about buffer or packet `index`.
macro_rules! bail {
    ($kind:ident @ $index:expr, $($arg:tt)*) => {
        return Err($crate::engine::error::Error::new(
            $crate::engine::error::ErrorKind::$kind,
            format!($($arg)*),
        )
        .at($index))
    };
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::engine::error::Error::new(
            $crate::engine::error::ErrorKind::$kind,
            format!($($arg)*),
        ))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            let n = k.as_str();
            assert!(seen.insert(n), "{n} twice");
            assert!(
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
                "{n} is not snake_case"
            );
        }
    }

    #[test]
    fn carries_kind_index_and_message() {
        let e = Error::new(
            ErrorKind::OutBufTooSmall,
            "out_bufs[3] holds 5 bytes".into(),
        )
        .at(3);
        assert_eq!(e.kind(), ErrorKind::OutBufTooSmall);
        assert_eq!(e.kind().as_str(), "out_buf_too_small");
        assert_eq!(e.index(), Some(3));
        assert_eq!(e.to_string(), "out_bufs[3] holds 5 bytes");
        let r = e.clone().with_message("x[3] holds 5 bytes".into());
        assert_eq!(
            (r.kind(), r.index(), r.message()),
            (e.kind(), Some(3), "x[3] holds 5 bytes")
        );
        let f = Error::fixed(ErrorKind::PacketChanged, "changed");
        assert_eq!((f.index(), f.message()), (None, "changed"));
    }
}
