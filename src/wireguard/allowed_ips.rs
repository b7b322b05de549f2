//! Cryptokey routing: a longest-prefix-match trie over IPv4 and IPv6 prefixes
//! (wireguard-go's `allowedips.go`), and [`IpNet`], one prefix.
//!
//! The trie is path-compressed: a node holds a prefix (its key bits and length) and
//! two children, each of which extends the node's prefix by at least one bit. Addresses
//! are left-aligned in a `u128` (an IPv4 address in the top 32 bits); each family has its
//! own root. A lookup walks at most one node per distinct prefix length on the path.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::engine::error::{Error, ErrorKind};
use crate::engine::Result;

/// An IP prefix (`addr/len`) with the host bits cleared, as `allowed_ip=` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

impl IpNet {
    /// `addr/len` with the bits past `len` cleared; `len` beyond 32 (IPv4) or 128 (IPv6):
    /// error `bad_allowed_ip`.
    pub fn new(addr: IpAddr, len: u8) -> Result<IpNet> {
        let max = max_len(&addr);
        if len > max {
            return Err(Error::new(
                ErrorKind::BadAllowedIp,
                format!("prefix length {len} is beyond {max} for {addr}"),
            ));
        }
        let bits = mask(to_bits(&addr), len);
        Ok(IpNet {
            addr: from_bits(bits, addr.is_ipv6()),
            len,
        })
    }

    /// The address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is `/0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `addr` is inside this prefix.
    pub fn contains(&self, addr: &IpAddr) -> bool {
        addr.is_ipv6() == self.addr.is_ipv6()
            && mask(to_bits(addr), self.len) == to_bits(&self.addr)
    }
}

impl FromStr for IpNet {
    type Err = Error;

    /// `a.b.c.d/n` or `x:y::z/n` (a bare address is a host route, `/32` or `/128`).
    fn from_str(s: &str) -> Result<IpNet> {
        let bad = || Error::new(ErrorKind::BadAllowedIp, format!("not an IP prefix: {s:?}"));
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let len = match l {
            None => max_len(&addr),
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        IpNet::new(addr, len)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv6() {
        128
    } else {
        32
    }
}

/// The address left-aligned in 128 bits.
fn to_bits(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)) << 96,
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_bits(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        IpAddr::V4(Ipv4Addr::from((bits >> 96) as u32))
    }
}

/// `bits` with everything after the first `len` bits cleared.
fn mask(bits: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        128.. => bits,
        l => bits & !(u128::MAX >> l),
    }
}

/// Bit `i` (0 = most significant).
fn bit(bits: u128, i: u8) -> usize {
    ((bits >> (127 - u32::from(i))) & 1) as usize
}

/// How many leading bits `a` and `b` share, at most `max`.
fn common_len(a: u128, b: u128, max: u8) -> u8 {
    ((a ^ b).leading_zeros() as u8).min(max)
}

struct Node<V> {
    bits: u128,
    len: u8,
    value: Option<V>,
    /// When the value was set (the table's count of insertions then): entries are listed
    /// in this order.
    seq: u64,
    child: [Option<Box<Node<V>>>; 2],
}

impl<V> Node<V> {
    fn leaf(bits: u128, len: u8, value: V, seq: u64) -> Box<Node<V>> {
        Box::new(Node {
            bits,
            len,
            value: Some(value),
            seq,
            child: [None, None],
        })
    }
}

/// Prefixes of both families, each mapped to a value (a peer); the longest match wins.
pub struct AllowedIps<V> {
    v4: Option<Box<Node<V>>>,
    v6: Option<Box<Node<V>>>,
    /// Insertions so far.
    inserted: u64,
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        AllowedIps {
            v4: None,
            v6: None,
            inserted: 0,
        }
    }
}

