//! Linux constants and structures for the TUN driver, the interface ioctls and netlink.
//!
//! The values come from `<linux/if_tun.h>`, `<linux/sockios.h>`, `<linux/if.h>`,
//! `<linux/netlink.h>`, `<linux/rtnetlink.h>` and `<linux/if_addr.h>`. They are written out
//! here rather than taken from `libc` so that the crate builds against any `libc` 0.2.

#![allow(dead_code)]

use std::ffi::c_ulong;

/// `IFNAMSIZ`: interface names hold at most `IFNAMSIZ - 1` bytes.
pub const IFNAMSIZ: usize = 16;

// TUN ioctls (`_IOW('T', n, int)` and friends).
pub const TUNSETIFF: c_ulong = 0x4004_54ca;
pub const TUNSETPERSIST: c_ulong = 0x4004_54cb;
pub const TUNSETOWNER: c_ulong = 0x4004_54cc;
pub const TUNSETGROUP: c_ulong = 0x4004_54ce;
pub const TUNGETFEATURES: c_ulong = 0x8004_54cf;
pub const TUNSETOFFLOAD: c_ulong = 0x4004_54d0;
pub const TUNGETIFF: c_ulong = 0x8004_54d2;
pub const TUNGETVNETHDRSZ: c_ulong = 0x8004_54d7;
pub const TUNSETVNETHDRSZ: c_ulong = 0x4004_54d8;
pub const TUNGETDEVNETNS: c_ulong = 0x54e3;

// TUNSETIFF flags.
pub const IFF_TUN: i16 = 0x0001;
pub const IFF_TAP: i16 = 0x0002;
pub const IFF_NAPI: i16 = 0x0010;
pub const IFF_MULTI_QUEUE: i16 = 0x0100;
pub const IFF_PERSIST: i16 = 0x0800;
pub const IFF_NO_PI: i16 = 0x1000;
pub const IFF_VNET_HDR: i16 = 0x4000;

// TUNSETOFFLOAD bits.
pub const TUN_F_CSUM: c_ulong = 0x01;
pub const TUN_F_TSO4: c_ulong = 0x02;
pub const TUN_F_TSO6: c_ulong = 0x04;
pub const TUN_F_USO4: c_ulong = 0x20;
pub const TUN_F_USO6: c_ulong = 0x40;

// Interface ioctls.
pub const SIOCGIFFLAGS: c_ulong = 0x8913;
pub const SIOCSIFFLAGS: c_ulong = 0x8914;
pub const SIOCGIFMTU: c_ulong = 0x8921;
pub const SIOCSIFMTU: c_ulong = 0x8922;
pub const SIOCSIFHWADDR: c_ulong = 0x8924;
pub const SIOCGIFHWADDR: c_ulong = 0x8927;
pub const SIOCGIFINDEX: c_ulong = 0x8933;
pub const SIOCGIFTXQLEN: c_ulong = 0x8942;
pub const SIOCSIFTXQLEN: c_ulong = 0x8943;

// Interface flags (SIOCGIFFLAGS).
pub const IFF_UP: i16 = 0x1;
pub const IFF_RUNNING: i16 = 0x40;

/// `ARPHRD_ETHER`, the hardware type of a TAP device's address.
pub const ARPHRD_ETHER: u16 = 1;

// Netlink.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFLA_LINKINFO: u16 = 18;
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
