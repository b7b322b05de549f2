//! Per-datagram metadata: what a receive reports besides the bytes ([`RecvMeta`], one
//! [`Meta`] per datagram), what a send attaches ([`TxMetas`]), and the socket options a
//! [`UdpBatch`](super::UdpBatch) turns on ([`Options`]).

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use super::cmsg::{RxInfo, Source, TxMeta, ECN_MASK};
use super::sys::parse_host;
use super::{invalid, Result};
use crate::engine::buffer::Name;
use crate::engine::ErrorKind::{BadAddress, OutOfRange, TooFewAddresses};

/// The options of a [`UdpBatch`](super::UdpBatch). `false` leaves a socket option as it
/// is; `true` turns it on for the socket (for every user of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Runs of datagrams go out as `UDP_SEGMENT` messages where the kernel has it.
    pub gso: bool,
    /// `UDP_GRO`: the kernel coalesces received datagrams (split again on delivery).
    pub gro: bool,
    /// Packet information: each received datagram's local address and interface
    /// (`IP_PKTINFO`, `IPV6_RECVPKTINFO`).
    pub pktinfo: bool,
    /// Each received datagram's ECN codepoint (`IP_RECVTOS`, `IPV6_RECVTCLASS`).
    pub ecn: bool,
    /// Don't fragment: `IP_MTU_DISCOVER` / `IPV6_MTU_DISCOVER` = `PMTUDISC_DO` (and
    /// `IPV6_DONTFRAG`); a datagram over the path MTU is then `EMSGSIZE`.
    pub dont_fragment: bool,
}

impl Options {
    /// The options in the order `UdpSocket(sock, *, gso, gro, pktinfo, ecn,
    /// dont_fragment)` takes them.
    pub const fn new(gso: bool, gro: bool, pktinfo: bool, ecn: bool, dont_fragment: bool) -> Self {
        Options {
            gso,
            gro,
            pktinfo,
            ecn,
            dont_fragment,
        }
    }
}

impl Default for Options {
    /// Both offloads, no other option.
    fn default() -> Self {
        Options {
            gso: true,
            gro: true,
            pktinfo: false,
            ecn: false,
            dont_fragment: false,
        }
    }
}

/// One received datagram's metadata. `destination` and `ifindex` are `Some` with packet
/// information on ([`Options::pktinfo`]), `ecn` with [`Options::ecn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// The sender.
    pub source: Option<SocketAddr>,
    /// The local address the datagram was sent to (v4-mapped for IPv4 on an `AF_INET6`
    /// socket, as the kernel reports it).
    pub destination: Option<IpAddr>,
    /// The interface it came in on.
    pub ifindex: Option<u32>,
    /// Its ECN codepoint (0..=3).
    pub ecn: Option<u8>,
}

impl Meta {
    /// The source to answer this datagram from (a server with several addresses answers
    /// from the one it was reached on): its destination, with the interface for an IPv6
    /// link-local one.
    pub fn reply_source(&self) -> Option<Source> {
        let ip = self.destination?;
        Some(Source {
            ip,
            ifindex: if needs_scope(&ip) {
                self.ifindex.unwrap_or(0)
            } else {
                0
            },
        })
    }
}

/// Whether `ip` means something only with its interface (IPv6 link-local unicast and
/// multicast), as `getnameinfo` names the scope of.
fn needs_scope(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            s & 0xffc0 == 0xfe80 || s & 0xff0f == 0xff02
        }
    }
}

/// The local part of a datagram's metadata (see [`Meta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Local {
    destination: Option<IpAddr>,
    ifindex: u32,
    tos: Option<u8>,
}

/// The metadata of a receive's datagrams, filled by
/// [`UdpBatch::recv`](super::UdpBatch::recv) with `Out::Meta`: entry `i` is datagram `i`'s. The
/// senders are kept as a slice of their own ([`sources`](Self::sources)), as the
/// WireGuard device's `decrypt` takes them; the local fields are filled only when the
/// receiving batch has packet information or ECN on (no work per datagram otherwise).
#[derive(Debug, Clone, Default)]
pub struct RecvMeta {
    sources: Vec<Option<SocketAddr>>,
    local: Vec<Local>,
    /// The datagrams of the last fill.
    filled: usize,
    /// What the last fill reported.
    pktinfo: bool,
    ecn: bool,
}

