//! Linux constants and structures for the TUN driver, the interface ioctls and netlink.
//!
//! The TUN ioctl numbers, the `TUNSETIFF` and `SIOCGIFFLAGS` flags, the `TUNSETOFFLOAD`
//! bits and the `SIOC*` interface ioctls come from the `libc` crate (`<linux/if_tun.h>`,
//! `<linux/sockios.h>`, `<linux/if.h>`, `<linux/if_arp.h>`). The ioctl numbers in
//! particular must not be written out by hand: `_IOW`/`_IOR` encode the direction and the
//! argument size differently per architecture (powerpc, mips and sparc use other bits
//! than x86_64 and aarch64), and `libc` computes them with each target's `_IOC` encoding
//! (since 0.2.172 on every Linux architecture). Every constant this module needs is in
//! the `libc` that Cargo.toml asks for (0.2.191), so nothing here is computed locally; a
//! constant `libc` lacked would have to be built with the same per-architecture
//! `_IOW`-style encoding, never written as a literal.
//!
//! The names keep the types the rest of `src/device/` uses (`c_ulong` requests, `i16`
//! interface flags, `c_ulong` offload bits); the casts below only change the type.
//! `libc::Ioctl` is `c_ulong` on glibc and `c_int` on musl: a musl request such as
//! `TUNGETIFF` (`0x800454d2`) is negative as a `c_int` and sign-extends here, and the
//! `req as _` at the `libc::ioctl` call truncates it back to the same 32 bits.
//!
//! The netlink values (`<linux/netlink.h>`, `<linux/rtnetlink.h>`, `<linux/if_addr.h>`,
//! `<linux/if_link.h>`) are architecture-independent message fields.

#![allow(dead_code)]

use std::ffi::c_ulong;

/// `IFNAMSIZ`: interface names hold at most `IFNAMSIZ - 1` bytes.
pub const IFNAMSIZ: usize = libc::IFNAMSIZ;

// TUN ioctls (`_IOW('T', n, int)` and friends), with the target's `_IOC` encoding.
pub const TUNSETIFF: c_ulong = libc::TUNSETIFF as c_ulong;
pub const TUNSETPERSIST: c_ulong = libc::TUNSETPERSIST as c_ulong;
pub const TUNSETOWNER: c_ulong = libc::TUNSETOWNER as c_ulong;
pub const TUNSETGROUP: c_ulong = libc::TUNSETGROUP as c_ulong;
pub const TUNGETFEATURES: c_ulong = libc::TUNGETFEATURES as c_ulong;
pub const TUNSETOFFLOAD: c_ulong = libc::TUNSETOFFLOAD as c_ulong;
pub const TUNGETIFF: c_ulong = libc::TUNGETIFF as c_ulong;
pub const TUNGETVNETHDRSZ: c_ulong = libc::TUNGETVNETHDRSZ as c_ulong;
pub const TUNSETVNETHDRSZ: c_ulong = libc::TUNSETVNETHDRSZ as c_ulong;
pub const TUNGETDEVNETNS: c_ulong = libc::TUNGETDEVNETNS as c_ulong;

// TUNSETIFF flags (`ifr_flags` is a `short`; all of them fit).
pub const IFF_TUN: i16 = libc::IFF_TUN as i16;
pub const IFF_TAP: i16 = libc::IFF_TAP as i16;
pub const IFF_NAPI: i16 = libc::IFF_NAPI as i16;
pub const IFF_MULTI_QUEUE: i16 = libc::IFF_MULTI_QUEUE as i16;
pub const IFF_PERSIST: i16 = libc::IFF_PERSIST as i16;
pub const IFF_NO_PI: i16 = libc::IFF_NO_PI as i16;
pub const IFF_VNET_HDR: i16 = libc::IFF_VNET_HDR as i16;

// TUNSETOFFLOAD bits (the ioctl takes them as an `unsigned long` argument).
pub const TUN_F_CSUM: c_ulong = libc::TUN_F_CSUM as c_ulong;
pub const TUN_F_TSO4: c_ulong = libc::TUN_F_TSO4 as c_ulong;
pub const TUN_F_TSO6: c_ulong = libc::TUN_F_TSO6 as c_ulong;
pub const TUN_F_USO4: c_ulong = libc::TUN_F_USO4 as c_ulong;
pub const TUN_F_USO6: c_ulong = libc::TUN_F_USO6 as c_ulong;

