//! mac1, mac2 and cookie replies (whitepaper 5.3 and 5.4.7, wireguard-go's `cookie.go`),
//! with what decides when they are needed: the device's load meter and its
//! per-address rate limiter (`ratelimiter.go`).
//!
//! - [`CookieChecker`] (the device, as responder): checks mac1 (keyed by
//!   `HASH("mac1----" || our public key)`) and mac2 (keyed by the cookie
//!   `MAC(secret, source address)`), and makes cookie replies: the cookie sealed with
//!   XChaCha20-Poly1305 under `HASH("cookie--" || our public key)`, a random nonce, and
//!   the message's mac1 as associated data. The secret is random and renewed when it is
//!   older than COOKIE_REFRESH_TIME.
//! - [`CookieGenerator`] (one per peer, as initiator): adds mac1, and mac2 while a
//!   cookie received less than COOKIE_REFRESH_TIME ago is held; consumes cookie replies
//!   for the last mac1 it sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use zeroize::{Zeroize, Zeroizing};

use super::crypto::{self, MAC_LEN, TAG_LEN, XNONCE_LEN};
use super::messages::*;
use super::timers::{nanos, Nanos};
use crate::hooks::locked;
use std::time::Duration;

/// The label of mac1's key.
pub(crate) const LABEL_MAC1: &[u8] = b"mac1----";
/// The label of the cookie encryption key.
pub(crate) const LABEL_COOKIE: &[u8] = b"cookie--";

/// The bytes of a source address a cookie is bound to: the IP address and the port
/// (big-endian). Only this device checks its cookies, so the encoding is ours.
fn source_bytes(src: &SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let n = match src.ip() {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            b[..16].copy_from_slice(&a.octets());
            16
        }
    };
    b[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    (b, n + 2)
}

/// The verdict of a mac1 check carried from one place to the next (from
/// [`Device::decrypt`](super::Device::decrypt) to the control path): the messages it is
/// given with had a valid mac1 under this key (a hash of the public key, nothing secret).
/// Only [`CookieChecker::verdict`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mac1Checked([u8; 32]);

/// The responder's side: mac checks and cookie replies.
pub(crate) struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: Zeroizing<[u8; 32]>,
    /// The secret and when it was made (`None`: never; no mac2 is valid then).
    secret: Mutex<(Zeroizing<[u8; 32]>, Option<Nanos>)>,
    /// How many mac1s [`check_mac1`](Self::check_mac1) computed (tests).
    #[cfg(test)]
    pub(crate) mac1_computed: std::sync::atomic::AtomicU64,
}

impl CookieChecker {
    /// For the device's public key.
    pub(crate) fn new(public: &[u8; 32]) -> CookieChecker {
        CookieChecker {
            mac1_key: crypto::hash(&[LABEL_MAC1, public]),
            cookie_key: Zeroizing::new(crypto::hash(&[LABEL_COOKIE, public])),
            secret: Mutex::new((Zeroizing::new([0; 32]), None)),
            #[cfg(test)]
            mac1_computed: Default::default(),
        }
    }

    /// Whether `msg` (a handshake message of its exact size) has a valid mac1.
    pub(crate) fn check_mac1(&self, msg: &[u8]) -> bool {
        #[cfg(test)]
        self.mac1_computed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = mac1_at(msg.len());
        let want = crypto::mac(&self.mac1_key, &[&msg[..at]]);
        crypto::ct_eq(&want, &msg[at..at + MAC_LEN])
    }

    /// The verdict to carry for messages whose mac1 this checker found valid.
    pub(crate) fn verdict(&self) -> Mac1Checked {
        Mac1Checked(self.mac1_key)
    }

    /// Whether `msg` (a handshake message of its exact size) has a valid mac1: `true` at
    /// once if `checked` is the verdict of a check under this checker's key (the same
    /// key and message give the same answer), else [`check_mac1`](Self::check_mac1)
    /// (a verdict under another key, the device's key having changed since, counts for
    /// nothing).
    pub(crate) fn check_mac1_once(&self, msg: &[u8], checked: Option<Mac1Checked>) -> bool {
        checked == Some(self.verdict()) || self.check_mac1(msg)
    }

    /// The cookie for `src` under the current secret, if the secret is younger than
    /// `refresh`.
    fn cookie(&self, src: &SocketAddr, now: Nanos, refresh: Duration) -> Option<[u8; MAC_LEN]> {
        let guard = locked(&self.secret);
        let set = guard.1?;
        if now.saturating_sub(set) > nanos(refresh) {
            return None;
        }
        let (b, n) = source_bytes(src);
        Some(crypto::mac(&guard.0[..], &[&b[..n]]))
    }

