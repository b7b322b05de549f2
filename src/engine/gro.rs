//! GRO: coalescing a batch of packets into super-packets to write to a TUN device.
//!
//! The rules are those of wireguard-go's `tun/offload_linux.go` (and of the kernel's own
//! GRO): segments coalesce only when they share addresses, ports, TCP ACK number, TTL /
//! hop limit, TOS / traffic class, DF, TCP options; carry only ACK or ACK|PSH; follow each
//! other in sequence with no gap or overlap; no segment is larger than the one before it;
//! PSH ends a run; and both checksums verify.
//!
//! Unlike the seed, the work runs in passes so that no payload byte is copied twice and
//! no packet is copied to the heap:
//! 1. *plan* reads the packets' headers and links each coalesced segment to its flow's
//!    item, taking every checksum as valid;
//! 2. *copy* grows each item's head buffer once to its final length and appends the
//!    segments' payloads in sequence order, summing each payload as it copies it: the
//!    checksums are checked there, in the pass that reads the bytes anyway. If one fails
//!    (rare: a corrupt packet), the heads are cut back to their own packets and both
//!    passes run again, the plan now checking each checksum before it merges, as the
//!    seed does, so the result is the same as if it had checked them first (such a
//!    batch costs up to about twice another: bounded, whatever the packets);
//! 3. *finish* fixes the headers and writes the virtio headers.
//!
//! The buffers are an [`ExpandBuffer`]: a growable `Vec<u8>` or Python `bytearray`, or a
//! fixed-size region that is never grown (its packets can still be merged into others).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub use super::buffer::ExpandBuffer;
use super::buffer::{addr_range, check_distinct, span, Buffers, MAX_IP_PACKET};
use super::checksum;
use super::error::{bail, Result};
use super::packet::*;
use super::virtio::*;
use crate::hooks::Hooks;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    /// The source and destination addresses' bytes (IPv4: the first 4).
    src: u128,
    dst: u128,
    ports: u32,
    /// TCP: the ACK number (segments with different ACKs are different flows). UDP: 0.
    ack: u32,
    proto: u8,
    v6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Csum {
    Unknown,
    Valid,
    Invalid,
}

/// One packet-to-be-written of a flow, with the segments merged into it so far.
#[derive(Debug, Clone, Copy)]
struct Item {
    /// The buffer that holds the first segment (headers come from it).
    head: u32,
    /// The last segment, for appending.
    tail: u32,
    /// The previous (older) item of the same flow.
    prev: u32,
    /// The sequence number of the first segment (TCP).
    seq: u32,
    /// Payload bytes of all segments.
    payload: u32,
    gso_size: u16,
    merged: u16,
    iph_len: u8,
    l4_len: u8,
    psh: bool,
    udp: bool,
    v6: bool,
    /// `payload % gso_size != 0`: the item ends with a short segment (kept up to date in
    /// `merge`, so that no division runs per packet).
    short: bool,
    head_csum: Csum,
    /// The head could not grow: the segments are written as they are (see `copy`).
    alone: bool,
}

/// Reusable state for [`handle_gro`]: one per thread. Nothing carries over between calls;
/// its allocations are reused, so a steady stream of batches allocates nothing.
#[derive(Debug, Default)]
pub struct GroTable {
    flows: HashMap<FlowKey, u32, BuildHasherDefault<FxHasher>>,
    /// The last flow looked up and its latest item (`flows[key]`, or NONE): consecutive
    /// packets of one flow, the usual batch, skip hashing the key.
    last: Option<(FlowKey, u32)>,
    items: Vec<Item>,
    /// Per packet: the next segment of its item.
    next: Vec<u32>,
    /// Per packet: the item it created, or NONE.
    item_of: Vec<u32>,
    to_write: Vec<usize>,
    /// Heads grown by `copy` and their lengths before, to cut them back.
    grown: Vec<(usize, usize)>,
    /// Whether the last call swapped any entries of `bufs`.
    swapped: bool,
}

impl GroTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn reset(&mut self, n: usize) {
        self.flows.clear();
        self.last = None;
        self.items.clear();
        self.next.clear();
        self.next.resize(n, NONE);
        self.item_of.clear();
        self.item_of.resize(n, NONE);
        self.to_write.clear();
        self.grown.clear();
        self.swapped = false;
    }

    /// Whether the last [`handle_gro`] swapped entries of its `bufs` (after coalescing a
    /// segment that arrived before the one ahead of it).
    pub fn swapped(&self) -> bool {
        self.swapped
    }

    /// The indices the last [`handle_gro`] returned: the buffers to write, in order.
    pub fn written(&self) -> &[usize] {
        &self.to_write
    }
}

/// Which flows coalescing merges: a TUN device's `tcp_coalescing` and `udp_coalescing`
/// switches. The other packets are written as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroKinds {
    /// TCP segments of one flow (`GSO_TCPV4` / `GSO_TCPV6` super-packets).
    pub tcp: bool,
    /// UDP datagrams of one flow (`GSO_UDP_L4` super-packets).
    pub udp: bool,
}

impl GroKinds {
    /// TCP always, UDP when `can_udp_gro`: what [`handle_gro`]'s argument means.
    pub const fn tcp_and(can_udp_gro: bool) -> Self {
        GroKinds {
            tcp: true,
            udp: can_udp_gro,
        }
    }

    /// Whether any flow coalesces.
    pub const fn any(self) -> bool {
        self.tcp || self.udp
    }
}