// Interface ioctls (`<linux/sockios.h>`: the same numbers on every architecture; `libc`
// types them as `c_ulong` on every Linux target).
pub const SIOCGIFFLAGS: c_ulong = libc::SIOCGIFFLAGS as c_ulong;
pub const SIOCSIFFLAGS: c_ulong = libc::SIOCSIFFLAGS as c_ulong;
pub const SIOCGIFMTU: c_ulong = libc::SIOCGIFMTU as c_ulong;
pub const SIOCSIFMTU: c_ulong = libc::SIOCSIFMTU as c_ulong;
pub const SIOCSIFHWADDR: c_ulong = libc::SIOCSIFHWADDR as c_ulong;
pub const SIOCGIFHWADDR: c_ulong = libc::SIOCGIFHWADDR as c_ulong;
pub const SIOCGIFINDEX: c_ulong = libc::SIOCGIFINDEX as c_ulong;
pub const SIOCGIFTXQLEN: c_ulong = libc::SIOCGIFTXQLEN as c_ulong;
pub const SIOCSIFTXQLEN: c_ulong = libc::SIOCSIFTXQLEN as c_ulong;

// Interface flags (SIOCGIFFLAGS).
pub const IFF_UP: i16 = libc::IFF_UP as i16;
pub const IFF_RUNNING: i16 = libc::IFF_RUNNING as i16;

/// `ARPHRD_ETHER`, the hardware type of a TAP device's address.
pub const ARPHRD_ETHER: u16 = libc::ARPHRD_ETHER;

// Netlink.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_GSO_MAX_SEGS: u16 = 40;
pub const IFLA_INFO_DATA: u16 = 2;
pub const IFLA_TUN_OWNER: u16 = 1;
pub const IFLA_TUN_GROUP: u16 = 2;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// `struct ifreq`: a name and a 24-byte union, 40 bytes on 64-bit Linux.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct IfReq {
    pub name: [u8; IFNAMSIZ],
    pub data: [u8; 24],
}

impl IfReq {
    /// An `ifreq` naming `name` (which the caller has checked fits), the union zeroed.
    pub fn new(name: &[u8]) -> Self {
        let mut r = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        let n = name.len().min(IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name[..n]);
        r
    }

    /// The name up to its first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        &self.name[..end]
    }

    pub fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    pub fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    pub fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the architectures with the generic `_IOC` layout (2 direction bits at 30, 14
    /// size bits at 16) `libc`'s numbers are the ones `<linux/if_tun.h>` gives there.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn tun_ioctls_have_the_generic_encoding() {
        // _IOW('T', nr, int) = 1 << 30 | 4 << 16 | 'T' << 8 | nr; _IOR has 2 << 30.
        const fn iow(nr: c_ulong) -> c_ulong {
            (1 << 30) | (4 << 16) | ((b'T' as c_ulong) << 8) | nr
        }
        const fn ior(nr: c_ulong) -> c_ulong {
            (2 << 30) | (4 << 16) | ((b'T' as c_ulong) << 8) | nr
        }
        assert_eq!(TUNSETIFF, iow(202));
        assert_eq!(TUNSETIFF, 0x4004_54ca);
        assert_eq!(TUNSETPERSIST, iow(203));
        assert_eq!(TUNSETOWNER, iow(204));
        assert_eq!(TUNSETGROUP, iow(206));
        assert_eq!(TUNGETFEATURES, ior(207));
        assert_eq!(TUNSETOFFLOAD, iow(208));
        assert_eq!(TUNGETIFF, ior(210));
        assert_eq!(TUNGETVNETHDRSZ, ior(215));
        assert_eq!(TUNSETVNETHDRSZ, iow(216));
        // _IO('T', 227): no direction, no size.
        assert_eq!(TUNGETDEVNETNS, 0x54e3);
    }

    #[test]
    fn flags_and_sockios_keep_their_values() {
        assert_eq!(
            [
                IFF_TUN,
                IFF_TAP,
                IFF_NAPI,
                IFF_MULTI_QUEUE,
                IFF_PERSIST,
                IFF_NO_PI,
                IFF_VNET_HDR
            ],
            [0x1, 0x2, 0x10, 0x100, 0x800, 0x1000, 0x4000]
        );
        assert_eq!(
            [TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6],
            [0x01, 0x02, 0x04, 0x20, 0x40]
        );
        assert_eq!(
            [
                SIOCGIFFLAGS,
                SIOCSIFFLAGS,
                SIOCGIFMTU,
                SIOCSIFMTU,
                SIOCSIFHWADDR
            ],
            [0x8913, 0x8914, 0x8921, 0x8922, 0x8924]
        );
        assert_eq!(
            [SIOCGIFHWADDR, SIOCGIFINDEX, SIOCGIFTXQLEN, SIOCSIFTXQLEN],
            [0x8927, 0x8933, 0x8942, 0x8943]
        );
        assert_eq!([IFF_UP, IFF_RUNNING], [0x1, 0x40]);
        assert_eq!(ARPHRD_ETHER, 1);
        assert_eq!(IFNAMSIZ, 16);
    }
}
