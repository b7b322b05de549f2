//! System-call helpers: socket options, socket addresses, waiting with a deadline, and
//! the text forms of IP addresses (as CPython's `socket` module reads and writes them).

use std::ffi::{c_int, c_void, CStr, CString};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, RawFd};

use super::{invalid, Error, Result, Wait};
use crate::engine::ErrorKind::BadAddress;

/// `SOL_UDP` (`IPPROTO_UDP`), the level of the UDP socket options.
pub(crate) const SOL_UDP: c_int = 17;
/// `UDP_SEGMENT` (`<linux/udp.h>`): the segment size of a GSO send, a `u16` cmsg.
pub(crate) const UDP_SEGMENT: c_int = 103;
/// `UDP_GRO` (`<linux/udp.h>`): receive coalesced; the cmsg gives the segment size.
pub(crate) const UDP_GRO: c_int = 104;

extern "C" {
    // In every Linux C library (POSIX); the `libc` crate does not declare it.
    fn inet_ntop(
        af: c_int,
        src: *const c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub(crate) fn getsockopt_int(
    fd: RawFd,
    level: c_int,
    name: c_int,
) -> std::result::Result<c_int, i32> {
    let mut v: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes; the kernel writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut len) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(v)
}

pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: c_int,
    name: c_int,
    v: c_int,
) -> std::result::Result<(), i32> {
    // SAFETY: `v` is a valid int for reads of its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const c_int).cast::<c_void>(),
            size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Turns on the socket options `opts` asks for besides the offloads (see
/// [`Options`](super::meta::Options)). On an `AF_INET6` socket the IPv4 option that
/// covers v4-mapped peers (`IP_RECVTOS`, `IP_MTU_DISCOVER`) is best effort.
pub(crate) fn set_options(fd: RawFd, family: c_int, opts: &super::meta::Options) -> Result<()> {
    use libc::{IPPROTO_IP as IP, IPPROTO_IPV6 as IP6};
    let v6 = family == libc::AF_INET6;
    let set = |level, name, v, what: &str| {
        setsockopt_int(fd, level, name, v).map_err(|e| Error::from_errno(e, what))
    };
    if opts.pktinfo {
        match v6 {
            true => set(
                IP6,
                libc::IPV6_RECVPKTINFO,
                1,
                "turning on IPV6_RECVPKTINFO",
            )?,
            false => set(IP, libc::IP_PKTINFO, 1, "turning on IP_PKTINFO")?,
        }
    }
    if opts.ecn {
        if v6 {
            set(IP6, libc::IPV6_RECVTCLASS, 1, "turning on IPV6_RECVTCLASS")?;
        }
        let r = set(IP, libc::IP_RECVTOS, 1, "turning on IP_RECVTOS");
        if !v6 {
            r?;
        }
    }
    if opts.dont_fragment {
        if v6 {
            let what = "turning on IPV6_MTU_DISCOVER=IPV6_PMTUDISC_DO";
            set(IP6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO, what)?;
            set(IP6, libc::IPV6_DONTFRAG, 1, "turning on IPV6_DONTFRAG")?;
        }
        let what = "turning on IP_MTU_DISCOVER=IP_PMTUDISC_DO";
        let r = set(IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO, what);
        if !v6 {
            r?;
        }
    }
    Ok(())
}

/// The socket's TOS and traffic class bytes (0 where unreadable), whose DSCP bits go
/// with the ECN codepoints a send sets.
pub(crate) fn tos_bytes(fd: RawFd, family: c_int) -> (u8, u8) {
    let tos = getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TOS).unwrap_or(0);
    let tclass = match family {
        libc::AF_INET6 => getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS).unwrap_or(0),
        _ => 0,
    };
    let byte = |v: c_int| u8::try_from(v).unwrap_or(0);
    (byte(tos), byte(tclass))
}

