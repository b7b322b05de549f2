//! `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h): the 10 bytes that precede
//! every packet on a TUN device opened with `IFF_VNET_HDR`.
//!
//! The multi-byte fields are in the device's vnet byte order, which is the host's native
//! order unless `TUNSETVNETLE`/`TUNSETVNETBE` changed it; tunoffload never changes it.

use std::fmt;

use super::error::{Error, ErrorKind, Result};

/// Size of `struct virtio_net_hdr` in bytes. (Not 12: that is `virtio_net_hdr_mrg_rxbuf`.)
pub const VIRTIO_NET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end is to be completed and stored at
/// `csum_start + csum_offset`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been verified.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO); not supported by [`gso_split`](super::gso_split).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation over IPv4 or IPv6 (USO).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP packet carries ECN (CWR) marks.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The number of packets per batch that wireguard-go and tun-rs found best.
pub const IDEAL_BATCH_SIZE: usize = 128;

/// The constants above by name (the Python module exports each under its name).
pub const NAMED: [(&str, usize); 10] = [
    ("VIRTIO_NET_HDR_LEN", VIRTIO_NET_HDR_LEN),
    ("IDEAL_BATCH_SIZE", IDEAL_BATCH_SIZE),
    ("VIRTIO_NET_HDR_GSO_NONE", VIRTIO_NET_HDR_GSO_NONE as usize),
    (
        "VIRTIO_NET_HDR_GSO_TCPV4",
        VIRTIO_NET_HDR_GSO_TCPV4 as usize,
    ),
    ("VIRTIO_NET_HDR_GSO_UDP", VIRTIO_NET_HDR_GSO_UDP as usize),
    (
        "VIRTIO_NET_HDR_GSO_TCPV6",
        VIRTIO_NET_HDR_GSO_TCPV6 as usize,
    ),
    (
        "VIRTIO_NET_HDR_GSO_UDP_L4",
        VIRTIO_NET_HDR_GSO_UDP_L4 as usize,
    ),
    ("VIRTIO_NET_HDR_GSO_ECN", VIRTIO_NET_HDR_GSO_ECN as usize),
    (
        "VIRTIO_NET_HDR_F_NEEDS_CSUM",
        VIRTIO_NET_HDR_F_NEEDS_CSUM as usize,
    ),
    (
        "VIRTIO_NET_HDR_F_DATA_VALID",
        VIRTIO_NET_HDR_F_DATA_VALID as usize,
    ),
];

/// A decoded `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, possibly with [`VIRTIO_NET_HDR_GSO_ECN`].
    pub gso_type: u8,
    /// A hint: length of the headers to copy into the linear part. Never trusted here.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the transport header's offset in the IP packet).
    pub csum_start: u16,
    /// Where, counted from `csum_start`, the checksum is stored (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Decodes the first [`VIRTIO_NET_HDR_LEN`] bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let Some(b) = buf.get(..VIRTIO_NET_HDR_LEN) else {
            return Err(Error::new(
                ErrorKind::VirtioHdrTooShort,
                format!(
                    "virtio_net_hdr needs {VIRTIO_NET_HDR_LEN} bytes, got {}",
                    buf.len()
                ),
            ));
        };
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's 10 bytes.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut out = [0u8; VIRTIO_NET_HDR_LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        out
    }

    /// Writes the header into the first [`VIRTIO_NET_HDR_LEN`] bytes of `buf`.
    pub fn encode(&self, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let Some(dst) = buf.get_mut(..VIRTIO_NET_HDR_LEN) else {
            return Err(Error::new(
                ErrorKind::VirtioHdrTooShort,
                format!("virtio_net_hdr needs {VIRTIO_NET_HDR_LEN} bytes of room, got {len}"),
            ));
        };
        dst.copy_from_slice(&self.to_bytes());
        Ok(())
    }

    /// The fields' names and largest values, in the order of [`fields`](Self::fields).
    pub const FIELDS: [(&'static str, u16); 6] = [
        ("flags", 0xff),
        ("gso_type", 0xff),
        ("hdr_len", 0xffff),
        ("gso_size", 0xffff),
        ("csum_start", 0xffff),
        ("csum_offset", 0xffff),
    ];

    /// The fields, in the order of [`FIELDS`](Self::FIELDS).
    pub fn fields(&self) -> [u16; 6] {
        let h = self;
        let (flags, gso_type) = (u16::from(h.flags), u16::from(h.gso_type));
        [
            flags,
            gso_type,
            h.hdr_len,
            h.gso_size,
            h.csum_start,
            h.csum_offset,
        ]
    }

    /// The header with these fields (in the order of [`FIELDS`](Self::FIELDS)); the
    /// 8-bit ones keep their low byte.
    pub fn from_fields(f: [u16; 6]) -> Self {
        VirtioNetHdr {
            flags: f[0] as u8,
            gso_type: f[1] as u8,
            hdr_len: f[2],
            gso_size: f[3],
            csum_start: f[4],
            csum_offset: f[5],
        }
    }

    /// Field `i` (of [`FIELDS`](Self::FIELDS)) set to `value`.
    pub fn set_field(&mut self, i: usize, value: u16) {
        let mut f = self.fields();
        f[i] = value;
        *self = VirtioNetHdr::from_fields(f);
    }
}

/// `VirtioNetHdr(flags=1, gso_type=4, hdr_len=54, gso_size=1448, csum_start=34,
/// csum_offset=16)`.
impl fmt::Display for VirtioNetHdr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VirtioNetHdr(")?;
        for (i, ((name, _), v)) in Self::FIELDS.iter().zip(self.fields()).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name}={v}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x1234,
            gso_size: 1448,
            csum_start: 40,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b[4..6], 1448u16.to_ne_bytes());
        assert_eq!(VirtioNetHdr::decode(&b).unwrap(), h);
        let mut buf = [0xaau8; 12];
        h.encode(&mut buf).unwrap();
        assert_eq!(&buf[..10], &b);
        assert_eq!(&buf[10..], &[0xaa, 0xaa]);
    }

    #[test]
    fn fields_by_index() {
        let mut h = VirtioNetHdr::from_fields([1, 4, 54, 1448, 34, 16]);
        assert_eq!((h.flags, h.gso_size, h.csum_offset), (1, 1448, 16));
        h.set_field(1, 5);
        assert_eq!(h.fields(), [1, 5, 54, 1448, 34, 16]);
        assert_eq!(
            h.to_string(),
            "VirtioNetHdr(flags=1, gso_type=5, hdr_len=54, gso_size=1448, csum_start=34, \
             csum_offset=16)"
        );
    }

    #[test]
    fn short_buffers() {
        let e = VirtioNetHdr::decode(&[0; 9]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::VirtioHdrTooShort);
        assert_eq!(e.message(), "virtio_net_hdr needs 10 bytes, got 9");
        let e = VirtioNetHdr::default().encode(&mut [0; 9]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::VirtioHdrTooShort);
    }
}
