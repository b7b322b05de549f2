//! The fuzz harness of the WireGuard device (target `wireguard_device`).
//!
//! Two `Device`s, `a` and `b`, peers of each other, start with a real session (a real
//! handshake). The input is a program of operations on them: batches of datagrams (real
//! messages, mutated ones, raw bytes) into `decrypt` and `handle_control` of either side,
//! packets into `encrypt`, time passing with `tick` (whose output is delivered to the
//! other side), and configuration changes. See [`device`] for the format.
//!
//! Invariants, checked with bookkeeping of its own (not the device's counters):
//! - nothing panics;
//! - every packet a side decrypts is an IP packet the other side sealed, from that side's
//!   address, byte for byte (trimmed to its IP length), and each sealed packet comes out
//!   at most once (no replay, no forgery, no cross-peer leak);
//! - a decrypted batch is at most as long as the input; every message handed to the
//!   control path is a handshake message of its exact size;
//! - whatever the device sends is a handshake message of its exact size or a transport
//!   message of at least 32 bytes, to the peer's endpoint or the sender of the message it
//!   answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tunoffload::wireguard::messages::{control_type, message_type, MESSAGE_TRANSPORT};
use tunoffload::wireguard::{Datagram, Device, DeviceConfig, Encrypted, IpNet, PeerLine};

const HEADER: usize = 16;
const MAX_OPS: usize = 64;
const MAX_BATCH: usize = 16;

/// One side: the device, its endpoint, its tunnel address.
struct Side {
    dev: Device,
    public: [u8; 32],
    endpoint: SocketAddr,
    ip: [u8; 4],
}

fn side(seed: u8, endpoint: &str, ip: [u8; 4]) -> Side {
    let dev = Device::new(DeviceConfig::default());
    let mut private = [seed; 32];
    private[0] &= 248;
    private[31] = (private[31] & 127) | 64;
    dev.set_private_key(&private, Instant::now());
    Side {
        public: dev.public_key().unwrap(),
        dev,
        endpoint: endpoint.parse().unwrap(),
        ip,
    }
}

/// An IPv4 packet `src -> dst` with `payload`.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// The IP packet at the start of `p`, trimmed to its header's length (the rule the
/// receiver applies), if it is one.
fn ip_trimmed(p: &[u8]) -> Option<&[u8]> {
    let be = |at: usize| usize::from(p[at]) << 8 | usize::from(p[at + 1]);
    let n = match p.first()? >> 4 {
        4 if p.len() >= 20
            && (usize::from(p[0] & 15) * 4..=p.len()).contains(&be(2))
            && p[0] & 15 >= 5 =>
        {
            be(2)
        }
        6 if p.len() >= 40 && be(4) + 40 <= p.len() => be(4) + 40,
        _ => return None,
    };
    Some(&p[..n])
}

/// Checks what a device sends.
fn check_out(out: &[Datagram]) {
    for (d, _) in out {
        let ok = control_type(d).is_some()
            || (message_type(d) == Some(MESSAGE_TRANSPORT) && d.len() >= 32);
        assert!(ok, "sent a malformed message of {} bytes", d.len());
    }
}

/// The test's state: the two sides, time, the packets each side sealed and not yet seen
/// opened (a multiset), and real messages to replay and mutate.
struct World {
    sides: [Side; 2],
    now: Instant,
    sealed: [HashMap<Vec<u8>, usize>; 2],
    pool: Vec<Vec<u8>>,
}

impl World {
    fn new() -> World {
        let a = side(1, "192.0.2.1:51820", [10, 9, 0, 1]);
        let b = side(2, "192.0.2.2:51820", [10, 9, 0, 2]);
        for (x, y) in [(&a, &b), (&b, &a)] {
            let lines = [
                PeerLine::Endpoint(y.endpoint),
                PeerLine::AllowedIp(IpNet::new(y.ip.into(), 32).unwrap()),
            ];
            x.dev.set_peer(&y.public, &lines, Instant::now()).unwrap();
        }
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut w = World {
            sides: [a, b],
            now: t0,
            sealed: [HashMap::new(), HashMap::new()],
            pool: Vec::new(),
        };
        // A real session, a -> b, and its messages in the pool.
        w.encrypt(0, &[ipv4([10, 9, 0, 1], [10, 9, 0, 2], b"hello")]);
        let out = w.sides[0].dev.tick(t0);
        w.deliver(0, out);
        w
    }

