//! Control messages (cmsgs): what goes with a datagram besides its bytes.
//!
//! On send, per message: `UDP_SEGMENT` (the segment size of a run, never on a single
//! datagram), the ECN codepoint (`IP_TOS` to an IPv4 or v4-mapped destination,
//! `IPV6_TCLASS` to an IPv6 one: the kernel reads the cmsgs of the destination's family
//! and skips the others) and the source address (`IP_PKTINFO`'s `ipi_spec_dst`, or
//! `IPV6_PKTINFO`). On receive, per message: `UDP_GRO` (the segment size of a coalesced
//! read), the local address the datagram was sent to and the interface it came in on
//! (`IP_PKTINFO`, or `IPV6_PKTINFO`, which an `AF_INET6` socket also gives for IPv4
//! datagrams, v4-mapped), and the TOS / traffic class byte (`IP_TOS`, one byte, for
//! IPv4 datagrams also on an `AF_INET6` socket; `IPV6_TCLASS`, an int).
//!
//! `Encoder` lays cmsgs out as the C library's `CMSG_*` macros do (each header and its
//! data at `CMSG_SPACE` strides); `decode` walks them with `CMSG_FIRSTHDR` /
//! `CMSG_NXTHDR`.

use std::ffi::{c_int, c_uint};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::sys::{SOL_UDP, UDP_GRO, UDP_SEGMENT};

/// ECN codepoints (RFC 3168): the low two bits of the IPv4 TOS byte or IPv6 traffic
/// class. Not ECN-capable transport.
pub const ECN_NOT_ECT: u8 = 0;
/// ECN-capable transport (1) (L4S).
pub const ECN_ECT1: u8 = 1;
/// ECN-capable transport (0).
pub const ECN_ECT0: u8 = 2;
/// Congestion experienced.
pub const ECN_CE: u8 = 3;
/// The ECN bits of a TOS / traffic class byte.
pub const ECN_MASK: u8 = 3;

/// The codepoints by name (the Python module exports each under its name).
pub const ECN_NAMED: [(&str, usize); 4] = [
    ("ECN_NOT_ECT", ECN_NOT_ECT as usize),
    ("ECN_ECT1", ECN_ECT1 as usize),
    ("ECN_ECT0", ECN_ECT0 as usize),
    ("ECN_CE", ECN_CE as usize),
];

/// The local address to send a datagram from: `IP_PKTINFO` / `IPV6_PKTINFO` with this
/// address (`ip` may be v4-mapped for an IPv4 destination) and, for an IPv6 link-local
/// one, the interface (`ifindex`, 0: none; the `%scope` of its text form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub ip: IpAddr,
    pub ifindex: u32,
}

impl Source {
    /// The address as IPv4 when it is one (or v4-mapped), else `None`.
    pub fn v4(&self) -> Option<Ipv4Addr> {
        match self.ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        }
    }
}

/// What goes with one datagram on send, besides its bytes and destination. The default
/// (nothing) adds no cmsg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TxMeta {
    /// The ECN codepoint (0..=3; the DSCP bits are the socket's).
    pub ecn: Option<u8>,
    /// The source address.
    pub src: Option<Source>,
}

/// What the cmsgs of one received message say (every datagram of a coalesced read
/// shares it: the kernel coalesces only datagrams with equal headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxInfo {
    /// `UDP_GRO`: the segment size of a coalesced read (0: none).
    pub segment: usize,
    /// The local address the datagram was sent to (`IP_PKTINFO`'s `ipi_addr`, the
    /// header's destination; v4-mapped on an `AF_INET6` socket for IPv4).
    pub dst: Option<IpAddr>,
    /// The interface it came in on (0: not reported).
    pub ifindex: u32,
    /// The TOS / traffic class byte.
    pub tos: Option<u8>,
}

/// `CMSG_SPACE(n)`: the bytes a cmsg with `n` bytes of data takes, padding included.
const fn space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE computes a size only.
    unsafe { libc::CMSG_SPACE(n as c_uint) as usize }
}

/// The room (in 8-byte words) the cmsgs of one message need at most: `UDP_SEGMENT`, an
/// ECN byte and an `in6_pktinfo` (the larger source).
pub(crate) const META_CTRL_WORDS: usize =
    (space(size_of::<u16>()) + space(size_of::<c_int>()) + space(size_of::<libc::in6_pktinfo>()))
        .div_ceil(8);