impl RecvMeta {
    /// Room for `capacity` datagrams, all empty.
    pub fn new(capacity: usize) -> Self {
        RecvMeta {
            sources: vec![None; capacity],
            local: vec![Local::default(); capacity],
            filled: 0,
            pktinfo: false,
            ecn: false,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// The most datagrams one receive delivers: [`RECV_SLOTS`](super::RECV_SLOTS)
    /// coalesced reads of at most 64 segments each.
    pub const MAX_DATAGRAMS: usize = super::RECV_SLOTS * super::MAX_SEGMENTS_PER_SEND;

    /// Room for at least `n` datagrams (new entries empty), or for
    /// [`MAX_DATAGRAMS`](Self::MAX_DATAGRAMS) when `n` is more (a caller's count, which
    /// may be anything).
    pub fn grow_to(&mut self, n: usize) {
        let n = n.min(Self::MAX_DATAGRAMS);
        if self.sources.len() < n {
            self.sources.resize(n, None);
            self.local.resize(n, Local::default());
        }
    }

    /// How many datagrams the last receive filled in (entries past it hold older
    /// datagrams').
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// Datagram `i`'s metadata, if the last receive filled it in; else `out_of_range`.
    pub fn entry(&self, i: usize) -> std::result::Result<Meta, crate::engine::Error> {
        match self.get(i).filter(|_| i < self.filled) {
            Some(m) => Ok(m),
            None => Err(crate::engine::Error::new(
                OutOfRange,
                format!("no datagram {i}: the last receive gave {}", self.filled),
            )),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Every datagram's sender.
    pub fn sources(&self) -> &[Option<SocketAddr>] {
        &self.sources
    }

    /// Every datagram's sender, to change (a WireGuard `decrypt` permutes them).
    pub fn sources_mut(&mut self) -> &mut [Option<SocketAddr>] {
        &mut self.sources
    }

    /// Datagram `i`'s metadata (`None` past the end).
    pub fn get(&self, i: usize) -> Option<Meta> {
        let local = self.local.get(i)?;
        Some(Meta {
            source: self.sources[i],
            destination: local.destination.filter(|_| self.pktinfo),
            ifindex: Some(local.ifindex).filter(|_| self.pktinfo),
            ecn: local.tos.filter(|_| self.ecn).map(|t| t & ECN_MASK),
        })
    }

    /// Datagram `i`'s local address as `socket.recvfrom` writes hosts: `"a.b.c.d"`, or
    /// the IPv6 text form with `%interface` for a link-local one (`None` without
    /// [`Options::pktinfo`]); `out_of_range` as [`entry`](Self::entry).
    pub fn destination_host(
        &self,
        i: usize,
    ) -> std::result::Result<Option<String>, crate::engine::Error> {
        let m = self.entry(i)?;
        let Some(ip) = m.destination else {
            return Ok(None);
        };
        let scope = if needs_scope(&ip) {
            m.ifindex.unwrap_or(0)
        } else {
            0
        };
        let a = match ip {
            IpAddr::V4(_) => SocketAddr::new(ip, 0),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, scope)),
        };
        Ok(Some(super::host_string(&a)))
    }

    /// Exchanges the entries of datagrams `i` and `j` (as a batch's buffers are permuted);
    /// `out_of_range` (nothing exchanged) unless the last receive filled both in.
    pub fn swap(&mut self, i: usize, j: usize) -> std::result::Result<(), crate::engine::Error> {
        self.entry(i.max(j))?;
        self.sources.swap(i, j);
        self.local.swap(i, j);
        Ok(())
    }

    /// Starts a fill: whether the filling batch reports packet information and ECN.
    pub(crate) fn begin(&mut self, pktinfo: bool, ecn: bool) {
        self.pktinfo = pktinfo;
        self.ecn = ecn;
    }

    /// Ends a fill of `n` datagrams.
    pub(crate) fn end(&mut self, n: usize) {
        self.filled = n;
    }

    /// Whether the local fields are being filled.
    pub(crate) fn wants_local(&self) -> bool {
        self.pktinfo || self.ecn
    }

    /// Sets entry `i` (which exists: the caller stops at [`len`](Self::len)).
    pub(crate) fn set(&mut self, i: usize, source: Option<SocketAddr>, info: Option<&RxInfo>) {
        self.sources[i] = source;
        if let Some(info) = info {
            self.local[i] = Local {
                destination: info.dst,
                ifindex: info.ifindex,
                tos: info.tos,
            };
        }
    }
}

/// What a send attaches to its datagrams ([`TxMeta`]: an ECN codepoint, a source
/// address): nothing, the same for all, or one per datagram. Runs of equal size that
/// also have equal metadata go out as one `UDP_SEGMENT` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxMetas<'a> {
    /// No cmsg beyond `UDP_SEGMENT` (the plain send).
    #[default]
    None,
    /// The same for every datagram.
    All(TxMeta),
    /// One per datagram (at least as many as datagrams).
    Each(&'a [TxMeta]),
}

impl<'a> TxMetas<'a> {
    /// Datagram `i`'s.
    pub fn get(&self, i: usize) -> TxMeta {
        match self {
            TxMetas::None => TxMeta::default(),
            TxMetas::All(m) => *m,
            TxMetas::Each(m) => m.get(i).copied().unwrap_or_default(),
        }
    }

    /// The same for the datagrams from `start` on.
    pub fn skip(self, start: usize) -> TxMetas<'a> {
        match self {
            TxMetas::Each(m) => TxMetas::Each(m.get(start..).unwrap_or(&[])),
            other => other,
        }
    }

    /// Whether any datagram carries something.
    pub fn is_none(&self) -> bool {
        matches!(self, TxMetas::None)
    }

    /// The metadata of `n` datagrams from a send's `ecn` and `src` arguments as a caller
    /// gives them: each unset, one for all, or one per datagram, where a `None` entry
    /// attaches nothing to its datagram (no ECN cmsg; the source the route picks); built
    /// in `scratch` when either is per datagram. Refused as
    /// [`UdpBatch::send_meta`](super::UdpBatch::send_meta) refuses them: a list shorter
    /// than `n` is `too_few_addresses`, a codepoint outside 0..=3 `out_of_range` (with
    /// the index of a list's entry).
    pub fn combine(
        ecn: PerDatagram<'_, Option<i64>>,
        src: PerDatagram<'_, Option<Source>>,
        n: usize,
        scratch: &'a mut Vec<TxMeta>,
    ) -> Result<TxMetas<'a>> {
        for (len, what) in [(ecn.len(), "ecn"), (src.len(), "src")] {
            if let Some(len) = len.filter(|&l| l < n) {
                let m = format!("{what} has {len} entries, fewer than the {n} datagrams");
                return Err(invalid(TooFewAddresses, m));
            }
        }
        let codepoint = |i: usize| match ecn.get(i).flatten() {
            None => Ok(None),
            Some(e @ 0..=3) => Ok(Some(e as u8)),
            Some(e) => Err(ecn_out_of_range(e, ecn.len().map(|_| i))),
        };
        Ok(match (ecn, src) {
            (PerDatagram::Unset, PerDatagram::Unset) => TxMetas::None,
            (PerDatagram::Each(_), _) | (_, PerDatagram::Each(_)) => {
                scratch.clear();
                for i in 0..n {
                    let (ecn, src) = (codepoint(i)?, src.get(i).flatten());
                    scratch.push(TxMeta { ecn, src });
                }
                TxMetas::Each(scratch)
            }
            (_, s) => TxMetas::All(TxMeta {
                ecn: codepoint(0)?,
                src: s.get(0).flatten(),
            }),
        })
    }