    /// Whether `msg` has a valid mac2 for a datagram from `src`.
    pub(crate) fn check_mac2(
        &self,
        msg: &[u8],
        src: &SocketAddr,
        now: Nanos,
        refresh: Duration,
    ) -> bool {
        let Some(mut cookie) = self.cookie(src, now, refresh) else {
            return false;
        };
        let at = mac2_at(msg.len());
        let want = crypto::mac(&cookie, &[&msg[..at]]);
        cookie.zeroize();
        crypto::ct_eq(&want, &msg[at..at + MAC_LEN])
    }

    /// A cookie reply to `msg` (from `src`), to the sender index of `msg`. Renews the
    /// secret first if it is older than `refresh`.
    pub(crate) fn create_reply(
        &self,
        msg: &[u8],
        src: &SocketAddr,
        now: Nanos,
        refresh: Duration,
    ) -> [u8; COOKIE_REPLY_LEN] {
        let mut cookie = {
            let mut guard = locked(&self.secret);
            if guard
                .1
                .is_none_or(|set| now.saturating_sub(set) > nanos(refresh))
            {
                crypto::random_bytes(&mut guard.0[..]);
                guard.1 = Some(now);
            }
            let (b, n) = source_bytes(src);
            crypto::mac(&guard.0[..], &[&b[..n]])
        };
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        reply[..4].copy_from_slice(&MESSAGE_COOKIE_REPLY.to_le_bytes());
        reply[COOKIE_RECEIVER..COOKIE_NONCE].copy_from_slice(&msg[SENDER..SENDER + 4]);
        let mut nonce = [0u8; XNONCE_LEN];
        crypto::random_bytes(&mut nonce);
        reply[COOKIE_NONCE..COOKIE_SEALED].copy_from_slice(&nonce);
        let at = mac1_at(msg.len());
        crypto::xseal(
            &self.cookie_key,
            &nonce,
            &cookie,
            &msg[at..at + MAC_LEN],
            &mut reply[COOKIE_SEALED..],
        );
        cookie.zeroize();
        reply
    }
}

/// The initiator's side, one per peer: mac1/mac2 on our handshake messages, and the
/// cookie from the peer's last cookie reply.
pub(crate) struct CookieGenerator {
    mac1_key: [u8; 32],
    cookie_key: Zeroizing<[u8; 32]>,
    last_mac1: Option<[u8; MAC_LEN]>,
    cookie: Zeroizing<[u8; MAC_LEN]>,
    cookie_set: Option<Nanos>,
}

impl CookieGenerator {
    /// For the peer's public key.
    pub(crate) fn new(peer: &[u8; 32]) -> CookieGenerator {
        CookieGenerator {
            mac1_key: crypto::hash(&[LABEL_MAC1, peer]),
            cookie_key: Zeroizing::new(crypto::hash(&[LABEL_COOKIE, peer])),
            last_mac1: None,
            cookie: Zeroizing::new([0; MAC_LEN]),
            cookie_set: None,
        }
    }