impl<V> AllowedIps<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn root(&self, v6: bool) -> &Option<Box<Node<V>>> {
        if v6 {
            &self.v6
        } else {
            &self.v4
        }
    }

    fn root_mut(&mut self, v6: bool) -> &mut Option<Box<Node<V>>> {
        if v6 {
            &mut self.v6
        } else {
            &mut self.v4
        }
    }

    /// Maps `net` to `value`, replacing what it was mapped to (a prefix belongs to one
    /// peer: adding it to another moves it, as in wireguard-go).
    pub fn insert(&mut self, net: IpNet, value: V) {
        let bits = to_bits(&net.addr);
        let len = net.len;
        self.inserted += 1;
        let seq = self.inserted;
        let mut link = self.root_mut(net.addr.is_ipv6());
        loop {
            let Some(node) = link else {
                *link = Some(Node::leaf(bits, len, value, seq));
                return;
            };
            let common = common_len(node.bits, bits, node.len.min(len));
            if common == node.len && node.len == len {
                node.value = Some(value);
                node.seq = seq;
                return;
            }
            if common == node.len {
                // The node's prefix covers the new one: descend.
                link = &mut link.as_mut().unwrap().child[bit(bits, common)];
                continue;
            }
            let old = link.take().unwrap();
            let new = if common == len {
                // The new prefix covers the node: it becomes the node's parent.
                let mut n = Node::leaf(bits, len, value, seq);
                let side = bit(old.bits, len);
                n.child[side] = Some(old);
                n
            } else {
                // They part after `common` bits: a branch node without a value.
                let mut branch = Box::new(Node {
                    bits: mask(bits, common),
                    len: common,
                    value: None,
                    seq: 0,
                    child: [None, None],
                });
                let old_side = bit(old.bits, common);
                branch.child[old_side] = Some(old);
                branch.child[1 - old_side] = Some(Node::leaf(bits, len, value, seq));
                branch
            };
            *link = Some(new);
            return;
        }
    }

    /// The value of the longest prefix that contains `addr`.
    pub fn lookup(&self, addr: &IpAddr) -> Option<&V> {
        let bits = to_bits(addr);
        let mut best = None;
        let mut cur = self.root(addr.is_ipv6()).as_deref();
        while let Some(node) = cur {
            if common_len(node.bits, bits, node.len) < node.len {
                break;
            }
            if node.value.is_some() {
                best = node.value.as_ref();
            }
            if node.len == 128 {
                break;
            }
            cur = node.child[bit(bits, node.len)].as_deref();
        }
        best
    }

    /// The value of the longest prefix containing the IPv4 address in network order.
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<&V> {
        self.lookup(&IpAddr::V4(Ipv4Addr::from(addr)))
    }

    /// The value of the longest prefix containing the IPv6 address in network order.
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<&V> {
        self.lookup(&IpAddr::V6(Ipv6Addr::from(addr)))
    }

    /// Removes `net` if `owns` says its value is the caller's; returns whether it did.
    pub fn remove(&mut self, net: IpNet, owns: impl Fn(&V) -> bool) -> bool {
        let bits = to_bits(&net.addr);
        remove_exact(self.root_mut(net.addr.is_ipv6()), bits, net.len, &owns)
    }

    /// Removes every prefix whose value `owns` picks.
    pub fn remove_by(&mut self, owns: impl Fn(&V) -> bool) {
        remove_all(&mut self.v4, &owns);
        remove_all(&mut self.v6, &owns);
    }

    /// Every prefix whose value `owns` picks, in the order they were mapped to their
    /// values (a prefix inserted again moves to the end), both families together: the
    /// order in which wireguard-go lists a peer's allowed IPs.
    pub fn entries_by(&self, owns: impl Fn(&V) -> bool) -> Vec<IpNet> {
        let mut out = Vec::new();
        collect(self.v4.as_deref(), false, &owns, &mut out);
        collect(self.v6.as_deref(), true, &owns, &mut out);
        out.sort_unstable_by_key(|&(seq, _)| seq);
        out.into_iter().map(|(_, net)| net).collect()
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.v4 = None;
        self.v6 = None;
    }
}

/// After a change below `link`: drops a valueless node with fewer than two children
/// (replacing it by its one child, if any).
fn compact<V>(link: &mut Option<Box<Node<V>>>) {
    let Some(node) = link else { return };
    if node.value.is_some() {
        return;
    }
    match (node.child[0].is_some(), node.child[1].is_some()) {
        (true, true) => {}
        (false, false) => *link = None,
        (left, _) => {
            let side = usize::from(!left);
            *link = node.child[side].take();
        }
    }
}

fn remove_exact<V>(
    link: &mut Option<Box<Node<V>>>,
    bits: u128,
    len: u8,
    owns: &impl Fn(&V) -> bool,
) -> bool {
    let Some(node) = link else { return false };
    if node.len > len || common_len(node.bits, bits, node.len) < node.len {
        return false;
    }
    let removed = if node.len == len {
        if node.value.as_ref().is_some_and(owns) {
            node.value = None;
            true
        } else {
            false
        }
    } else {
        remove_exact(&mut node.child[bit(bits, node.len)], bits, len, owns)
    };
    if removed {
        compact(link);
    }
    removed
}