    /// Checks `n` datagrams' metadata: one per datagram, ECN codepoints 0..=3.
    pub(crate) fn check(&self, n: usize) -> Result<()> {
        let bad_ecn = |m: &TxMeta| m.ecn.is_some_and(|e| e > ECN_MASK);
        match self {
            TxMetas::None => Ok(()),
            TxMetas::All(m) if bad_ecn(m) => Err(ecn_out_of_range(m.ecn.unwrap_or(0).into(), None)),
            TxMetas::All(_) => Ok(()),
            TxMetas::Each(m) if m.len() < n => Err(invalid(
                TooFewAddresses,
                format!("{} ecn or src entries for {n} datagrams", m.len()),
            )),
            TxMetas::Each(m) => match m[..n].iter().position(bad_ecn) {
                Some(i) => Err(ecn_out_of_range(m[i].ecn.unwrap_or(0).into(), Some(i))),
                None => Ok(()),
            },
        }
    }
}

/// A per-datagram argument as a caller gives it: absent, one for all, or one each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PerDatagram<'a, T> {
    #[default]
    Unset,
    All(T),
    Each(&'a [T]),
}

impl<T: Copy> PerDatagram<'_, T> {
    /// Datagram `i`'s (`None` when unset or past the end).
    pub fn get(&self, i: usize) -> Option<T> {
        match self {
            PerDatagram::Unset => None,
            PerDatagram::All(v) => Some(*v),
            PerDatagram::Each(v) => v.get(i).copied(),
        }
    }

    /// The number of entries of a list.
    fn len(&self) -> Option<usize> {
        match self {
            PerDatagram::Each(v) => Some(v.len()),
            _ => None,
        }
    }
}