/// The path MTU towards `to` (`None`: the connected peer) for a socket of `family`:
/// `IP_MTU` / `IPV6_MTU` on the socket itself when connected, else on a probe socket
/// connected to `to` in the socket's network namespace (`SIOCGSKNS`, which needs
/// CAP_NET_ADMIN; the socket's mark and bound interface are copied). `None` where
/// neither works.
pub(crate) fn path_mtu(fd: RawFd, family: c_int, to: Option<&SocketAddr>) -> Option<u32> {
    let mtu_of = |fd: RawFd, v6: bool| {
        let (level, name) = match v6 {
            true => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
            false => (libc::IPPROTO_IP, libc::IP_MTU),
        };
        getsockopt_int(fd, level, name)
            .ok()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|&m| m > 0)
    };
    let Some(to) = to else {
        return mtu_of(fd, family == libc::AF_INET6);
    };
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor or -1.
    let ns = unsafe { libc::ioctl(fd, libc::SIOCGSKNS as _) };
    if ns < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let ns = unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) };
    let v4 = match to {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let (pfamily, dest) = match (v4, to) {
        (true, SocketAddr::V6(a)) => {
            let ip = a.ip().to_ipv4_mapped()?;
            (
                libc::AF_INET,
                SocketAddr::V4(SocketAddrV4::new(ip, a.port())),
            )
        }
        (true, a) => (libc::AF_INET, *a),
        (false, a) => (libc::AF_INET6, *a),
    };
    let mark = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK).unwrap_or(0);
    let bound = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX).unwrap_or(0);
    let probe = crate::device::netns::in_netns(Some(&ns), || {
        // SAFETY: plain socket(2); the result is checked.
        let p = unsafe { libc::socket(pfamily, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if p < 0 {
            return Err(crate::device::Error::from_errno(errno(), "a probe socket"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(p) })
    })
    .ok()?;
    let p = std::os::fd::AsRawFd::as_raw_fd(&probe);
    if mark != 0 {
        let _ = setsockopt_int(p, libc::SOL_SOCKET, libc::SO_MARK, mark);
    }
    if bound != 0 {
        let _ = setsockopt_int(p, libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX, bound);
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut dest = dest;
    if dest.port() == 0 {
        dest.set_port(9); // (any port: only the route matters)
    }
    let len = write_sockaddr(&dest, pfamily, &mut ss).ok()?;
    // SAFETY: `ss` holds a sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(p, (&ss as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        return None;
    }
    mtu_of(p, !v4)
}

/// Writes `addr` as a `sockaddr` for a socket of `family` into `out`; returns its length.
/// An IPv4 address on an `AF_INET6` socket becomes its v4-mapped form (`::ffff:a.b.c.d`);
/// an IPv6 address on an `AF_INET` socket is an error. `flowinfo` is host order here
/// (as Python shows it) and network order in the `sockaddr`.
pub(crate) fn write_sockaddr(
    addr: &SocketAddr,
    family: c_int,
    out: &mut libc::sockaddr_storage,
) -> Result<libc::socklen_t> {
    let v6 = match (*addr, family) {
        (SocketAddr::V4(a), libc::AF_INET) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            *sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            return Ok(size_of::<libc::sockaddr_in>() as libc::socklen_t);
        }
        (SocketAddr::V4(a), libc::AF_INET6) => {
            SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0)
        }
        (SocketAddr::V6(a), libc::AF_INET6) => a,
        (SocketAddr::V6(a), _) => {
            return Err(invalid(
                BadAddress,
                format!("{a} is an IPv6 address, but the socket is AF_INET (IPv4)"),
            ))
        }
        (SocketAddr::V4(a), _) => {
            return Err(invalid(
                BadAddress,
                format!("{a}: the socket is neither AF_INET nor AF_INET6"),
            ))
        }
    };
    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
    let sin6 = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
    *sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6.port().to_be(),
        sin6_flowinfo: v6.flowinfo().to_be(),
        sin6_addr: libc::in6_addr {
            s6_addr: v6.ip().octets(),
        },
        sin6_scope_id: v6.scope_id(),
    };
    Ok(size_of::<libc::sockaddr_in6>() as libc::socklen_t)
}