impl From<bool> for GroKinds {
    /// [`GroKinds::tcp_and`]: `handle_gro(..., can_udp_gro)`.
    fn from(can_udp_gro: bool) -> Self {
        GroKinds::tcp_and(can_udp_gro)
    }
}

/// [`handle_gro`] on the first `n` of a caller's buffers: `bufs[i][offset..]` is packet
/// `i` (with `sizes`, `bufs[i][offset..offset + sizes[i]]`: each packet's end then moves
/// within its buffer). Refuses buffers that share memory; puts the caller's entries in
/// GRO's order afterwards. When every buffer can hold `offset + 65535` bytes (none would
/// grow), a large batch with `sizes` is coalesced through [`Hooks::work`] on the buffers
/// pinned. The buffers to write are then [`GroTable::written`], each ending at its packet.
/// `kinds`: the flows that merge ([`GroKinds`], or `can_udp_gro` as a `bool`).
pub fn coalesce<E, L, H>(
    bufs: &mut L,
    n: usize,
    sizes: Option<&[usize]>,
    offset: usize,
    table: &mut GroTable,
    kinds: impl Into<GroKinds>,
    hooks: &mut H,
) -> std::result::Result<(), E>
where
    E: From<super::Error>,
    L: Buffers<E> + ?Sized,
    H: Hooks<E> + ?Sized,
{
    let kinds = kinds.into();
    let b = bufs.bufs(n, sizes.is_some(), offset)?;
    if let Some(s) = sizes {
        for (i, (b, &size)) in b.iter_mut().zip(s).enumerate() {
            b.resize(span(i, b.bytes().len(), offset, Some(size), false)?)?;
        }
    }
    check_distinct(b, &|_, b| addr_range(b, 0, b.capacity()), "bufs")?;
    let release = sizes.is_some_and(|s| hooks.worth_releasing(s.iter().sum()))
        && b.iter()
            .all(|b| b.capacity() >= offset.saturating_add(MAX_IP_PACKET));
    if release {
        let t = &mut *table;
        bufs.pinned(n, |w| {
            hooks.work(|| handle_gro(w, offset, t, kinds).map(|_| ()))
        })??;
    } else {
        handle_gro(b, offset, table, kinds)?;
    }
    if table.swapped() {
        bufs.reorder()?;
    }
    Ok(())
}

/// Headers of a packet that may coalesce.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    key: FlowKey,
    iph_len: usize,
    l4_len: usize,
    payload: usize,
    seq: u32,
    psh: bool,
    udp: bool,
    v6: bool,
}

/// Whether `pkt` is a TCP or UDP packet that GRO may merge (the seed's
/// `packet_is_gro_candidate`, `tcp_gro` and `udp_gro` preconditions).
fn candidate(pkt: &[u8], can_tcp_gro: bool, can_udp_gro: bool) -> Option<Candidate> {
    if pkt.len() < 28 || pkt.len() > MAX_IP_PACKET {
        return None;
    }
    let v6 = match pkt[0] >> 4 {
        4 => false,
        6 => true,
        _ => return None,
    };
    let (iph_len, proto) = if v6 {
        if be16(pkt, 4) as usize != pkt.len().checked_sub(IPV6_HDR_LEN)? {
            return None;
        }
        (IPV6_HDR_LEN, pkt[6])
    } else {
        // IPv4 options do not coalesce; nor do fragments.
        if pkt[0] & 0x0f != 5 || be16(pkt, 2) as usize != pkt.len() {
            return None;
        }
        if pkt[6] & 0x20 != 0 || be16(pkt, 6) & 0x1fff != 0 {
            return None;
        }
        // The kernel's GRO does not merge behind a corrupt IP header, and merging would
        // write a fresh, valid checksum over it.
        if checksum::sum(&pkt[..IPV4_HDR_LEN]) != 0xffff {
            return None;
        }
        (IPV4_HDR_LEN, pkt[9])
    };
    let udp = match proto {
        PROTO_TCP if can_tcp_gro => false,
        PROTO_UDP if can_udp_gro => true,
        _ => return None,
    };
    let l4 = &pkt[iph_len..];
    let (l4_len, seq, psh, ack) = if udp {
        if l4.len() < UDP_HDR_LEN || be16(l4, 4) as usize != l4.len() {
            return None;
        }
        (UDP_HDR_LEN, 0, false, 0)
    } else {
        if l4.len() < TCP_HDR_LEN {
            return None;
        }
        let doff = usize::from(l4[12] >> 4) * 4;
        if doff < TCP_HDR_LEN || doff > l4.len() {
            return None;
        }
        let psh = match l4[TCP_FLAGS] {
            TCP_ACK => false,
            f if f == TCP_ACK | TCP_PSH => true,
            _ => return None,
        };
        (doff, be32(l4, 4), psh, be32(l4, 8))
    };
    let payload = l4.len() - l4_len;
    if payload == 0 {
        return None;
    }
    // The addresses as whole integers: a packet's key is stored and compared in full-width
    // words (byte-wise copies into arrays cost a stall each time the key is read back).
    let word = |at: usize, n: usize| {
        let mut b = [0u8; 16];
        b[..n].copy_from_slice(&pkt[at..at + n]);
        u128::from_ne_bytes(b)
    };
    let (src, dst) = if v6 {
        (word(8, 16), word(24, 16))
    } else {
        (word(12, 4), word(16, 4))
    };
    let key = FlowKey {
        src,
        dst,
        ports: be32(l4, 0),
        ack,
        proto,
        v6,
    };
    Some(Candidate {
        key,
        iph_len,
        l4_len,
        payload,
        seq,
        psh,
        udp,
        v6,
    })
}