    /// Writes mac1 into `msg` (a handshake message), and mac2 if a cookie younger than
    /// `refresh` is held (else mac2 stays zero); remembers mac1 for a cookie reply.
    pub(crate) fn add_macs(&mut self, msg: &mut [u8], now: Nanos, refresh: Duration) {
        let at1 = mac1_at(msg.len());
        let mac1 = crypto::mac(&self.mac1_key, &[&msg[..at1]]);
        msg[at1..at1 + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let at2 = mac2_at(msg.len());
        match self.cookie_set {
            Some(set) if now.saturating_sub(set) <= nanos(refresh) => {
                let mac2 = crypto::mac(&self.cookie[..], &[&msg[..at2]]);
                msg[at2..at2 + MAC_LEN].copy_from_slice(&mac2);
            }
            _ => msg[at2..at2 + MAC_LEN].fill(0),
        }
    }

    /// Takes the cookie from a cookie reply (of its exact size) sealed for our last mac1.
    /// `false` if we sent no mac1 or it does not authenticate.
    pub(crate) fn consume_reply(&mut self, reply: &[u8], now: Nanos) -> bool {
        let Some(mac1) = self.last_mac1 else {
            return false;
        };
        if reply.len() != COOKIE_REPLY_LEN {
            return false;
        }
        let nonce: [u8; XNONCE_LEN] = reply[COOKIE_NONCE..COOKIE_SEALED].try_into().unwrap();
        let mut cookie = Zeroizing::new([0u8; MAC_LEN]);
        debug_assert_eq!(reply.len() - COOKIE_SEALED, MAC_LEN + TAG_LEN);
        if !crypto::xopen(
            &self.cookie_key,
            &nonce,
            &reply[COOKIE_SEALED..],
            &mac1,
            &mut cookie[..],
        ) {
            return false;
        }
        self.cookie = cookie;
        self.cookie_set = Some(now);
        true
    }
}

/// The device's load: the handshake messages of the last second.
#[derive(Debug, Default)]
pub(crate) struct LoadMeter {
    window_start: Nanos,
    count: u32,
    under_load_until: Nanos,
}

impl LoadMeter {
    /// Counts one handshake message at `now` and says whether the device is under load:
    /// at least `threshold` messages in the current one-second window, or such a window
    /// ended less than `stay` ago (wireguard-go's `IsUnderLoad`).
    pub(crate) fn record(&mut self, now: Nanos, threshold: u32, stay: Duration) -> bool {
        if now.saturating_sub(self.window_start) >= 1_000_000_000 {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count >= threshold {
            self.under_load_until = now.saturating_add(nanos(stay));
            return true;
        }
        now < self.under_load_until
    }
}

/// wireguard-go's rate limiter: per source IP address, 20 handshake messages a second
/// with a burst of 5 (a token bucket in nanoseconds).
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    table: Mutex<HashMap<IpAddr, (Nanos, i64)>>,
}

const PACKET_COST: i64 = 1_000_000_000 / 20;
const MAX_TOKENS: i64 = PACKET_COST * 5;

impl RateLimiter {
    /// Whether a handshake message from `ip` at `now` is allowed (and takes a token).
    pub(crate) fn allow(&self, ip: IpAddr, now: Nanos) -> bool {
        let mut table = locked(&self.table);
        let Some((last, tokens)) = table.get_mut(&ip) else {
            table.insert(ip, (now, MAX_TOKENS - PACKET_COST));
            return true;
        };
        let elapsed = i64::try_from(now.saturating_sub(*last)).unwrap_or(i64::MAX);
        *tokens = tokens.saturating_add(elapsed).min(MAX_TOKENS);
        *last = now;
        if *tokens > PACKET_COST {
            *tokens -= PACKET_COST;
            true
        } else {
            false
        }
    }

    /// Forgets addresses not seen for a second.
    pub(crate) fn collect_garbage(&self, now: Nanos) {
        let mut table = locked(&self.table);
        table.retain(|_, (last, _)| now.saturating_sub(*last) <= 1_000_000_000);
    }

    /// How many addresses it tracks.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;
    const REFRESH: Duration = Duration::from_secs(120);

    fn message(t: u32, len: usize, sender: u32) -> Vec<u8> {
        let mut m: Vec<u8> = (0..len).map(|i| i as u8).collect();
        m[..4].copy_from_slice(&t.to_le_bytes());
        m[4..8].copy_from_slice(&sender.to_le_bytes());
        m
    }

    #[test]
    fn mac1_round_trip_and_wrong_key() {
        let responder = [5u8; 32];
        let checker = CookieChecker::new(&responder);
        let mut gen = CookieGenerator::new(&responder);
        for (t, len) in [(1, INITIATION_LEN), (2, RESPONSE_LEN)] {
            let mut m = message(t, len, 9);
            gen.add_macs(&mut m, 0, REFRESH);
            assert!(checker.check_mac1(&m));
            assert_eq!(&m[mac2_at(len)..], &[0u8; 16], "no cookie: mac2 zero");
            for i in 0..mac2_at(len) {
                let mut bad = m.clone();
                bad[i] ^= 1;
                assert!(!checker.check_mac1(&bad), "flip at {i}");
            }
        }
        let mut other = CookieGenerator::new(&[6u8; 32]);
        let mut m = message(1, INITIATION_LEN, 9);
        other.add_macs(&mut m, 0, REFRESH);
        assert!(!checker.check_mac1(&m));
    }