/// The address in a `sockaddr` of `len` bytes the kernel wrote (`None`: not IP, or short).
pub(crate) fn read_sockaddr(s: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    match s.ss_family as c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says it is a sockaddr_in, and it is long enough.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says it is a sockaddr_in6, and it is long enough.
            let sin6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The connected peer (`getpeername`), or `None` if not connected.
pub(crate) fn peer(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `s` and `len` are valid for writes; the kernel writes at most `len` bytes.
    let rc =
        unsafe { libc::getpeername(fd, (&mut s as *mut libc::sockaddr_storage).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    read_sockaddr(&s, len as usize)
}

/// Waits until `fd` has `events` (`POLLIN`/`POLLOUT`) or an error condition, as `wait`
/// allows: [`Error::WouldBlock`] without waiting, [`Error::Timeout`] once the deadline
/// passes, [`Error::Interrupted`] on `EINTR`.
pub(crate) fn wait_fd(fd: RawFd, events: i16, wait: Wait) -> Result<()> {
    if wait == Wait::NonBlocking {
        return Err(Error::WouldBlock);
    }
    let timeout = wait.poll_ms().ok_or(Error::Timeout)?;
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout) };
    if n < 0 {
        return Err(match errno() {
            libc::EINTR => Error::Interrupted,
            e => Error::from_errno(e, "waiting for the socket (poll)"),
        });
    }
    if n == 0 {
        return Err(Error::Timeout);
    }
    Ok(())
}

/// Parses `host` as an IP address literal for a socket of `family`, as CPython's `sendto`
/// reads it without name resolution: `""` is the unspecified address, `"<broadcast>"`
/// 255.255.255.255 (IPv4), an IPv6 literal may carry `%scope` (an interface name or
/// number). Returns the address and the scope id from `%scope`, if any. A host name is an
/// [`Error::Invalid`] telling to resolve it first.
pub fn parse_host(host: &str, family: c_int) -> Result<(IpAddr, Option<u32>)> {
    let v6 = family == libc::AF_INET6;
    if host.is_empty() {
        return Ok((
            if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            },
            None,
        ));
    }
    if host == "<broadcast>" {
        return Ok((IpAddr::V4(Ipv4Addr::BROADCAST), None));
    }
    if let Ok(a) = host.parse::<Ipv4Addr>() {
        return Ok((IpAddr::V4(a), None));
    }
    if let Ok(a) = host.parse::<Ipv6Addr>() {
        return Ok((IpAddr::V6(a), None));
    }
    if let Some((ip, scope)) = host.split_once('%') {
        if let Ok(a) = ip.parse::<Ipv6Addr>() {
            let id = match scope.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let idx = CString::new(scope)
                        .ok()
                        // SAFETY: a NUL-terminated string; if_nametoindex only reads it.
                        .map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) });
                    if idx == 0 {
                        return Err(invalid(
                            BadAddress,
                            format!("{host:?}: no interface named {scope:?} for the scope"),
                        ));
                    }
                    idx
                }
            };
            return Ok((IpAddr::V6(a), Some(id)));
        }
    }
    Err(invalid(
        BadAddress,
        format!(
            "{host:?} is not an IP address literal; resolve host names first \
             (socket.getaddrinfo) and pass the address"
        ),
    ))
}

/// The family of a socket that takes `host` (an address literal as `socket.sendto`
/// takes it, or nothing): `AF_INET6` if it has a colon, else `AF_INET`.
pub fn host_family(host: Option<&str>) -> c_int {
    match host.is_some_and(|h| h.contains(':')) {
        true => libc::AF_INET6,
        false => libc::AF_INET,
    }
}

/// `addr` as `(host, port)`: the host as [`host_string`] writes it.
pub fn host_port(addr: &SocketAddr) -> (String, u16) {
    (host_string(addr), addr.port())
}