/// The seed's `ip_headers_can_coalesce` (TOS / traffic class, DF and TTL / hop limit),
/// plus the IPv6 flow label, which the kernel's GRO also requires to match (segments of a
/// merged packet all get the first one's label back).
fn ip_headers_match(a: &[u8], b: &[u8], v6: bool) -> bool {
    if v6 {
        a[..4] == b[..4] && a[7] == b[7]
    } else {
        a[1] == b[1] && a[6] >> 5 == b[6] >> 5 && a[8] == b[8]
    }
}

/// Whether the transport checksum of a packet verifies. Candidates have no IPv4 options
/// (`candidate`), so the addresses end where the transport header starts and one sum
/// covers both.
fn checksum_valid(pkt: &[u8], iph_len: usize, proto: u8, v6: bool) -> bool {
    checksum_valid_with(pkt, iph_len, pkt.len(), proto, v6, 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Append,
    Prepend,
    No,
}

/// Coalesces `bufs` in place for writing to a TUN device with offload and returns the
/// indices of the buffers to write, in order. `kinds`: the flows that merge, TCP and,
/// with `can_udp_gro` (a `bool`), UDP; or a [`GroKinds`] (TCP, UDP, both or neither: with
/// neither, every packet only gets its plain virtio header).
///
/// `bufs[i][offset..]` is one IP packet and the `offset >= VIRTIO_NET_HDR_LEN` bytes before
/// it are headroom. On return, for each returned index `i`, `bufs[i][offset - 10..offset]`
/// holds the packet's virtio header and `bufs[i]` ends where the packet ends. Buffers may
/// grow and entries of `bufs` may be swapped.
pub fn handle_gro<'t, B: ExpandBuffer>(
    bufs: &mut [B],
    offset: usize,
    table: &'t mut GroTable,
    kinds: impl Into<GroKinds>,
) -> Result<&'t [usize]> {
    let kinds = kinds.into();
    if offset < VIRTIO_NET_HDR_LEN {
        bail!(
            OffsetTooSmall,
            "offset {offset} leaves no room for the {VIRTIO_NET_HDR_LEN}-byte virtio header"
        );
    }
    if bufs.len() >= NONE as usize {
        bail!(TooManyBuffers, "too many buffers: {}", bufs.len());
    }
    for (i, b) in bufs.iter().enumerate() {
        let len = b.bytes().len();
        if len <= offset {
            bail!(NoPacketAfterOffset @ i, "bufs[{i}] holds {len} bytes: no packet after offset {offset}");
        }
    }
    if bufs.len() == 1 {
        // One packet never coalesces (the ACK direction of a TCP forwarder, mostly): it
        // only gets its plain virtio header, without setting up the table.
        table.to_write.clear();
        table.to_write.push(0);
        table.swapped = false;
        let plain = VirtioNetHdr::default().to_bytes();
        bufs[0].bytes_mut()[offset - VIRTIO_NET_HDR_LEN..offset].copy_from_slice(&plain);
        return Ok(&table.to_write);
    }
    plan(bufs, offset, table, kinds, false);
    if !copy(bufs, offset, table, true)? {
        plan(bufs, offset, table, kinds, true);
        copy(bufs, offset, table, false)?;
    }
    finish(bufs, offset, table);
    Ok(&table.to_write)
}

/// Links every packet of `bufs` that coalesces to its item. With `verify`, checksums are
/// checked before a packet merges (and a packet that fails is not merged); without, they
/// are taken as valid, for `copy` to check. Only the flows of `kinds` merge.
fn plan<B: ExpandBuffer>(
    bufs: &[B],
    offset: usize,
    table: &mut GroTable,
    kinds: GroKinds,
    verify: bool,
) {
    table.reset(bufs.len());
    let GroKinds { tcp, udp } = kinds;
    for i in 0..bufs.len() {
        let pkt = &bufs[i].bytes()[offset..];
        let merged = match candidate(pkt, tcp, udp) {
            Some(c) => plan_packet(bufs, offset, table, i, &c, verify),
            None => false,
        };
        if !merged {
            table.to_write.push(i);
        }
    }
}