    #[test]
    fn cookie_round_trip() {
        let responder = [5u8; 32];
        let checker = CookieChecker::new(&responder);
        let mut gen = CookieGenerator::new(&responder);
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut m = message(1, INITIATION_LEN, 0xabcd);
        gen.add_macs(&mut m, 0, REFRESH);
        assert!(!checker.check_mac2(&m, &src, 0, REFRESH), "no secret yet");

        let reply = checker.create_reply(&m, &src, S, REFRESH);
        assert_eq!(message_type(&reply), Some(MESSAGE_COOKIE_REPLY));
        assert_eq!(u32_at(&reply, COOKIE_RECEIVER), 0xabcd);
        // A tampered reply is refused and changes nothing.
        let mut bad = reply;
        bad[40] ^= 1;
        assert!(!gen.consume_reply(&bad, S));
        assert!(gen.consume_reply(&reply, S));

        // The next message carries a valid mac2 for this source only.
        let mut m2 = message(1, INITIATION_LEN, 0xabce);
        gen.add_macs(&mut m2, 2 * S, REFRESH);
        assert!(checker.check_mac1(&m2));
        assert!(checker.check_mac2(&m2, &src, 2 * S, REFRESH));
        let other_port: SocketAddr = "192.0.2.1:51821".parse().unwrap();
        let other_ip: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        assert!(!checker.check_mac2(&m2, &other_port, 2 * S, REFRESH));
        assert!(!checker.check_mac2(&m2, &other_ip, 2 * S, REFRESH));
        let mut flipped = m2.clone();
        flipped[20] ^= 1;
        assert!(!checker.check_mac2(&flipped, &src, 2 * S, REFRESH));

        // The secret expires after 120 s: mac2 no longer checks until a new reply.
        let late = S + 120 * S + 1;
        assert!(checker.check_mac2(&m2, &src, S + 120 * S, REFRESH));
        assert!(!checker.check_mac2(&m2, &src, late, REFRESH));
        // The initiator stops using its cookie after 120 s too.
        let mut m3 = message(1, INITIATION_LEN, 1);
        gen.add_macs(&mut m3, late, REFRESH);
        assert_eq!(&m3[mac2_at(INITIATION_LEN)..], &[0u8; 16]);
        // A reply rotates the secret: the old cookie is worthless, the new one works.
        let reply2 = checker.create_reply(&m3, &src, late, REFRESH);
        assert!(!checker.check_mac2(&m2, &src, late, REFRESH));
        assert!(gen.consume_reply(&reply2, late));
        let mut m4 = message(1, INITIATION_LEN, 2);
        gen.add_macs(&mut m4, late, REFRESH);
        assert!(checker.check_mac2(&m4, &src, late, REFRESH));
    }

    #[test]
    fn cookie_reply_needs_the_last_mac1() {
        let responder = [5u8; 32];
        let checker = CookieChecker::new(&responder);
        let src: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut gen = CookieGenerator::new(&responder);
        let m = message(1, INITIATION_LEN, 1);
        let reply = checker.create_reply(&m, &src, 0, REFRESH);
        assert!(!gen.consume_reply(&reply, 0), "no mac1 sent yet");
        let mut first = message(1, INITIATION_LEN, 1);
        gen.add_macs(&mut first, 0, REFRESH);
        let reply = checker.create_reply(&first, &src, 0, REFRESH);
        let mut second = message(1, INITIATION_LEN, 2);
        gen.add_macs(&mut second, 0, REFRESH);
        assert!(!gen.consume_reply(&reply, 0), "sealed for an older mac1");
    }

    #[test]
    fn load_meter_table() {
        // threshold 3 per second, stays 1 s: (time, under load?)
        let mut lm = LoadMeter::default();
        let steps: &[(Nanos, bool)] = &[
            (0, false),
            (S / 10, false),
            (S / 5, true), // third in the window
            (S / 2, true),
            (S + S / 4, true),  // new window, but within 1 s of the last overload
            (S + S / 2, false), // 1 s after S/2
            (3 * S, false),
        ];
        for &(t, want) in steps {
            assert_eq!(lm.record(t, 3, Duration::from_secs(1)), want, "at {t}");
        }
    }

    #[test]
    fn rate_limiter_table_as_wireguard_go() {
        // wireguard-go's TestRatelimiter: (wait before, allowed?), time advancing by
        // wait + 1 ns per step, for several addresses of both families at once.
        let cost = 50_000_000;
        let mut steps = vec![(0, true); 5]; // the initial burst
        steps.extend([
            (0, false),       // after the burst
            (cost, true),     // tokens for one
            (0, false),       // not refilled enough
            (2 * cost, true), // tokens for two
            (0, true),        // the second of the two
            (0, false),       // after them
        ]);
        let ips: Vec<IpAddr> = ["127.0.0.1", "192.0.2.1", "2001:db8::1", "f5c2:818f::25f0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let rl = RateLimiter::default();
        let mut now = 1_000;
        for (i, &(wait, want)) in steps.iter().enumerate() {
            now += wait + 1;
            for ip in &ips {
                assert_eq!(rl.allow(*ip, now), want, "step {i} {ip}");
            }
        }
        assert_eq!(rl.len(), ips.len());
        rl.collect_garbage(now + S);
        assert_eq!(rl.len(), ips.len(), "seen within a second");
        rl.collect_garbage(now + S + 1);
        assert_eq!(rl.len(), 0);
    }
}