    /// Seals `packets` at side `s`; remembers what the other side may open.
    fn encrypt(&mut self, s: usize, packets: &[Vec<u8>]) {
        let mut bufs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| [&[0u8; HEADER][..], p].concat())
            .collect();
        let mut sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
        let side = &self.sides[s];
        let r = match side.dev.encrypt(&mut bufs, HEADER, &mut sizes, self.now) {
            Ok(r) => r,
            // Packets for more than one peer (or not IP) in one batch: nothing sealed.
            Err(e) if e.kind() == tunoffload::engine::ErrorKind::MixedPeers => return,
            Err(e) => panic!("encrypt: {e}"),
        };
        // Packets sealed now or staged (sealed later) may come out at the other side.
        if !matches!(r, Encrypted::NoRoute) {
            for p in packets {
                if let Some(t) = ip_trimmed(p) {
                    if t[12..16] == side.ip {
                        *self.sealed[s].entry(t.to_vec()).or_default() += 1;
                    }
                }
            }
        }
        if let Encrypted::Send { count, .. } = r {
            assert_eq!(count, packets.len());
            for i in 0..count {
                assert!(sizes[i] >= 32);
                self.pool.push(bufs[i][..sizes[i]].to_vec());
            }
        }
    }

    /// Side `s` receives `dgrams` (from the other side's endpoint) at `offset` in one
    /// batch; the control messages go to `handle_control`; what that sends is delivered
    /// back (bounded).
    fn receive(&mut self, s: usize, dgrams: Vec<Vec<u8>>, offset: usize, depth: usize) {
        let n = dgrams.len();
        let from = self.sides[1 - s].endpoint;
        let mut bufs: Vec<Vec<u8>> = dgrams
            .iter()
            .map(|d| [&vec![0xa5; offset][..], d].concat())
            .collect();
        let mut sizes: Vec<usize> = dgrams.iter().map(Vec::len).collect();
        let mut sources = vec![Some(from); n];
        let d = self.sides[s]
            .dev
            .decrypt(&mut bufs, offset, &mut sizes, &mut sources, self.now)
            .unwrap();
        assert!(d.packets + d.control <= n);
        for i in 0..d.packets {
            let p = &bufs[i][offset + HEADER..offset + HEADER + sizes[i]];
            let left = self.sealed[1 - s].get_mut(p);
            assert!(
                left.as_ref().is_some_and(|c| **c > 0),
                "side {s} opened a packet the other side did not seal (or opened it twice)"
            );
            *left.unwrap() -= 1;
        }
        let mut replies = Vec::new();
        for i in d.packets..d.packets + d.control {
            let msg = bufs[i][offset..offset + sizes[i]].to_vec();
            assert!(
                control_type(&msg).is_some(),
                "a non-handshake message as control"
            );
            assert_eq!(sources[i], Some(from));
            let out = self.sides[s].dev.handle_control(&msg, from, self.now);
            check_out(&out);
            replies.extend(out);
        }
        if depth < 4 {
            self.deliver_at(s, replies, depth + 1);
        }
    }

    /// Delivers what side `s` sent to the other side.
    fn deliver(&mut self, s: usize, out: Vec<Datagram>) {
        self.deliver_at(s, out, 0);
    }

    fn deliver_at(&mut self, s: usize, out: Vec<Datagram>, depth: usize) {
        check_out(&out);
        if out.is_empty() {
            return;
        }
        for (d, _) in &out {
            self.pool.push(d.clone());
        }
        self.receive(1 - s, out.into_iter().map(|(d, _)| d).collect(), 0, depth);
    }
}

/// The input's next byte, 0 once it runs out.
fn b(it: &mut std::slice::Iter<'_, u8>) -> u8 {
    it.next().copied().unwrap_or(0)
}

fn u16le(it: &mut std::slice::Iter<'_, u8>) -> u16 {
    u16::from_le_bytes([b(it), b(it)])
}

/// One datagram the input describes: raw bytes, a real message, or a mutated one.
fn datagram(it: &mut std::slice::Iter<'_, u8>, pool: &[Vec<u8>]) -> Vec<u8> {
    let tag = b(it);
    if tag & 3 == 0 || pool.is_empty() {
        let n = usize::from(b(it));
        return (0..n).map(|_| b(it)).collect();
    }
    let mut m = pool[usize::from(b(it)) % pool.len()].clone();
    match tag & 3 {
        1 => {}
        2 => {
            let at = usize::from(u16le(it));
            if !m.is_empty() {
                let n = m.len();
                m[at / 8 % n] ^= 1 << (at % 8);
            }
        }
        _ => {
            let at = usize::from(u16le(it));
            if tag & 4 != 0 {
                m.truncate(at % (m.len() + 1));
            } else {
                m.extend((0..at % 32).map(|_| b(it)));
            }
        }
    }
    m
}