/// Finds an item for packet `i` or makes one; true when the packet was merged.
fn plan_packet<B: ExpandBuffer>(
    bufs: &[B],
    offset: usize,
    t: &mut GroTable,
    i: usize,
    c: &Candidate,
    verify: bool,
) -> bool {
    let pkt = &bufs[i].bytes()[offset..];
    let proto = if c.udp { PROTO_UDP } else { PROTO_TCP };
    let mut pkt_csum = Csum::Unknown;
    let mut newer = NONE;
    let mut cur = match t.last {
        Some((k, item)) if k == c.key => item,
        _ => {
            let item = t.flows.get(&c.key).copied().unwrap_or(NONE);
            t.last = Some((c.key, item));
            item
        }
    };
    while cur != NONE {
        let it = t.items[cur as usize];
        let head = &bufs[it.head as usize].bytes()[offset..];
        let fit = fits(pkt, head, c, &it);
        if fit != Fit::No {
            let target = if fit == Fit::Prepend {
                i
            } else {
                it.head as usize
            };
            let total =
                usize::from(it.iph_len) + usize::from(it.l4_len) + it.payload as usize + c.payload;
            let room = total <= MAX_IP_PACKET
                && bufs[target].max_len().saturating_sub(offset) >= total
                && (!c.udp || usize::from(it.merged) + 2 <= crate::engine::gso::UDP_MAX_SEGMENTS);
            let mut item_bad = false;
            if room && !(fit == Fit::Prepend && c.psh) {
                if it.merged == 0 && it.head_csum == Csum::Unknown {
                    let ok = !verify || checksum_valid(head, c.iph_len, proto, c.v6);
                    t.items[cur as usize].head_csum = if ok { Csum::Valid } else { Csum::Invalid };
                }
                if t.items[cur as usize].head_csum == Csum::Invalid
                    && t.items[cur as usize].merged == 0
                {
                    item_bad = true;
                } else {
                    if pkt_csum == Csum::Unknown {
                        pkt_csum = if !verify || checksum_valid(pkt, c.iph_len, proto, c.v6) {
                            Csum::Valid
                        } else {
                            Csum::Invalid
                        };
                    }
                    if pkt_csum == Csum::Invalid {
                        if c.udp {
                            break; // stored as a new item known to be invalid
                        }
                        return false; // written alone
                    }
                    merge(t, cur, i, c, fit);
                    return true;
                }
            }
            if item_bad {
                // An item whose checksum fails is never merged into; it is still written.
                let prev = t.items[cur as usize].prev;
                if newer == NONE {
                    if prev == NONE {
                        t.flows.remove(&c.key);
                    } else {
                        t.flows.insert(c.key, prev);
                    }
                    t.last = Some((c.key, prev));
                } else {
                    t.items[newer as usize].prev = prev;
                }
                if c.udp {
                    break;
                }
                cur = prev;
                continue;
            }
        }
        if c.udp {
            break; // UDP only ever looks at the flow's latest item, to keep order.
        }
        newer = cur;
        cur = it.prev;
    }
    insert(t, i, c, pkt_csum);
    false
}

fn fits(pkt: &[u8], head: &[u8], c: &Candidate, it: &Item) -> Fit {
    if it.udp != c.udp || usize::from(it.l4_len) != c.l4_len {
        return Fit::No;
    }
    if !c.udp {
        // The kernel's tcp_gro_receive flushes on any difference in the TCP header word
        // at offset 12 but CWR/FIN/PSH: data offset, reserved bits and the window. (A
        // merged packet's segments all get the first one's window back.)
        let at = c.iph_len + 12;
        if pkt[at] != head[at] || pkt[at + 2..at + 4] != head[at + 2..at + 4] {
            return Fit::No;
        }
    }
    if !c.udp && c.l4_len > TCP_HDR_LEN {
        let (a, b) = (c.iph_len + TCP_HDR_LEN, c.iph_len + c.l4_len);
        if pkt[a..b] != head[a..b] {
            return Fit::No; // different TCP options
        }
    }
    if !ip_headers_match(pkt, head, c.v6) {
        return Fit::No;
    }
    let gso = usize::from(it.gso_size);
    if c.udp {
        // Nothing follows a short segment, nor a larger one a smaller.
        return if !it.short && c.payload <= gso {
            Fit::Append
        } else {
            Fit::No
        };
    }
    if c.seq == it.seq.wrapping_add(it.payload) {
        if it.psh || it.short || c.payload > gso {
            return Fit::No;
        }
        Fit::Append
    } else if c.seq.wrapping_add(c.payload as u32) == it.seq {
        if c.psh || c.payload < gso || (c.payload > gso && it.merged > 0) {
            return Fit::No;
        }
        Fit::Prepend
    } else {
        Fit::No
    }
}

fn insert(t: &mut GroTable, i: usize, c: &Candidate, csum: Csum) {
    let idx = t.items.len() as u32;
    let prev = t.flows.insert(c.key, idx).unwrap_or(NONE);
    t.last = Some((c.key, idx));
    t.items.push(Item {
        head: i as u32,
        tail: i as u32,
        prev,
        seq: c.seq,
        payload: c.payload as u32,
        gso_size: c.payload as u16,
        merged: 0,
        iph_len: c.iph_len as u8,
        l4_len: c.l4_len as u8,
        psh: c.psh,
        udp: c.udp,
        v6: c.v6,
        short: false,
        head_csum: csum,
        alone: false,
    });
    t.item_of[i] = idx;
}

fn merge(t: &mut GroTable, item: u32, i: usize, c: &Candidate, fit: Fit) {
    let it = &mut t.items[item as usize];
    if fit == Fit::Prepend {
        t.next[i] = it.head;
        it.head = i as u32;
        it.seq = c.seq;
    } else {
        t.next[it.tail as usize] = i as u32;
        it.tail = i as u32;
        it.psh |= c.psh;
    }
    // An append is never larger than gso_size and a prepend never smaller (`fits`): a
    // smaller append leaves a short end; a larger prepend (only onto one segment) makes
    // the old segment the short one.
    let gso = usize::from(it.gso_size);
    it.short |= match fit {
        Fit::Prepend => c.payload > gso,
        _ => c.payload < gso,
    };
    it.payload += c.payload as u32;
    it.gso_size = it.gso_size.max(c.payload as u16);
    it.merged += 1;
    debug_assert_eq!(it.short, it.payload % u32::from(it.gso_size) != 0);
}

/// Mutable `bufs[dst]` and shared `bufs[src]`, `dst != src`.
fn pair<B>(bufs: &mut [B], dst: usize, src: usize) -> (&mut B, &B) {
    if dst < src {
        let (a, b) = bufs.split_at_mut(src);
        (&mut a[dst], &b[0])
    } else {
        let (a, b) = bufs.split_at_mut(dst);
        (&mut b[0], &a[src])
    }
}