fn ecn_out_of_range(e: i64, i: Option<usize>) -> super::Error {
    let what = i.map_or("ecn".into(), |i| format!("ecn[{i}]"));
    let e = crate::engine::Error::new(
        OutOfRange,
        format!("{what} must be an ECN codepoint, 0..3, not {e}"),
    );
    super::Error::Invalid(match i {
        Some(i) => e.at(i),
        None => e,
    })
}

/// A source address as a caller writes it (`what` names it in messages, and its index
/// is the error's): an IP literal for a socket of `family`, IPv6 with `%scope` for a
/// link-local one, as [`parse_host`] reads hosts (an IPv4 one on an `AF_INET6` socket
/// stands for its v4-mapped form). The unspecified address and `"<broadcast>"` are not
/// sources (`bad_address`).
pub fn parse_source(what: Name<'_>, host: &str, family: std::ffi::c_int) -> Result<Source> {
    // A refusal of `kind`, its message after the name, with the name's index.
    let refuse = |kind, m: &str| {
        let e = crate::engine::Error::new(kind, format!("{what}: {m}"));
        super::Error::Invalid(match what.1 {
            Some(i) => e.at(i),
            None => e,
        })
    };
    let (ip, scope) = parse_host(host, family).map_err(|e| match e {
        super::Error::Invalid(e) => refuse(e.kind(), e.message()),
        e => e,
    })?;
    if ip.is_unspecified() || host == "<broadcast>" {
        let m = format!("{host:?} is not a local address to send from");
        return Err(refuse(BadAddress, &m));
    }
    if ip.is_ipv6() && family == libc::AF_INET {
        let m = format!("{ip} is an IPv6 address, but the socket is AF_INET (IPv4)");
        return Err(refuse(BadAddress, &m));
    }
    Ok(Source {
        ip,
        ifindex: scope.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_meta_reports_what_was_asked() {
        let mut m = RecvMeta::new(3);
        let info = RxInfo {
            segment: 0,
            dst: Some("fe80::1".parse().unwrap()),
            ifindex: 5,
            tos: Some(0xbb),
        };
        let a: SocketAddr = "[fe80::2]:9".parse().unwrap();
        m.begin(true, false);
        m.set(0, Some(a), Some(&info));
        let got = m.get(0).unwrap();
        assert_eq!(got.source, Some(a));
        assert_eq!(got.destination, info.dst);
        assert_eq!(got.ifindex, Some(5));
        assert_eq!(got.ecn, None, "ECN was not asked for");
        assert_eq!(
            got.reply_source(),
            Some(Source {
                ip: info.dst.unwrap(),
                ifindex: 5
            })
        );
        m.begin(false, true);
        assert_eq!(m.get(0).unwrap().ecn, Some(3));
        assert_eq!(m.get(0).unwrap().destination, None);
        assert_eq!(m.get(3), None);
        m.begin(true, false);
        m.end(1);
        assert_eq!(m.destination_host(0).unwrap().as_deref(), Some("fe80::1%5"));
        m.begin(false, false);
        m.end(1);
        assert_eq!(m.destination_host(0).unwrap(), None, "no pktinfo asked");
        assert_eq!(m.destination_host(1).unwrap_err().kind(), OutOfRange);
        m.begin(false, true);
        // Only the entries the last receive filled in are there to read and exchange.
        m.end(2);
        assert_eq!(m.filled(), 2);
        assert_eq!(m.entry(0).unwrap().ecn, Some(3));
        for bad in [m.entry(2).map(drop), m.swap(0, 2), m.swap(5, 1)] {
            let e = bad.unwrap_err();
            assert_eq!(e.kind(), OutOfRange);
            assert!(e.message().contains("the last receive gave 2"), "{e}");
        }
        assert_eq!(m.sources()[0], Some(a), "a refused swap exchanges nothing");
        m.grow_to(2);
        assert_eq!(m.len(), 3, "never shrinks");
        m.grow_to(5);
        assert_eq!((m.len(), m.get(4)), (5, Some(Meta::default())));
        m.end(3);
        m.swap(0, 2).unwrap();
        assert_eq!(m.sources()[2], Some(a));
        assert_eq!(m.get(2).unwrap().ecn, Some(3));
        assert_eq!(m.get(0).unwrap(), Meta::default());
        assert_eq!(m.len(), 5);
        m.sources_mut()[1] = Some(a);
        assert_eq!(m.get(1).unwrap().source, Some(a));
    }

    #[test]
    fn tx_metas_are_checked() {
        let ok = TxMeta {
            ecn: Some(3),
            src: None,
        };
        let bad = TxMeta {
            ecn: Some(4),
            src: None,
        };
        assert!(TxMetas::None.check(5).is_ok());
        assert!(TxMetas::All(ok).check(5).is_ok());
        assert!(TxMetas::All(bad).check(5).is_err());
        assert!(TxMetas::Each(&[ok, ok]).check(2).is_ok());
        assert!(TxMetas::Each(&[ok]).check(2).is_err());
        match TxMetas::Each(&[ok, bad]).check(2) {
            Err(super::super::Error::Invalid(e)) => {
                assert_eq!(e.index(), Some(1));
                assert!(e.message().contains("ecn[1]"), "{e}");
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(TxMetas::Each(&[ok, bad]).skip(1).get(0), bad);
        assert_eq!(TxMetas::All(ok).skip(1).get(7), ok);
    }

    #[test]
    fn send_arguments_combine() {
        use PerDatagram::{All, Each, Unset};
        let s = |ip: &str| {
            Some(Source {
                ip: ip.parse().unwrap(),
                ifindex: 0,
            })
        };
        let m = |ecn, src| TxMeta { ecn, src };
        let srcs = [s("10.0.0.1"), None, s("10.0.0.2")];
        let mut scratch = Vec::new();
        // (ecn, src, n) -> each datagram's metadata, or the error kind and index
        type Want = std::result::Result<Vec<TxMeta>, (crate::engine::ErrorKind, Option<usize>)>;
        type Case<'a> = (
            PerDatagram<'a, Option<i64>>,
            PerDatagram<'a, Option<Source>>,
            usize,
            Want,
        );
        let cases: Vec<Case<'_>> = vec![
            (Unset, Unset, 2, Ok(vec![m(None, None); 2])),
            (All(Some(2)), Unset, 2, Ok(vec![m(Some(2), None); 2])),
            (
                Unset,
                All(s("10.0.0.1")),
                1,
                Ok(vec![m(None, s("10.0.0.1"))]),
            ),
            (
                Each(&[Some(0), Some(1), Some(3)]),
                All(s("10.0.0.9")),
                3,
                Ok(vec![
                    m(Some(0), s("10.0.0.9")),
                    m(Some(1), s("10.0.0.9")),
                    m(Some(3), s("10.0.0.9")),
                ]),
            ),
            (
                All(Some(1)),
                Each(&srcs),
                3,
                Ok(vec![
                    m(Some(1), srcs[0]),
                    m(Some(1), None),
                    m(Some(1), srcs[2]),
                ]),
            ),
            // A None entry: nothing for that datagram.
            (
                Each(&[None, Some(2)]),
                Unset,
                2,
                Ok(vec![m(None, None), m(Some(2), None)]),
            ),
            // Longer lists: the first n entries.
            (
                Each(&[Some(1), Some(2), Some(9)]),
                Unset,
                2,
                Ok(vec![m(Some(1), None), m(Some(2), None)]),
            ),
            (
                Each(&[Some(0), Some(1)]),
                Unset,
                3,
                Err((TooFewAddresses, None)),
            ),
            (Unset, Each(&srcs), 4, Err((TooFewAddresses, None))),
            (All(Some(4)), Unset, 1, Err((OutOfRange, None))),
            (All(Some(-1)), Unset, 1, Err((OutOfRange, None))),
            (All(Some(4)), Unset, 0, Err((OutOfRange, None))),
            (
                Each(&[Some(0), Some(9)]),
                Unset,
                2,
                Err((OutOfRange, Some(1))),
            ),
            (
                Each(&[Some(-3)]),
                All(s("10.0.0.1")),
                1,
                Err((OutOfRange, Some(0))),
            ),
        ];
        for (k, (ecn, src, n, want)) in cases.into_iter().enumerate() {
            let got = TxMetas::combine(ecn, src, n, &mut scratch)
                .map(|t| (0..n).map(|i| t.get(i)).collect::<Vec<_>>())
                .map_err(|e| match e {
                    super::super::Error::Invalid(e) => (e.kind(), e.index()),
                    e => panic!("{e}"),
                });
            assert_eq!(got, want, "case {k}");
        }
        let t = TxMetas::combine(Unset, Unset, 3, &mut scratch).unwrap();
        assert!(t.is_none(), "nothing asked: the plain send");
    }

    #[test]
    fn sources_are_parsed() {
        let v4 = libc::AF_INET;
        let v6 = libc::AF_INET6;
        let s = |h: &str, f| parse_source(Name("src", None), h, f);
        assert_eq!(
            s("10.0.0.1", v4).unwrap().ip,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s("10.0.0.1", v6).unwrap().v4(),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            s("::ffff:10.0.0.1", v6).unwrap().v4(),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(s("fe80::1%1", v6).unwrap().ifindex, 1);
        for (h, f) in [
            ("fd00::1", v4),
            ("", v4),
            ("::", v6),
            ("<broadcast>", v4),
            ("host", v4),
        ] {
            match s(h, f) {
                Err(super::super::Error::Invalid(e)) => {
                    assert_eq!((e.kind(), e.index()), (BadAddress, None), "{h:?}");
                    assert!(e.message().starts_with("src: "), "{e}");
                }
                r => panic!("{h:?}: {r:?}"),
            }
            // An entry of a list: its index is the error's.
            match parse_source(Name("src", Some(3)), h, f) {
                Err(super::super::Error::Invalid(e)) => {
                    assert_eq!(e.index(), Some(3), "{h:?}");
                    assert!(e.message().starts_with("src[3]: "), "{e}");
                }
                r => panic!("{h:?}: {r:?}"),
            }
        }
    }
}