/// Fuzz body for `wireguard_device`.
///
/// Input: up to 64 operations, each an op byte then its arguments (input that runs out
/// reads as zeros). `op & 1` picks the side (0: `a`, 1: `b`); `op >> 1 & 7`:
/// - 0: a batch into `decrypt` (count u8 % 16 + 1, offset by `op >> 4 & 3` * 8, then
///   each datagram: a tag byte; `tag & 3 == 0`: raw (length u8 and bytes); 1: a real
///   message from the pool (index u8); 2: one with a bit flipped (u16 LE position);
///   3: one cut short (`tag & 4`) or extended with up to 31 bytes (u16 LE).
/// - 1: one datagram (as above) into `handle_control`.
/// - 2: a batch of packets into `encrypt` (count u8 % 8 + 1; each: a kind byte (0: to
///   the peer from our address, 1: from another address, 2: to nowhere, 3: raw bytes),
///   then a payload length u8 and its bytes).
/// - 3: time passes (u16 LE milliseconds, times 1000 if `op & 16`), both sides tick and
///   what they send is delivered.
/// - 4: configuration: by an argument byte, force under load on or off, persistent
///   keepalive (u8 seconds), the padding MTU (u16 LE), or the peer's endpoint to a new
///   address.
/// - 5..=7: a real message from the pool delivered as is (index u8).
pub fn device(data: &[u8]) {
    let mut w = World::new();
    let it = &mut data.iter();
    for _ in 0..MAX_OPS {
        let Some(&op) = it.next() else { break };
        let s = usize::from(op & 1);
        match op >> 1 & 7 {
            0 => {
                let n = usize::from(b(it)) % MAX_BATCH + 1;
                let offset = usize::from(op >> 4 & 3) * 8;
                let dgrams: Vec<Vec<u8>> = (0..n).map(|_| datagram(it, &w.pool)).collect();
                w.receive(s, dgrams, offset, 0);
            }
            1 => {
                let d = datagram(it, &w.pool);
                let from = w.sides[1 - s].endpoint;
                let out = w.sides[s].dev.handle_control(&d, from, w.now);
                w.deliver(s, out);
            }
            2 => {
                let n = usize::from(b(it)) % 8 + 1;
                let (me, peer) = (w.sides[s].ip, w.sides[1 - s].ip);
                let packets: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        let kind = b(it) % 4;
                        let len = usize::from(b(it));
                        let payload: Vec<u8> = (0..len).map(|_| b(it)).collect();
                        match kind {
                            0 => ipv4(me, peer, &payload),
                            1 => ipv4([10, 9, 9, 9], peer, &payload),
                            2 => ipv4(me, [192, 0, 2, 200], &payload),
                            _ => payload,
                        }
                    })
                    .collect();
                w.encrypt(s, &packets);
            }
            3 => {
                let ms = u64::from(u16le(it)) * if op & 16 != 0 { 1000 } else { 1 };
                w.now += Duration::from_millis(ms);
                for x in 0..2 {
                    let out = w.sides[x].dev.tick(w.now);
                    w.deliver(x, out);
                }
            }
            4 => {
                let arg = b(it);
                let dev = &w.sides[s].dev;
                let peer = w.sides[1 - s].public;
                match arg % 4 {
                    0 => dev.set_force_under_load(arg & 4 != 0),
                    1 => {
                        let secs = u16::from(b(it));
                        dev.set_peer(&peer, &[PeerLine::PersistentKeepalive(secs)], w.now)
                            .unwrap();
                    }
                    2 => dev.set_mtu(Some(usize::from(u16le(it)))),
                    _ => {
                        let port = u16le(it);
                        let ep = SocketAddr::from(([192, 0, 2, 3], port));
                        dev.set_peer(&peer, &[PeerLine::Endpoint(ep)], w.now)
                            .unwrap();
                    }
                }
            }
            _ => {
                if !w.pool.is_empty() {
                    let m = w.pool[usize::from(b(it)) % w.pool.len()].clone();
                    w.receive(s, vec![m], 0, 0);
                }
            }
        }
    }
}