/// [`checksum_valid`] for a packet whose bytes from `hdrs` on (its payload) are already
/// summed to `rest_sum`.
#[inline(always)]
fn checksum_valid_with(
    pkt: &[u8],
    iph: usize,
    hdrs: usize,
    proto: u8,
    v6: bool,
    rest_sum: u16,
) -> bool {
    let at = if v6 { 8 } else { 12 };
    let len = u64::from((pkt.len() - iph) as u16);
    // Addresses and transport header, then the rest: both start at even offsets, so the
    // sums add up as one over the whole.
    let head = u64::from(checksum::sum(&pkt[at..hdrs]));
    checksum::fold(head + u64::from(rest_sum) + u64::from(proto) + len) == 0xffff
}

/// Grows each merged item's head to its final length and appends its segments' payloads.
/// With `verify`, checks the checksum of every packet of those items on the way (the
/// others' payloads are summed as they are copied) and, on the first that fails, cuts
/// the heads grown so far back to their own packets and returns false.
fn copy<B: ExpandBuffer>(
    bufs: &mut [B],
    offset: usize,
    t: &mut GroTable,
    verify: bool,
) -> Result<bool> {
    let ok = copy_payloads(bufs, offset, t, verify);
    if !ok {
        for &(head, len) in t.grown.iter().rev() {
            bufs[head].resize(len)?;
        }
        t.grown.clear();
    }
    Ok(ok)
}

fn copy_payloads<B: ExpandBuffer>(
    bufs: &mut [B],
    offset: usize,
    t: &mut GroTable,
    verify: bool,
) -> bool {
    for k in 0..t.to_write.len() {
        let idx = t.item_of[t.to_write[k]];
        if idx == NONE || t.items[idx as usize].merged == 0 {
            continue;
        }
        let it = t.items[idx as usize];
        let head = it.head as usize;
        let hdrs = usize::from(it.iph_len) + usize::from(it.l4_len);
        let total = hdrs + it.payload as usize;
        let proto = if it.udp { PROTO_UDP } else { PROTO_TCP };
        let iph = usize::from(it.iph_len);
        let mut at = bufs[head].bytes().len();
        if verify && !checksum_valid(&bufs[head].bytes()[offset..], iph, proto, it.v6) {
            return false;
        }
        if bufs[head].resize(offset + total).is_err() {
            // The head could not grow after all (a Python bytearray that something else
            // exports): `finish` writes its segments as they are, each alone.
            t.items[idx as usize].alone = true;
            let mut seg = t.next[head];
            while verify && seg != NONE {
                let pkt = &bufs[seg as usize].bytes()[offset..];
                if !checksum_valid(pkt, iph, proto, it.v6) {
                    return false;
                }
                seg = t.next[seg as usize];
            }
            continue;
        }
        if verify {
            t.grown.push((head, at)); // to cut back if a checksum fails
        }
        let mut seg = t.next[head];
        while seg != NONE {
            let (dst, src) = pair(bufs, head, seg as usize);
            let pkt = &src.bytes()[offset..];
            let data = &pkt[hdrs..];
            let dst = &mut dst.bytes_mut()[at..at + data.len()];
            if verify {
                let sum = checksum::copy_and_sum(dst, data);
                if !checksum_valid_with(pkt, iph, hdrs, proto, it.v6, sum) {
                    return false;
                }
            } else {
                dst.copy_from_slice(data);
            }
            at += data.len();
            seg = t.next[seg as usize];
        }
    }
    true
}