/// Writes cmsgs one after another into an 8-byte aligned buffer.
pub(crate) struct Encoder<'a> {
    buf: &'a mut [u64],
    len: usize,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(buf: &'a mut [u64]) -> Self {
        Encoder { buf, len: 0 }
    }

    /// The bytes written (the `msg_controllen` to give the kernel).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends a cmsg of `level`, `ty` whose data is `value`'s bytes. A cmsg that does
    /// not fit is left out (the buffers are sized for the most a message carries).
    pub(crate) fn push<T: Copy>(&mut self, level: c_int, ty: c_int, value: T) {
        let need = space(size_of::<T>());
        if self.len + need > self.buf.len() * 8 {
            debug_assert!(false, "cmsg buffer too small");
            return;
        }
        // SAFETY: `len + need` bytes fit the buffer (just checked); `len` is a multiple of
        // CMSG_SPACE's alignment (the size of a `size_t`), and the buffer is 8-aligned, so
        // a `cmsghdr` at `len` is aligned; CMSG_DATA of it is within the `need` bytes,
        // which are zeroed first (padding included, as the kernel expects nothing of it).
        unsafe {
            let at = self.buf.as_mut_ptr().cast::<u8>().add(self.len);
            std::ptr::write_bytes(at, 0, need);
            let c = at.cast::<libc::cmsghdr>();
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<T>() as c_uint) as _;
            (*c).cmsg_level = level;
            (*c).cmsg_type = ty;
            libc::CMSG_DATA(c).cast::<T>().write_unaligned(value);
        }
        self.len += need;
    }
}

/// Writes the cmsgs of one message to send: `UDP_SEGMENT` when `segment` is given, then
/// what `meta` asks for a destination that is IPv4 (`v4`: IPv4 or v4-mapped) or IPv6.
/// `tos` is the socket's TOS (`v4`) or traffic class byte, whose DSCP bits go with the
/// ECN codepoint. A source of the other family than the destination is left out (the
/// caller refused it before). Returns the bytes written.
pub(crate) fn encode(
    buf: &mut [u64],
    segment: Option<u16>,
    meta: &TxMeta,
    v4: bool,
    tos: u8,
) -> usize {
    let mut e = Encoder::new(buf);
    if let Some(seg) = segment {
        e.push(SOL_UDP, UDP_SEGMENT, seg);
    }
    if let Some(ecn) = meta.ecn {
        let v = c_int::from((tos & !ECN_MASK) | (ecn & ECN_MASK));
        match v4 {
            true => e.push(libc::IPPROTO_IP, libc::IP_TOS, v),
            false => e.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, v),
        }
    }
    match (meta.src, v4) {
        (Some(src), true) => {
            if let Some(a) = src.v4() {
                let info = libc::in_pktinfo {
                    ipi_ifindex: src.ifindex as c_int,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                e.push(libc::IPPROTO_IP, libc::IP_PKTINFO, info);
            }
        }
        (
            Some(Source {
                ip: IpAddr::V6(a),
                ifindex,
            }),
            false,
        ) if a.to_ipv4_mapped().is_none() => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            e.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info);
        }
        _ => {}
    }
    e.len()
}

/// Reads the cmsgs of a received message (those it does not know are skipped, as are
/// ones too short for their type).
///
/// # Safety
/// `mh.msg_control` points at `mh.msg_controllen` readable bytes of well-formed cmsgs (as
/// `recvmsg` leaves them), 8-aligned.
pub(crate) unsafe fn decode(mh: &libc::msghdr) -> RxInfo {
    let mut info = RxInfo::default();
    // SAFETY (the whole walk): the caller's promise; CMSG_FIRSTHDR/NXTHDR stay within
    // `msg_controllen`, and each read below is of a data length `fits` checked.
    let mut c = libc::CMSG_FIRSTHDR(mh);
    while !c.is_null() {
        let len = (*c).cmsg_len as usize;
        let fits = |n: usize| len >= libc::CMSG_LEN(n as c_uint) as usize;
        let data = libc::CMSG_DATA(c);
        match ((*c).cmsg_level, (*c).cmsg_type) {
            (SOL_UDP, UDP_GRO) if fits(size_of::<c_int>()) => {
                let v = data.cast::<c_int>().read_unaligned();
                info.segment = usize::try_from(v).unwrap_or(0);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if fits(size_of::<libc::in_pktinfo>()) => {
                let p = data.cast::<libc::in_pktinfo>().read_unaligned();
                info.dst = Some(IpAddr::V4(Ipv4Addr::from(p.ipi_addr.s_addr.to_ne_bytes())));
                info.ifindex = u32::try_from(p.ipi_ifindex).unwrap_or(0);
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if fits(size_of::<libc::in6_pktinfo>()) => {
                let p = data.cast::<libc::in6_pktinfo>().read_unaligned();
                info.dst = Some(IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)));
                info.ifindex = p.ipi6_ifindex;
            }
            // One byte on receive (the kernel's put_cmsg of the header's TOS).
            (libc::IPPROTO_IP, libc::IP_TOS) if fits(1) => info.tos = Some(*data),
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) if fits(size_of::<c_int>()) => {
                let v = data.cast::<c_int>().read_unaligned();
                info.tos = Some(v as u8);
            }
            _ => {}
        }
        c = libc::CMSG_NXTHDR(mh, c);
    }
    info
}