fn remove_all<V>(link: &mut Option<Box<Node<V>>>, owns: &impl Fn(&V) -> bool) {
    let Some(node) = link else { return };
    if node.value.as_ref().is_some_and(owns) {
        node.value = None;
    }
    remove_all(&mut node.child[0], owns);
    remove_all(&mut node.child[1], owns);
    compact(link);
}

fn collect<V>(
    node: Option<&Node<V>>,
    v6: bool,
    owns: &impl Fn(&V) -> bool,
    out: &mut Vec<(u64, IpNet)>,
) {
    let Some(node) = node else { return };
    if node.value.as_ref().is_some_and(owns) {
        let net = IpNet {
            addr: from_bits(node.bits, v6),
            len: node.len,
        };
        out.push((node.seq, net));
    }
    collect(node.child[0].as_deref(), v6, owns, out);
    collect(node.child[1].as_deref(), v6, owns, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipnet_parse_mask_and_display() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.0.0.1/8", Some("10.0.0.0/8")),
            ("192.168.1.77/32", Some("192.168.1.77/32")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("1.2.3.4", Some("1.2.3.4/32")),
            ("2001:db8::1/32", Some("2001:db8::/32")),
            ("::/0", Some("::/0")),
            ("fe80::1", Some("fe80::1/128")),
            ("10.0.0.0/33", None),
            ("::/129", None),
            ("10.0.0.0/", None),
            ("10.0.0.0/+8", None),
            ("10.0.0.0/-1", None),
            ("10.0.0/8", None),
            ("", None),
            ("/8", None),
            ("10.0.0.0/0008", None),
        ];
        for &(input, want) in cases {
            let got = input.parse::<IpNet>();
            match want {
                Some(w) => assert_eq!(got.unwrap().to_string(), w, "{input}"),
                None => assert_eq!(got.unwrap_err().kind(), ErrorKind::BadAllowedIp, "{input}"),
            }
        }
        assert!(net("10.1.0.0/16").contains(&ip("10.1.255.3")));
        assert!(!net("10.1.0.0/16").contains(&ip("10.2.0.0")));
        assert!(!net("0.0.0.0/0").contains(&ip("::1")));
        assert!(net("::/0").contains(&ip("::ffff:1.2.3.4")));
    }

    #[test]
    fn longest_prefix_wins_table() {
        let mut t = AllowedIps::new();
        for (n, v) in [
            ("0.0.0.0/0", 0),
            ("10.0.0.0/8", 1),
            ("10.1.0.0/16", 2),
            ("10.1.2.0/24", 3),
            ("10.1.2.3/32", 4),
            ("10.128.0.0/9", 5),
            ("192.168.0.0/16", 6),
            ("2001:db8::/32", 10),
            ("2001:db8:1::/48", 11),
            ("2001:db8:1::1/128", 12),
            ("fe80::/10", 13),
        ] {
            t.insert(net(n), v);
        }
        let cases: &[(&str, Option<i32>)] = &[
            ("10.1.2.3", Some(4)),
            ("10.1.2.4", Some(3)),
            ("10.1.3.0", Some(2)),
            ("10.2.0.0", Some(1)),
            ("10.127.255.255", Some(1)),
            ("10.128.0.0", Some(5)),
            ("10.255.0.1", Some(5)),
            ("11.0.0.0", Some(0)),
            ("192.168.9.9", Some(6)),
            ("2001:db8:1::1", Some(12)),
            ("2001:db8:1::2", Some(11)),
            ("2001:db8:2::", Some(10)),
            ("2001:db9::", None),
            ("fe80::1", Some(13)),
            ("febf::1", Some(13)),
            ("fec0::1", None),
            ("::ffff:10.1.2.3", None), // a mapped address is IPv6
        ];
        for &(a, want) in cases {
            assert_eq!(t.lookup(&ip(a)).copied(), want, "{a}");
        }
        assert_eq!(t.lookup_v4([10, 1, 2, 3]), Some(&4));
        let mut six = [0u8; 16];
        six[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(t.lookup_v6(six), Some(&10));
    }

    #[test]
    fn insert_moves_a_prefix_and_remove_needs_the_owner() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/24"), 'a');
        t.insert(net("10.0.0.0/24"), 'b'); // moved to b
        assert_eq!(t.lookup(&ip("10.0.0.9")), Some(&'b'));
        assert!(
            !t.remove(net("10.0.0.0/24"), |v| *v == 'a'),
            "not a's any more"
        );
        assert!(!t.remove(net("10.0.0.0/25"), |_| true), "no such prefix");
        assert!(t.remove(net("10.0.0.0/24"), |v| *v == 'b'));
        assert_eq!(t.lookup(&ip("10.0.0.9")), None);
        assert!(t.v4.is_none(), "compacted to nothing");
    }

    #[test]
    fn remove_by_owner_and_entries() {
        let mut t = AllowedIps::new();
        for (n, v) in [
            ("10.0.0.0/8", 'a'),
            ("10.1.0.0/16", 'b'),
            ("10.1.1.0/24", 'a'),
            ("10.2.0.0/16", 'b'),
            ("::/0", 'a'),
            ("2001:db8::/32", 'b'),
        ] {
            t.insert(net(n), v);
        }
        let show = |t: &AllowedIps<char>, who| {
            t.entries_by(|v| *v == who)
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(show(&t, 'a'), ["10.0.0.0/8", "10.1.1.0/24", "::/0"]);
        assert_eq!(
            show(&t, 'b'),
            ["10.1.0.0/16", "10.2.0.0/16", "2001:db8::/32"]
        );
        // insertion order, both families mixed; inserted again: to the end
        t.insert(net("10.1.0.0/16"), 'b');
        t.insert(net("10.0.0.5/32"), 'b');
        assert_eq!(
            show(&t, 'b'),
            ["10.2.0.0/16", "2001:db8::/32", "10.1.0.0/16", "10.0.0.5/32"]
        );
        t.remove(net("10.0.0.5/32"), |_| true);
        t.remove_by(|v| *v == 'a');
        assert_eq!(show(&t, 'a'), Vec::<String>::new());
        assert_eq!(t.lookup(&ip("10.1.1.1")), Some(&'b'));
        assert_eq!(t.lookup(&ip("10.3.0.0")), None);
        assert_eq!(t.lookup(&ip("2001:db8::1")), Some(&'b'));
        assert_eq!(t.lookup(&ip("2001:db9::1")), None);
        t.remove_by(|_| true);
        assert!(t.v4.is_none() && t.v6.is_none());
    }

    /// A naive model: the longest of all prefixes containing the address.
    #[test]
    fn random_against_a_linear_model() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..40 {
            let v6 = round % 2 == 1;
            let mut t = AllowedIps::new();
            let mut model: Vec<(IpNet, u32)> = Vec::new();
            // Addresses from a small space so that prefixes overlap a lot.
            let addr = |r: u64| -> IpAddr {
                let x = (r & 0xff) as u8;
                let y = ((r >> 8) & 0x3) as u8;
                if v6 {
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        0,
                        0,
                        0,
                        u16::from(y),
                        u16::from(x),
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 0, y, x))
                }
            };
            let max = if v6 { 128 } else { 32 };
            for step in 0..300 {
                let r = rnd();
                let len = (max - (r >> 40) % 12) as u8;
                let n = IpNet::new(addr(r >> 16), len).unwrap();
                let owner = (r >> 60) as u32 % 4;
                match r % 5 {
                    0 => {
                        let removed = t.remove(n, |v| *v == owner);
                        let before = model.len();
                        model.retain(|(m, o)| !(*m == n && *o == owner));
                        assert_eq!(removed, model.len() < before, "round {round} step {step}");
                    }
                    1 if step % 50 == 0 => {
                        t.remove_by(|v| *v == owner);
                        model.retain(|(_, o)| *o != owner);
                    }
                    _ => {
                        t.insert(n, owner);
                        model.retain(|(m, _)| *m != n);
                        model.push((n, owner));
                    }
                }
                for _ in 0..8 {
                    let a = addr(rnd());
                    let want = model
                        .iter()
                        .filter(|(m, _)| m.contains(&a))
                        .max_by_key(|(m, _)| m.len())
                        .map(|(_, o)| *o);
                    assert_eq!(t.lookup(&a).copied(), want, "round {round} step {step} {a}");
                }
            }
            for owner in 0..4 {
                // the model keeps insertion order (a prefix inserted again at the end)
                let want: Vec<IpNet> = model
                    .iter()
                    .filter(|(_, o)| *o == owner)
                    .map(|(m, _)| *m)
                    .collect();
                assert_eq!(t.entries_by(|v| *v == owner), want);
            }
        }
    }
}