/// Writes each merged item's headers (lengths, checksums, virtio header) and every other
/// packet's plain virtio header, and puts each written buffer in the slot its first
/// packet arrived in.
fn finish<B: ExpandBuffer>(bufs: &mut [B], offset: usize, t: &mut GroTable) {
    let vnet = offset - VIRTIO_NET_HDR_LEN;
    let plain = VirtioNetHdr::default().to_bytes();
    let mut k = 0;
    // Whether a split-up item put later slots among `to_write`'s (see below).
    let mut unsorted = false;
    while k < t.to_write.len() {
        let slot = t.to_write[k];
        k += 1;
        let idx = t.item_of[slot];
        if idx == NONE || t.items[idx as usize].merged == 0 {
            bufs[slot].bytes_mut()[vnet..offset].copy_from_slice(&plain);
            continue;
        }
        let it = t.items[idx as usize];
        let head = it.head as usize;
        let hdrs = usize::from(it.iph_len) + usize::from(it.l4_len);
        let total = hdrs + it.payload as usize;
        if it.alone {
            // Like a merged item, the segments keep the batch's order: in sequence order,
            // they move into the slots their packets arrived in (a prepended one came
            // later).
            let mut at = Vec::new(); // at[j]: where the j-th segment's buffer is now
            let mut seg = it.head;
            while seg != NONE {
                at.push(seg as usize);
                seg = t.next[seg as usize];
            }
            let mut slots = at.clone();
            slots.sort_unstable();
            for j in 0..at.len() {
                let (from, to) = (at[j], slots[j]);
                if from != to {
                    bufs.swap(from, to);
                    t.swapped = true;
                    // The buffer that was at `to` is a later segment's: it is now at `from`.
                    if let Some(p) = at[j + 1..].iter().position(|&x| x == to) {
                        at[j + 1 + p] = from;
                    }
                }
                bufs[to].bytes_mut()[vnet..offset].copy_from_slice(&plain);
            }
            let added = slots.len() - 1;
            t.to_write.splice(k - 1..k, slots);
            k += added;
            unsorted = true;
            continue;
        }
        let buf = bufs[head].bytes_mut();
        let (hdr, pkt) = buf.split_at_mut(offset);
        let iph = usize::from(it.iph_len);
        let l4_len = (total - iph) as u16;
        let (proto, gso_type, csum_off) = match (it.udp, it.v6) {
            (true, _) => (PROTO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4, UDP_CSUM),
            (false, false) => (PROTO_TCP, VIRTIO_NET_HDR_GSO_TCPV4, TCP_CSUM),
            (false, true) => (PROTO_TCP, VIRTIO_NET_HDR_GSO_TCPV6, TCP_CSUM),
        };
        if it.v6 {
            put16(pkt, 4, l4_len);
        } else {
            put16(pkt, 2, total as u16);
            let c = checksum::ipv4_header_checksum(&pkt[..iph]);
            put16(pkt, 10, c);
        }
        if it.udp {
            put16(pkt, iph + 4, l4_len);
        } else if it.psh {
            pkt[iph + TCP_FLAGS] |= TCP_PSH;
        }
        let (at, n) = if it.v6 { (8, 16) } else { (12, 4) };
        let pseudo =
            checksum::pseudo_header(proto, &pkt[at..at + n], &pkt[at + n..at + 2 * n], l4_len);
        put16(pkt, iph + csum_off, pseudo);
        let vh = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: hdrs as u16,
            gso_size: it.gso_size,
            csum_start: iph as u16,
            csum_offset: csum_off as u16,
        };
        hdr[vnet..].copy_from_slice(&vh.to_bytes());
        if head != slot {
            bufs.swap(head, slot);
            t.swapped = true;
        }
    }
    if unsorted {
        t.to_write.sort_unstable();
    }
}