/// The shape of an address tuple as `socket.sendto` takes it on a socket of `family`:
/// its description (for a `TypeError`) and the most entries it has (host and port, and
/// on `AF_INET6` flowinfo and scope id), for [`parse_addr`].
pub fn addr_form(family: c_int) -> (&'static str, usize) {
    match family == libc::AF_INET6 {
        true => (
            "a tuple (host: str, port: int[, flowinfo: int[, scope_id: int]])",
            4,
        ),
        false => ("a tuple (host: str, port: int) for an AF_INET socket", 2),
    }
}

/// An address as `socket.sendto` takes it for a socket of `family`, without name
/// resolution (`what` names it in messages): `host` as [`parse_host`] reads it, `port`
/// 0-65535, and for `AF_INET6` `flowinfo` (20 bits) and `scope_id` (a non-zero one wins
/// over a `%scope` in `host`). An IPv4 host on an `AF_INET6` socket is kept as IPv4 (the
/// send maps it); an IPv6 host on an `AF_INET` socket is `BadAddress`.
pub fn parse_addr(
    what: &dyn std::fmt::Display,
    host: &str,
    port: i128,
    flowinfo: i128,
    scope_id: i128,
    family: c_int,
) -> Result<SocketAddr> {
    let int = |v: i128, name: &str, max: u32| {
        u32::try_from(v).ok().filter(|&v| v <= max).ok_or_else(|| {
            invalid(
                BadAddress,
                format!("{what}: {name} must be 0-{max}, got {v}"),
            )
        })
    };
    let port = int(port, "port", 65535)? as u16;
    let flowinfo = int(flowinfo, "flowinfo", 0xf_ffff)?;
    let scope_id = int(scope_id, "scope_id", u32::MAX)?;
    let (ip, scope) = parse_host(host, family).map_err(|e| match e {
        Error::Invalid(e) => {
            let m = format!("{what}: {}", e.message());
            Error::Invalid(e.with_message(m))
        }
        e => e,
    })?;
    match ip {
        IpAddr::V4(a) => Ok(SocketAddr::V4(SocketAddrV4::new(a, port))),
        IpAddr::V6(a) if family == libc::AF_INET6 => {
            let scope = if scope_id != 0 {
                scope_id
            } else {
                scope.unwrap_or(0)
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(a, port, flowinfo, scope)))
        }
        IpAddr::V6(a) => Err(invalid(
            BadAddress,
            format!("{what}: {a} is an IPv6 address, but the socket is AF_INET"),
        )),
    }
}

/// The host part of `addr` as CPython's `socket.recvfrom` gives it: the dotted quad, or
/// the IPv6 text form of `inet_ntop` followed by `%scope` when the scope id is not 0 (the
/// interface name for link-local addresses, else the number), as `getnameinfo` does.
pub fn host_string(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => {
            let octets = a.ip().octets();
            let mut buf = [0 as libc::c_char; 64];
            // SAFETY: `octets` is a 16-byte in6_addr; `buf` has room for
            // INET6_ADDRSTRLEN (46) bytes and inet_ntop NUL-terminates what it writes.
            let p = unsafe {
                inet_ntop(
                    libc::AF_INET6,
                    octets.as_ptr().cast(),
                    buf.as_mut_ptr(),
                    buf.len() as libc::socklen_t,
                )
            };
            let mut s = if p.is_null() {
                a.ip().to_string()
            } else {
                // SAFETY: inet_ntop wrote a NUL-terminated string into `buf`.
                unsafe { CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            };
            let scope = a.scope_id();
            if scope != 0 {
                let seg0 = a.ip().segments()[0];
                let link_local = seg0 & 0xffc0 == 0xfe80 || seg0 & 0xff0f == 0xff02;
                let mut name = [0 as libc::c_char; libc::IF_NAMESIZE + 1];
                // SAFETY: `name` has room for IF_NAMESIZE bytes and the NUL.
                let named = link_local
                    && !unsafe { libc::if_indextoname(scope, name.as_mut_ptr()) }.is_null();
                s.push('%');
                if named {
                    // SAFETY: if_indextoname wrote a NUL-terminated name.
                    s.push_str(&unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy());
                } else {
                    s.push_str(&scope.to_string());
                }
            }
            s
        }
    }
}