/// A `msghdr` whose control buffer is `buf[..len]` (for [`decode`] in tests, and for the
/// walks below).
#[cfg(test)]
fn msghdr_over(buf: &mut [u64], len: usize) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_control = buf.as_mut_ptr().cast();
    mh.msg_controllen = len as _;
    mh
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cmsg in `buf[..len]` as (level, type, data).
    fn cmsgs(buf: &mut [u64], len: usize) -> Vec<(c_int, c_int, Vec<u8>)> {
        let mh = msghdr_over(buf, len);
        let mut out = Vec::new();
        // SAFETY: the buffer holds `len` bytes of cmsgs an Encoder wrote.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                let n = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(c), n).to_vec();
                out.push(((*c).cmsg_level, (*c).cmsg_type, data));
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        out
    }

    fn int(v: c_int) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    fn pktinfo4(spec_dst: [u8; 4], ifindex: c_int) -> Vec<u8> {
        [ifindex.to_ne_bytes(), spec_dst, [0; 4]].concat()
    }

    fn pktinfo6(a: Ipv6Addr, ifindex: u32) -> Vec<u8> {
        [&a.octets()[..], &ifindex.to_ne_bytes()].concat()
    }

    fn src(ip: &str, ifindex: u32) -> Option<Source> {
        Some(Source {
            ip: ip.parse().unwrap(),
            ifindex,
        })
    }

    const IP: c_int = libc::IPPROTO_IP;
    const IP6: c_int = libc::IPPROTO_IPV6;

    #[test]
    fn encoding() {
        let v6: Ipv6Addr = "fd00::2".parse().unwrap();
        // (segment, meta, v4 destination, socket TOS) -> the cmsgs, in order
        type Case = (Option<u16>, TxMeta, bool, u8, Vec<(c_int, c_int, Vec<u8>)>);
        let cases: Vec<Case> = vec![
            (None, TxMeta::default(), true, 0, vec![]),
            (
                Some(1400),
                TxMeta::default(),
                true,
                0,
                vec![(SOL_UDP, UDP_SEGMENT, 1400u16.to_ne_bytes().to_vec())],
            ),
            (
                None,
                TxMeta {
                    ecn: Some(ECN_CE),
                    src: None,
                },
                true,
                0,
                vec![(IP, libc::IP_TOS, int(3))],
            ),
            // The DSCP bits are the socket's, the ECN bits the datagram's.
            (
                None,
                TxMeta {
                    ecn: Some(ECN_ECT0),
                    src: None,
                },
                true,
                0xb9,
                vec![(IP, libc::IP_TOS, int(0xba))],
            ),
            (
                None,
                TxMeta {
                    ecn: Some(ECN_ECT1),
                    src: None,
                },
                false,
                0x20,
                vec![(IP6, libc::IPV6_TCLASS, int(0x21))],
            ),
            (
                Some(1200),
                TxMeta {
                    ecn: Some(ECN_NOT_ECT),
                    src: src("127.0.0.5", 0),
                },
                true,
                0,
                vec![
                    (SOL_UDP, UDP_SEGMENT, 1200u16.to_ne_bytes().to_vec()),
                    (IP, libc::IP_TOS, int(0)),
                    (IP, libc::IP_PKTINFO, pktinfo4([127, 0, 0, 5], 0)),
                ],
            ),
            // A v4-mapped source to an IPv4 (or v4-mapped) destination: IP_PKTINFO.
            (
                None,
                TxMeta {
                    ecn: None,
                    src: src("::ffff:10.0.0.7", 0),
                },
                true,
                0,
                vec![(IP, libc::IP_PKTINFO, pktinfo4([10, 0, 0, 7], 0))],
            ),
            (
                None,
                TxMeta {
                    ecn: Some(ECN_CE),
                    src: src("fd00::2", 0),
                },
                false,
                0,
                vec![
                    (IP6, libc::IPV6_TCLASS, int(3)),
                    (IP6, libc::IPV6_PKTINFO, pktinfo6(v6, 0)),
                ],
            ),
            (
                None,
                TxMeta {
                    ecn: None,
                    src: src("fe80::1", 7),
                },
                false,
                0,
                vec![(
                    IP6,
                    libc::IPV6_PKTINFO,
                    pktinfo6("fe80::1".parse().unwrap(), 7),
                )],
            ),
            // A source of the other family is left out (refused before sending).
            (
                None,
                TxMeta {
                    ecn: None,
                    src: src("fd00::2", 0),
                },
                true,
                0,
                vec![],
            ),
            (
                None,
                TxMeta {
                    ecn: None,
                    src: src("10.0.0.1", 0),
                },
                false,
                0,
                vec![],
            ),
            (
                None,
                TxMeta {
                    ecn: None,
                    src: src("::ffff:10.0.0.1", 0),
                },
                false,
                0,
                vec![],
            ),
        ];
        for (i, (seg, meta, v4, tos, want)) in cases.into_iter().enumerate() {
            let mut buf = [0u64; META_CTRL_WORDS];
            let len = encode(&mut buf, seg, &meta, v4, tos);
            let want_len: usize = want.iter().map(|(_, _, d)| space(d.len())).sum();
            assert_eq!(len, want_len, "case {i}");
            assert_eq!(cmsgs(&mut buf, len), want, "case {i}");
        }
    }

    #[test]
    fn the_largest_message_fits() {
        let meta = TxMeta {
            ecn: Some(ECN_CE),
            src: src("fd00::1", 3),
        };
        let mut buf = [0u64; META_CTRL_WORDS];
        let len = encode(&mut buf, Some(9000), &meta, false, 0);
        assert_eq!(cmsgs(&mut buf, len).len(), 3);
        assert!(len <= META_CTRL_WORDS * 8);
        // The layout is the C library's: on 64-bit Linux a 16-byte header, data padded to 8.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(len, 24 + 24 + 40);
    }

    fn rx(segment: usize, dst: &str, ifindex: u32, tos: Option<u8>) -> RxInfo {
        RxInfo {
            segment,
            dst: (!dst.is_empty()).then(|| dst.parse().unwrap()),
            ifindex,
            tos,
        }
    }

    #[test]
    fn decoding() {
        let mapped: Ipv6Addr = "::ffff:127.0.0.7".parse().unwrap();
        type Cmsgs = Vec<(c_int, c_int, Vec<u8>)>;
        // The cmsgs as the kernel writes them -> what decode reads.
        let cases: Vec<(Cmsgs, RxInfo)> = vec![
            (vec![], RxInfo::default()),
            (
                vec![(SOL_UDP, UDP_GRO, int(1400))],
                RxInfo {
                    segment: 1400,
                    ..RxInfo::default()
                },
            ),
            (
                vec![
                    (
                        IP,
                        libc::IP_PKTINFO,
                        [1i32.to_ne_bytes(), [127, 0, 0, 1], [127, 0, 0, 5]].concat(),
                    ),
                    (IP, libc::IP_TOS, vec![0x03]),
                ],
                rx(0, "127.0.0.5", 1, Some(3)),
            ),
            // An IPv4 datagram on an AF_INET6 socket: IPV6_PKTINFO v4-mapped, IP_TOS.
            (
                vec![
                    (SOL_UDP, UDP_GRO, int(1200)),
                    (IP6, libc::IPV6_PKTINFO, pktinfo6(mapped, 1)),
                    (IP, libc::IP_TOS, vec![0x02]),
                ],
                rx(1200, "::ffff:127.0.0.7", 1, Some(2)),
            ),
            (
                vec![
                    (
                        IP6,
                        libc::IPV6_PKTINFO,
                        pktinfo6("fd00::2".parse().unwrap(), 4),
                    ),
                    (IP6, libc::IPV6_TCLASS, int(0xb9)),
                ],
                rx(0, "fd00::2", 4, Some(0xb9)),
            ),
            // Unknown cmsgs are skipped, short ones too.
            (
                vec![
                    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, vec![0; 16]),
                    (IP6, libc::IPV6_PKTINFO, vec![0; 8]),
                    (SOL_UDP, UDP_GRO, vec![1, 0]),
                    (IP, libc::IP_TOS, vec![1]),
                ],
                RxInfo {
                    tos: Some(1),
                    ..RxInfo::default()
                },
            ),
        ];
        for (i, (input, want)) in cases.into_iter().enumerate() {
            let mut buf = [0u64; 32];
            let mut e = Encoder::new(&mut buf);
            for (level, ty, data) in &input {
                push_bytes(&mut e, *level, *ty, data);
            }
            let len = e.len();
            let mh = msghdr_over(&mut buf, len);
            // SAFETY: the buffer holds `len` bytes of cmsgs just encoded.
            assert_eq!(unsafe { decode(&mh) }, want, "case {i}");
        }
    }

    /// Pushes a cmsg whose data is `data` (as a fixed-size array of its length).
    fn push_bytes(e: &mut Encoder<'_>, level: c_int, ty: c_int, data: &[u8]) {
        macro_rules! by_len {
            ($($n:literal)*) => {
                match data.len() {
                    $($n => e.push(level, ty, <[u8; $n]>::try_from(data).unwrap()),)*
                    n => panic!("no case for {n} bytes"),
                }
            };
        }
        by_len!(1 2 4 8 12 16 20)
    }
}