/// The multiply-rotate hash of Firefox and rustc: fast for small fixed-size keys.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        if !rest.is_empty() {
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testutil::{build, Spec};
    use crate::engine::{gso_split, ErrorKind};

    const OFF: usize = 12;

    fn seg(spec: &Spec, i: u32, len: usize) -> Spec {
        Spec {
            seq: spec.seq + i * len as u32,
            payload: vec![i as u8; len],
            ..spec.clone()
        }
    }

    fn bufs(specs: &[Spec]) -> Vec<Vec<u8>> {
        specs
            .iter()
            .map(|s| [vec![0xee; OFF], build(s, false)].concat())
            .collect()
    }

    fn run(b: &mut [Vec<u8>]) -> Vec<usize> {
        let mut t = GroTable::new();
        handle_gro(b, OFF, &mut t, true).unwrap().to_vec()
    }

    #[test]
    fn in_order_flow_coalesces_and_splits_back() {
        for (v6, udp) in [(false, false), (true, false), (false, true), (true, true)] {
            let base = Spec {
                v6,
                udp,
                ..Spec::default()
            };
            let specs: Vec<Spec> = (0..45).map(|i| seg(&base, i, 1400)).collect();
            let mut b = bufs(&specs);
            let originals: Vec<Vec<u8>> = b.iter().map(|x| x[OFF..].to_vec()).collect();
            let w = run(&mut b);
            assert_eq!(w, vec![0], "v6={v6} udp={udp}");
            let hdr = VirtioNetHdr::decode(&b[0][OFF - 10..]).unwrap();
            assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
            assert_eq!(hdr.gso_size, 1400);
            let mut outs = vec![vec![0u8; 1500]; 64];
            let mut sizes = [0; 64];
            let n = gso_split(&b[0][OFF..], &hdr, &mut outs, &mut sizes, 0, None).unwrap();
            assert_eq!(n, 45);
            for i in 0..n {
                let mut want = originals[i].clone();
                let mut got = outs[i][..sizes[i]].to_vec();
                if !v6 {
                    // The kernel's segmentation numbers IDs from the first packet's.
                    for p in [&mut want, &mut got] {
                        p[4..6].fill(0);
                        p[10..12].fill(0);
                    }
                }
                assert_eq!(got, want, "segment {i}");
            }
        }
    }

    #[test]
    fn kinds_switch_tcp_and_udp_coalescing_apart() {
        // (kinds, what a batch of 3 TCP then 3 UDP segments of one flow each becomes)
        let all = GroKinds {
            tcp: true,
            udp: true,
        };
        let cases = [
            (all, vec![0, 3]),
            (GroKinds { udp: false, ..all }, vec![0, 3, 4, 5]),
            (GroKinds { tcp: false, ..all }, vec![0, 1, 2, 3]),
            (GroKinds::tcp_and(false), vec![0, 3, 4, 5]),
            (
                GroKinds {
                    tcp: false,
                    udp: false,
                },
                vec![0, 1, 2, 3, 4, 5],
            ),
        ];
        let (tcp, udp) = (
            Spec::default(),
            Spec {
                udp: true,
                ..Spec::default()
            },
        );
        for (kinds, want) in cases {
            let specs: Vec<Spec> = (0..3)
                .map(|i| seg(&tcp, i, 100))
                .chain((0..3).map(|i| seg(&udp, i, 100)))
                .collect();
            let mut b = bufs(&specs);
            let mut t = GroTable::new();
            let w = handle_gro(&mut b, OFF, &mut t, kinds).unwrap().to_vec();
            assert_eq!(w, want, "{kinds:?}");
            for &i in &w {
                let hdr = VirtioNetHdr::decode(&b[i][OFF - 10..]).unwrap();
                let merged = b[i].len() > OFF + 200;
                assert_eq!(
                    hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE,
                    merged,
                    "{kinds:?} {i}"
                );
            }
            assert_eq!(kinds.any(), w.len() < 6);
        }
    }

    #[test]
    fn refusals() {
        let base = Spec::default();
        let a = seg(&base, 0, 100);
        let b = seg(&base, 1, 100);
        type Mutate = fn(&mut Spec);
        let cases: &[(&str, Mutate)] = &[
            ("ttl", |s| s.ttl = 1),
            ("tos", |s| s.tos = 4),
            ("df", |s| s.df = false),
            ("ack", |s| s.ack = 99),
            ("options", |s| s.tcp_opts = vec![1, 1, 1, 1]),
            ("syn", |s| s.flags = TCP_ACK | 0x02),
            ("fin", |s| s.flags = TCP_ACK | TCP_FIN),
            ("urg", |s| s.flags = TCP_ACK | 0x20),
            ("no ack", |s| s.flags = TCP_PSH),
            ("gap", |s| s.seq += 1),
            ("overlap", |s| s.seq -= 1),
            ("larger after smaller", |s| s.payload = vec![1; 101]),
            ("port", |s| s.sport = 9),
            ("window", |s| s.window = 1000),
        ];
        for (name, mutate) in cases {
            let mut b2 = b.clone();
            mutate(&mut b2);
            let mut x = bufs(&[a.clone(), b2]);
            assert_eq!(run(&mut x), vec![0, 1], "{name}");
        }
        // PSH ends a run: a segment after a PSH one starts a new packet.
        let p = Spec {
            flags: TCP_ACK | TCP_PSH,
            ..a.clone()
        };
        let mut x = bufs(&[p, b.clone()]);
        assert_eq!(run(&mut x), vec![0, 1]);
        // Bad checksums.
        let mut x = bufs(&[a.clone(), b.clone()]);
        x[1][OFF + 50] ^= 1;
        assert_eq!(run(&mut x), vec![0, 1]);
        let mut x = bufs(&[a.clone(), b.clone()]);
        x[0][OFF + 50] ^= 1;
        assert_eq!(run(&mut x), vec![0, 1]);
        // Sanity: unchanged, they merge.
        let mut x = bufs(&[a.clone(), b.clone()]);
        assert_eq!(run(&mut x), vec![0]);
    }

    #[test]
    fn prepend_and_swap() {
        let base = Spec::default();
        let (a, b, c) = (seg(&base, 0, 100), seg(&base, 1, 100), seg(&base, 2, 100));
        let mut x = bufs(&[b.clone(), a.clone(), c.clone()]);
        let want_a = build(&a, false);
        assert_eq!(run(&mut x), vec![0]);
        let pkt = &x[0][OFF..];
        assert_eq!(pkt.len(), 40 + 300);
        assert_eq!(be32(pkt, 24), a.seq);
        assert_eq!(&pkt[40..140], &want_a[40..]);
        assert_eq!(&pkt[140..240], &[1u8; 100][..]);
        assert_eq!(&pkt[240..], &[2u8; 100][..]);
    }

    #[test]
    fn never_exceeds_65535() {
        let base = Spec::default();
        let specs: Vec<Spec> = (0..60).map(|i| seg(&base, i, 1448)).collect();
        let mut b = bufs(&specs);
        let w = run(&mut b);
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|&i| b[i].len() - OFF <= 65535));
    }

    #[test]
    fn bad_arguments_change_nothing() {
        use crate::engine::ErrorKind::*;
        type Mutate = fn(&mut Vec<Vec<u8>>);
        // (name, offset, how the two good buffers are spoiled, kind, index)
        let cases: &[(&str, usize, Mutate, ErrorKind, Option<usize>)] = &[
            ("offset 9", 9, |_| {}, OffsetTooSmall, None),
            ("offset 0", 0, |_| {}, OffsetTooSmall, None),
            (
                "headroom only",
                OFF,
                |b| b[1].truncate(OFF),
                NoPacketAfterOffset,
                Some(1),
            ),
            (
                "empty buffer",
                OFF,
                |b| b[0].clear(),
                NoPacketAfterOffset,
                Some(0),
            ),
            ("offset beyond", 200, |_| {}, NoPacketAfterOffset, Some(0)),
        ];
        for &(name, offset, mutate, kind, index) in cases {
            let mut b = bufs(&[Spec::default(), seg(&Spec::default(), 1, 100)]);
            mutate(&mut b);
            let before = b.clone();
            let mut t = GroTable::new();
            let e = handle_gro(&mut b, offset, &mut t, true).expect_err(name);
            assert_eq!((e.kind(), e.index()), (kind, index), "{name}: {e}");
            assert_eq!(b, before, "{name}: changed the buffers");
        }
    }

    #[test]
    fn a_fixed_buffer_that_must_grow_is_refused() {
        let mut raw = [0u8; 4];
        let mut b: &mut [u8] = &mut raw;
        assert!(ExpandBuffer::resize(&mut b, 4).is_ok());
        let e = ExpandBuffer::resize(&mut b, 5).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BufferCannotGrow);
    }

    /// A growable buffer whose growth fails when it is asked (a Python bytearray that
    /// something else exports): `max_len` promises room that `resize` then refuses.
    #[derive(Debug, Clone, PartialEq)]
    struct Stuck(Vec<u8>);

    impl ExpandBuffer for Stuck {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn max_len(&self) -> usize {
            usize::MAX
        }
        fn resize(&mut self, new_len: usize) -> Result<()> {
            if new_len != self.0.len() {
                bail!(BufferCannotGrow, "exported");
            }
            Ok(())
        }
    }

    /// `handle_gro` as the seed runs it: every checksum checked before its packet merges.
    fn verify_first<B: ExpandBuffer>(b: &mut [B], t: &mut GroTable) -> Vec<usize> {
        plan(b, OFF, t, GroKinds::tcp_and(true), true);
        assert!(copy(b, OFF, t, false).unwrap());
        finish(b, OFF, t);
        t.to_write.clone()
    }

    /// Random batches of a few flows, in order or not, some packets corrupted (payload,
    /// transport header or addresses): checking checksums while copying gives the same
    /// writes, bytes and swaps as checking them first, with growable buffers and with
    /// heads that cannot grow.
    #[test]
    fn checking_in_the_copy_gives_what_checking_first_gives() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let (mut corrupt_runs, mut merged_runs) = (0, 0);
        for round in 0..600 {
            let (v6, udp) = (next(2) == 0, next(3) == 0);
            let len = 1 + next(300) as usize;
            let mut specs = Vec::new();
            for flow in 0..1 + next(3) as u16 {
                let base = Spec {
                    v6,
                    udp,
                    sport: 1000 + flow,
                    ..Spec::default()
                };
                for i in 0..next(12) as u32 {
                    specs.push(seg(&base, i, len));
                }
            }
            for _ in 0..next(3) {
                if specs.len() > 1 {
                    let (i, j) = (next(specs.len() as u64), next(specs.len() as u64));
                    specs.swap(i as usize, j as usize);
                }
            }
            let mut fresh = bufs(&specs);
            let corrupt = next(3) != 0 && !fresh.is_empty();
            if corrupt {
                for _ in 0..1 + next(2) {
                    let k = next(fresh.len() as u64) as usize;
                    let at = OFF + [12, 21, 30, 45, 60][next(5) as usize];
                    let at = at.min(fresh[k].len() - 1);
                    fresh[k][at] ^= 1 << next(8);
                }
            }
            if fresh.len() < 2 {
                continue;
            }
            let (mut got, mut want) = (fresh.clone(), fresh.clone());
            let mut t = GroTable::new();
            let w = handle_gro(&mut got, OFF, &mut t, true).unwrap().to_vec();
            let swapped = t.swapped();
            let mut t2 = GroTable::new();
            assert_eq!(w, verify_first(&mut want, &mut t2), "round {round}");
            assert_eq!(got, want, "round {round}");
            assert_eq!(swapped, t2.swapped(), "round {round}");
            corrupt_runs += usize::from(corrupt);
            merged_runs += usize::from(w.len() < fresh.len());

            let mut got: Vec<Stuck> = fresh.iter().cloned().map(Stuck).collect();
            let mut want: Vec<Stuck> = fresh.iter().cloned().map(Stuck).collect();
            let w = handle_gro(&mut got, OFF, &mut t, true).unwrap().to_vec();
            assert_eq!(w, verify_first(&mut want, &mut t2), "stuck, round {round}");
            let (g, x): (Vec<_>, Vec<_>) = (
                got.iter().map(|b| &b.0).collect(),
                want.iter().map(|b| &b.0).collect(),
            );
            assert_eq!(g, x, "stuck, round {round}");
        }
        assert!(
            corrupt_runs > 100 && merged_runs > 100,
            "{corrupt_runs} {merged_runs}"
        );
    }

    #[test]
    fn a_head_that_cannot_grow_is_written_as_its_segments_in_order() {
        let base = Spec::default();
        let (a, b, c) = (seg(&base, 0, 100), seg(&base, 1, 100), seg(&base, 2, 100));
        let other = Spec {
            sport: 9,
            ..seg(&base, 0, 100)
        };
        // b, other flow, c, then a (prepended to b's item): a, b, c end in slots 0, 2, 3.
        let specs = [b.clone(), other.clone(), c.clone(), a.clone()];
        let mut x: Vec<Stuck> = bufs(&specs).into_iter().map(Stuck).collect();
        let mut t = GroTable::new();
        let w = handle_gro(&mut x, OFF, &mut t, true).unwrap().to_vec();
        assert_eq!(w, vec![0, 1, 2, 3]);
        assert!(t.swapped());
        let plain = VirtioNetHdr::default().to_bytes();
        for (slot, spec) in [(0, &a), (1, &other), (2, &b), (3, &c)] {
            let buf = &x[slot].0;
            assert_eq!(&buf[OFF - 10..OFF], &plain[..], "slot {slot}");
            assert_eq!(&buf[OFF..], &build(spec, false)[..], "slot {slot}");
        }
    }

    #[test]
    fn fixed_buffers_are_never_grown() {
        let base = Spec::default();
        let mut raw = bufs(&[seg(&base, 0, 100), seg(&base, 1, 100)]);
        let (x, y) = raw.split_at_mut(1);
        let mut b: Vec<&mut [u8]> = vec![&mut x[0][..], &mut y[0][..]];
        let mut t = GroTable::new();
        assert_eq!(handle_gro(&mut b, OFF, &mut t, true).unwrap(), &[0, 1]);
    }
}
