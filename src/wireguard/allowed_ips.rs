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
    child: [Option<Box<Node<V>>>; 2],
}

impl<V> Node<V> {
    fn leaf(bits: u128, len: u8, value: V) -> Box<Node<V>> {
        Box::new(Node {
            bits,
            len,
            value: Some(value),
            child: [None, None],
        })
    }
}

/// Prefixes of both families, each mapped to a value (a peer); the longest match wins.
pub struct AllowedIps<V> {
    v4: Option<Box<Node<V>>>,
    v6: Option<Box<Node<V>>>,
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        AllowedIps { v4: None, v6: None }
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
        let mut link = self.root_mut(net.addr.is_ipv6());
        loop {
            let Some(node) = link else {
                *link = Some(Node::leaf(bits, len, value));
                return;
            };
            let common = common_len(node.bits, bits, node.len.min(len));
            if common == node.len && node.len == len {
                node.value = Some(value);
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
                let mut n = Node::leaf(bits, len, value);
                let side = bit(old.bits, len);
                n.child[side] = Some(old);
                n
            } else {
                // They part after `common` bits: a branch node without a value.
                let mut branch = Box::new(Node {
                    bits: mask(bits, common),
                    len: common,
                    value: None,
                    child: [None, None],
                });
                let old_side = bit(old.bits, common);
                branch.child[old_side] = Some(old);
                branch.child[1 - old_side] = Some(Node::leaf(bits, len, value));
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

    /// Every prefix whose value `owns` picks: IPv4 first, each family in address order.
    pub fn entries_by(&self, owns: impl Fn(&V) -> bool) -> Vec<IpNet> {
        let mut out = Vec::new();
        collect(self.v4.as_deref(), false, &owns, &mut out);
        collect(self.v6.as_deref(), true, &owns, &mut out);
        out
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

fn collect<V>(node: Option<&Node<V>>, v6: bool, owns: &impl Fn(&V) -> bool, out: &mut Vec<IpNet>) {
    let Some(node) = node else { return };
    if node.value.as_ref().is_some_and(owns) {
        out.push(IpNet {
            addr: from_bits(node.bits, v6),
            len: node.len,
        });
    }
    collect(node.child[0].as_deref(), v6, owns, out);
    collect(node.child[1].as_deref(), v6, owns, out);
}
