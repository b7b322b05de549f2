//! Tests of the whole: two [`Device`]s in memory (`device.rs`), the timers on a fake
//! clock (`timers.rs`), against boringtun (`against_boringtun.rs`), arbitrary input
//! (`garbage.rs`). Nothing here touches a network: datagrams are byte vectors handed
//! from one device to the other, and addresses are labels.

mod against_boringtun;
mod batch;
mod device;
mod garbage;
mod threads;
mod timers;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::messages::control_type;
use super::*;
use crate::aead::HEADER_LEN;

/// Wall-clock time that follows the monotonic `now` from a fixed start, so tests that
/// jump minutes ahead have TAI64N timestamps that move with them.
pub(crate) struct FakeClock {
    base: Instant,
    wall: SystemTime,
}

impl Clock for FakeClock {
    fn wall(&self, now: Instant) -> SystemTime {
        self.wall + now.saturating_duration_since(self.base)
    }
}

/// A private key from a seed byte, and its public key.
pub(crate) fn keys(seed: u8) -> ([u8; 32], [u8; 32]) {
    let private = super::crypto::clamp([seed; 32]);
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private));
    (private, public.to_bytes())
}

/// An IPv4 packet `src -> dst` with `payload`, its total length right (the checksum is
/// not looked at here).
pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let len = (20 + payload.len()) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet `src -> dst` with `payload`.
pub(crate) fn ipv6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(crate) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// One side of a test: a device, its endpoint address, its tunnel address.
pub(crate) struct Side {
    pub dev: Device,
    pub public: [u8; 32],
    pub endpoint: SocketAddr,
    pub ip: [u8; 4],
}

/// The offset packets are read at (room for the header in front).
pub(crate) const OFF: usize = HEADER_LEN;

impl Side {
    pub fn new(seed: u8, endpoint: &str, ip: [u8; 4], timing: Timing, t0: Instant) -> Side {
        let config = DeviceConfig {
            timing,
            ..DeviceConfig::default()
        };
        let clock = FakeClock {
            base: t0,
            wall: UNIX_EPOCH + Duration::from_secs(1_750_000_000),
        };
        let dev = Device::with_clock(config, Arc::new(clock));
        let (private, public) = keys(seed);
        dev.set_private_key(&private, t0);
        Side {
            dev,
            public,
            endpoint: addr(endpoint),
            ip,
        }
    }

    /// Makes `other` a peer of this side (its /32, its endpoint if `with_endpoint`).
    pub fn add_peer(&self, other: &Side, with_endpoint: bool, psk: Option<[u8; 32]>, now: Instant) {
        let mut lines = vec![PeerLine::AllowedIp(
            IpNet::new(IpAddr::from(other.ip), 32).unwrap(),
        )];
        if with_endpoint {
            lines.push(PeerLine::Endpoint(other.endpoint));
        }
        if let Some(k) = psk {
            lines.push(PeerLine::PresharedKey(k));
        }
        self.dev.set_peer(&other.public, &lines, now).unwrap();
    }

    /// Encrypts packets as one batch; returns the result and the messages (if sent).
    pub fn send(&self, packets: &[Vec<u8>], now: Instant) -> (Encrypted, Vec<Vec<u8>>) {
        let mut bufs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| [vec![0xee; OFF], p.clone()].concat())
            .collect();
        let mut sizes: Vec<usize> = packets.iter().map(|p| p.len()).collect();
        let r = self.dev.encrypt(&mut bufs, OFF, &mut sizes, now).unwrap();
        let msgs = match r {
            Encrypted::Send { count, .. } => (0..count)
                .map(|i| bufs[i][OFF - HEADER_LEN..OFF - HEADER_LEN + sizes[i]].to_vec())
                .collect(),
            _ => Vec::new(),
        };
        (r, msgs)
    }

    /// Receives datagrams (all from `from`) as one batch: the decrypted packets, and what
    /// the control messages among them made this side send.
    pub fn receive(
        &self,
        dgrams: &[Vec<u8>],
        from: SocketAddr,
        now: Instant,
    ) -> (Vec<Vec<u8>>, Vec<Datagram>) {
        let mut bufs: Vec<Vec<u8>> = dgrams.to_vec();
        let mut sizes: Vec<usize> = dgrams.iter().map(|d| d.len()).collect();
        let mut sources = vec![Some(from); dgrams.len()];
        let d = self
            .dev
            .decrypt(&mut bufs, 0, &mut sizes, &mut sources, now)
            .unwrap();
        let packets = (0..d.packets)
            .map(|i| bufs[i][HEADER_LEN..HEADER_LEN + sizes[i]].to_vec())
            .collect();
        let mut out = Vec::new();
        for i in d.packets..d.packets + d.control {
            let msg = &bufs[i][..sizes[i]];
            assert!(control_type(msg).is_some());
            out.extend(self.dev.handle_control(msg, sources[i].unwrap(), now));
        }
        (packets, out)
    }
}

/// Delivers datagrams back and forth between `a` and `b` until none are left: `out`
/// are datagrams `a` sends. Returns the packets each side decrypted.
pub(crate) fn exchange(
    a: &Side,
    b: &Side,
    out: Vec<Datagram>,
    now: Instant,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let mut pending: Vec<(bool, Datagram)> = out.into_iter().map(|d| (true, d)).collect();
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds < 50, "the devices keep talking");
        let mut next = Vec::new();
        for (from_a, (bytes, to)) in pending {
            let (src, dst) = if from_a { (a, b) } else { (b, a) };
            assert_eq!(to, dst.endpoint, "sent to the peer's endpoint");
            let (packets, replies) = dst.receive(&[bytes], src.endpoint, now);
            if from_a {
                got_b.extend(packets);
            } else {
                got_a.extend(packets);
            }
            next.extend(replies.into_iter().map(|d| (!from_a, d)));
        }
        pending = next;
    }
    (got_a, got_b)
}

/// Two sides that know each other (both endpoints set), timing as given.
pub(crate) fn pair(timing: Timing, t0: Instant) -> (Side, Side) {
    let a = Side::new(1, "192.0.2.1:51820", [10, 9, 0, 1], timing.clone(), t0);
    let b = Side::new(2, "192.0.2.2:51820", [10, 9, 0, 2], timing, t0);
    a.add_peer(&b, true, None, t0);
    b.add_peer(&a, true, None, t0);
    (a, b)
}

/// Brings a session up between `a` (initiator) and `b` at `now`; returns a packet that
/// went through.
pub(crate) fn connect(a: &Side, b: &Side, now: Instant) {
    let p = ipv4(a.ip, b.ip, b"hello");
    let (r, _) = a.send(std::slice::from_ref(&p), now);
    assert_eq!(r, Encrypted::Staged);
    let out = a.dev.tick(now);
    assert_eq!(out.len(), 1, "one initiation");
    let (_, got_b) = exchange(a, b, out, now);
    assert_eq!(got_b, vec![p]);
}

/// A start time for a test: a little after the devices it makes are created (a device
/// counts time from its creation; earlier instants count as that).
pub(crate) fn start() -> Instant {
    Instant::now() + Duration::from_secs(10)
}
