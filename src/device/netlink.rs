//! A minimal rtnetlink client, written by hand: add, delete and list interface addresses,
//! read a TUN device's owner and group, and read and set a link's GSO segment limit.
//!
//! The socket is opened once, in the device's network namespace, and kept: a netlink
//! socket talks to the namespace it was created in, whatever thread later uses it.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::sys::*;
use super::{invalid, last_error, Error};
use crate::engine::ErrorKind;

const NLMSG_HDRLEN: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// One interface address: the address and its prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

fn push_attr(msg: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(data);
    msg.resize(align4(msg.len()), 0);
}

/// Iterates over the `rtattr`s of `data`: (type without flag bits, payload).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, payload))
    })
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, Error> {
        // SAFETY: plain socket(2) call; the returned descriptor is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(last_error("opening a netlink socket"));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 32 * 1024],
        })
    }

    /// Sends one request and collects the payloads of the answers (for a dump), or waits
    /// for the acknowledgement. A negative error in the answer becomes `Error::Os`.
    fn request(
        &mut self,
        ty: u16,
        flags: u16,
        body: &[u8],
        what: &str,
    ) -> Result<Vec<Vec<u8>>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);

        // SAFETY: an all-zero sockaddr_nl is valid; we set the family (pid 0 = the kernel).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `msg` and `sa` are valid for the lengths passed.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                break;
            }
            let e = last_error(what);
            if !e.is_eintr() {
                return Err(e);
            }
        }

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            // SAFETY: `self.buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = last_error(what);
                if e.is_eintr() {
                    continue;
                }
                return Err(e);
            }
            let mut data = &self.buf[..n as usize];
            while data.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
                let mty = u16::from_ne_bytes([data[4], data[5]]);
                let mseq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
                if len < NLMSG_HDRLEN || len > data.len() {
                    return Err(Error::Os {
                        errno: libc::EPROTO,
                        msg: format!("{what}: malformed netlink answer"),
                    });
                }
                let payload = &data[NLMSG_HDRLEN..len];
                data = &data[align4(len).min(data.len())..];
                if mseq != seq {
                    continue;
                }
                match mty {
                    NLMSG_ERROR => {
                        let code = if payload.len() >= 4 {
                            i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]])
                        } else {
                            -libc::EPROTO
                        };
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(Error::from_errno(-code, what));
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push(payload.to_vec());
                        if !dump {
                            // An answer without NLM_F_ACK: one message is all there is.
                            if flags & NLM_F_ACK == 0 {
                                return Ok(out);
                            }
                        }
                    }
                }
            }
        }
    }

    fn addr_msg(ifindex: u32, a: &IfAddr, extra_flags: u32) -> Vec<u8> {
        let family = match a.addr {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        } as u8;
        let mut body = vec![family, a.prefix, 0, 0];
        body.extend_from_slice(&ifindex.to_ne_bytes());
        let bytes = addr_bytes(&a.addr);
        push_attr(&mut body, IFA_LOCAL, &bytes);
        push_attr(&mut body, IFA_ADDRESS, &bytes);
        if extra_flags != 0 {
            push_attr(&mut body, IFA_FLAGS, &extra_flags.to_ne_bytes());
        }
        body
    }

    /// `RTM_NEWADDR`: adds `a` to interface `ifindex`.
    pub fn add_address(&mut self, ifindex: u32, a: &IfAddr, nodad: bool) -> Result<(), Error> {
        let body = Self::addr_msg(ifindex, a, if nodad { IFA_F_NODAD } else { 0 });
        let what = format!("adding address {}/{}", a.addr, a.prefix);
        self.request(
            RTM_NEWADDR,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &body,
            &what,
        )
        .map(|_| ())
    }

    /// `RTM_DELADDR`: removes `a` from interface `ifindex`.
    pub fn remove_address(&mut self, ifindex: u32, a: &IfAddr) -> Result<(), Error> {
        let body = Self::addr_msg(ifindex, a, 0);
        let what = format!("removing address {}/{}", a.addr, a.prefix);
        self.request(RTM_DELADDR, NLM_F_ACK, &body, &what)
            .map(|_| ())
    }

    /// `RTM_GETADDR` dump: the IPv4 and IPv6 addresses of interface `ifindex`.
    pub fn addresses(&mut self, ifindex: u32) -> Result<Vec<IfAddr>, Error> {
        let body = [libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0];
        let msgs = self.request(RTM_GETADDR, NLM_F_DUMP, &body, "listing addresses")?;
        let mut out = Vec::new();
        for m in msgs {
            if m.len() < 8 {
                continue;
            }
            let family = m[0] as i32;
            let prefix = m[1];
            let index = u32::from_ne_bytes([m[4], m[5], m[6], m[7]]);
            if index != ifindex {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for (ty, data) in attrs(&m[8..]) {
                let ip = match family {
                    libc::AF_INET => <[u8; 4]>::try_from(data).ok().map(IpAddr::from),
                    libc::AF_INET6 => <[u8; 16]>::try_from(data).ok().map(IpAddr::from),
                    _ => None,
                };
                let Some(ip) = ip else { continue };
                match ty {
                    IFA_LOCAL => local = Some(ip),
                    IFA_ADDRESS => address = Some(ip),
                    _ => {}
                }
            }
            if let Some(addr) = local.or(address) {
                out.push(IfAddr { addr, prefix });
            }
        }
        Ok(out)
    }

    /// The `ifinfomsg` that addresses interface `ifindex` (family unspecified, no flag
    /// changes).
    fn link_msg(ifindex: u32) -> Vec<u8> {
        let mut body = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        body
    }

    /// `RTM_GETLINK`: the 32-bit link attribute `attr` of interface `ifindex`, if the
    /// kernel reports it.
    fn link_u32(&mut self, ifindex: u32, attr: u16, what: &str) -> Result<Option<u32>, Error> {
        let msgs = self.request(RTM_GETLINK, 0, &Self::link_msg(ifindex), what)?;
        for m in msgs {
            if m.len() < 16 {
                continue;
            }
            for (ty, data) in attrs(&m[16..]) {
                if let (true, Ok(v)) = (ty == attr, <[u8; 4]>::try_from(data)) {
                    return Ok(Some(u32::from_ne_bytes(v)));
                }
            }
        }
        Ok(None)
    }

    /// `RTM_GETLINK`: the most segments the stack puts in one super-packet for interface
    /// `ifindex` (`IFLA_GSO_MAX_SEGS`; 65535 unless lowered).
    pub fn gso_max_segs(&mut self, ifindex: u32) -> Result<u32, Error> {
        let what = "reading gso_max_segs";
        let v = self.link_u32(ifindex, IFLA_GSO_MAX_SEGS, what)?;
        v.ok_or_else(|| Error::from_errno(libc::EOPNOTSUPP, what))
    }

    /// `RTM_NEWLINK` with `IFLA_GSO_MAX_SEGS` (`ip link set DEV gso_max_segs N`).
    pub fn set_gso_max_segs(&mut self, ifindex: u32, segs: u32) -> Result<(), Error> {
        let mut body = Self::link_msg(ifindex);
        push_attr(&mut body, IFLA_GSO_MAX_SEGS, &segs.to_ne_bytes());
        let what = format!("setting gso_max_segs to {segs}");
        self.request(RTM_NEWLINK, NLM_F_ACK, &body, &what)
            .map(|_| ())
    }

    /// `RTM_GETLINK`: the TUN owner and group of interface `ifindex` (`None` when unset).
    pub fn tun_owner_group(&mut self, ifindex: u32) -> Result<(Option<u32>, Option<u32>), Error> {
        let msgs = self.request(RTM_GETLINK, 0, &Self::link_msg(ifindex), "reading the link")?;
        let (mut owner, mut group) = (None, None);
        for m in msgs {
            if m.len() < 16 {
                continue;
            }
            for (ty, data) in attrs(&m[16..]) {
                if ty != IFLA_LINKINFO {
                    continue;
                }
                for (ity, idata) in attrs(data) {
                    if ity != IFLA_INFO_DATA {
                        continue;
                    }
                    for (tty, tdata) in attrs(idata) {
                        if tdata.len() != 4 {
                            continue;
                        }
                        let v = u32::from_ne_bytes([tdata[0], tdata[1], tdata[2], tdata[3]]);
                        let v = (v != u32::MAX).then_some(v);
                        match tty {
                            IFLA_TUN_OWNER => owner = v,
                            IFLA_TUN_GROUP => group = v,
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok((owner, group))
    }
}

/// Parses `"10.0.0.1/24"`, `"fd00::1/64"` or a bare address (full-length prefix).
pub fn parse_ifaddr(s: &str) -> Result<IfAddr, Error> {
    let s = s.trim();
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| invalid(ErrorKind::BadAddress, format!("not an IP address: {a:?}")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(v) if v <= max => v,
            _ => {
                return Err(invalid(
                    ErrorKind::BadAddress,
                    format!("bad prefix length {p:?} for {addr} (0..={max})"),
                ))
            }
        },
    };
    Ok(IfAddr { addr, prefix })
}

impl std::fmt::Display for IfAddr {
    /// `"address/prefix"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A MAC address written `"aa:bb:cc:dd:ee:ff"` (or with `-`): `BadMac` otherwise.
pub fn parse_mac(s: &str) -> Result<[u8; 6], Error> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        match parts
            .next()
            .filter(|p| p.len() == 2)
            .map(|p| u8::from_str_radix(p, 16))
        {
            Some(Ok(v)) => *b = v,
            _ => {
                return Err(invalid(
                    ErrorKind::BadMac,
                    format!("not a MAC address: {s:?}"),
                ))
            }
        }
    }
    if parts.next().is_some() {
        return Err(invalid(
            ErrorKind::BadMac,
            format!("not a MAC address: {s:?}"),
        ));
    }
    Ok(mac)
}

/// A MAC address given as its bytes: `BadMac` unless there are 6.
pub fn mac_from_bytes(b: &[u8]) -> Result<[u8; 6], Error> {
    b.try_into().map_err(|_| {
        invalid(
            ErrorKind::BadMac,
            format!("a MAC address has 6 bytes, not {}", b.len()),
        )
    })
}

/// `mac` written `"aa:bb:cc:dd:ee:ff"`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a = parse_ifaddr("10.0.0.1/24").unwrap();
        assert_eq!(a.prefix, 24);
        assert_eq!(a.addr.to_string(), "10.0.0.1");
        assert_eq!(parse_ifaddr("fd00::1").unwrap().prefix, 128);
        assert_eq!(parse_ifaddr("192.0.2.1").unwrap().prefix, 32);
        assert!(parse_ifaddr("10.0.0.1/33").is_err());
        assert!(parse_ifaddr("fd00::1/129").is_err());
        assert!(parse_ifaddr("nonsense/8").is_err());
        assert!(parse_ifaddr("10.0.0.1/x").is_err());
    }

    #[test]
    fn attr_iteration_stops_on_garbage() {
        let mut m = Vec::new();
        push_attr(&mut m, 1, &[1, 2, 3]);
        push_attr(&mut m, 2, &[9; 4]);
        m.extend_from_slice(&[0xff, 0xff, 0, 0]);
        let v: Vec<_> = attrs(&m).collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], (1, &[1u8, 2, 3][..]));
    }
}
