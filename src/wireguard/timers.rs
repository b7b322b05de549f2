//! The protocol's timers, as wireguard-go's `timers.go` (whitepaper 6.x): the constants
//! ([`Timing`]) and one peer's five timers as atomic deadlines ([`Timers`]), with the
//! events that set and clear them. What an expired timer does is the device's
//! (`Device::tick`).
//!
//! Times are nanoseconds since the device's epoch ([`Nanos`]); a timer is a deadline in
//! an `AtomicU64` ([`NONE`] when not pending), so the data paths set and clear timers
//! without a lock, and [`Timer::take_due`] hands an expired timer to exactly one caller.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Nanoseconds since the device's epoch.
pub(crate) type Nanos = u64;

/// A timer that is not pending.
pub(crate) const NONE: Nanos = u64::MAX;

/// The protocol's time and message-count constants. [`Timing::default`] has the real
/// values (wireguard-go's `constants.go`); tests and a daemon's testing option may
/// shorten them to force a rekey in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// REKEY_AFTER_TIME (120 s): the initiator rekeys a session this old when sending.
    pub rekey_after_time: Duration,
    /// REJECT_AFTER_TIME (180 s): a session this old is neither used nor accepted.
    pub reject_after_time: Duration,
    /// REKEY_ATTEMPT_TIME (90 s): how long a handshake is retried
    /// (`rekey_attempt_time / rekey_timeout` retransmissions, then give up).
    pub rekey_attempt_time: Duration,
    /// REKEY_TIMEOUT (5 s): between handshake initiations.
    pub rekey_timeout: Duration,
    /// The random jitter added to a retransmission (and to the new-handshake timer) is
    /// below this (wireguard-go: 334 ms, i.e. 0..=333 ms, whole milliseconds).
    pub rekey_timeout_jitter: Duration,
    /// KEEPALIVE_TIMEOUT (10 s): a passive keepalive after received data with no reply.
    pub keepalive_timeout: Duration,
    /// COOKIE_REFRESH_TIME (120 s): the cookie secret's and a received cookie's lifetime.
    pub cookie_refresh_time: Duration,
    /// HandshakeInitationRate (20 ms): at most one initiation per peer accepted per this.
    pub handshake_initiation_rate: Duration,
    /// UnderLoadAfterTime (1 s): the device stays under load this long after the load
    /// that made it so.
    pub under_load_after_time: Duration,
    /// REKEY_AFTER_MESSAGES (2^60): rekey once a session has sent more messages.
    pub rekey_after_messages: u64,
    /// REJECT_AFTER_MESSAGES (2^64 - 2^13 - 1): a session that has sent this many is not
    /// used any more. (The aead module's sealer refuses the real limit whatever this is.)
    pub reject_after_messages: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_attempt_time: Duration::from_secs(90),
            rekey_timeout: Duration::from_secs(5),
            rekey_timeout_jitter: Duration::from_millis(334),
            keepalive_timeout: Duration::from_secs(10),
            cookie_refresh_time: Duration::from_secs(120),
            handshake_initiation_rate: Duration::from_millis(20),
            under_load_after_time: Duration::from_secs(1),
            rekey_after_messages: 1 << 60,
            reject_after_messages: u64::MAX - (1 << 13),
        }
    }
}

impl Timing {
    /// MaxTimerHandshakes: retransmissions before giving up (18 by default).
    pub fn max_timer_handshakes(&self) -> u32 {
        let t = self.rekey_timeout.as_nanos().max(1);
        (self.rekey_attempt_time.as_nanos() / t).min(u128::from(u32::MAX)) as u32
    }
}

/// A duration in [`Nanos`], saturating.
pub(crate) fn nanos(d: Duration) -> Nanos {
    d.as_nanos().min(u128::from(NONE - 1)) as Nanos
}

/// `now + d`, saturating below [`NONE`].
pub(crate) fn after(now: Nanos, d: Duration) -> Nanos {
    now.saturating_add(nanos(d)).min(NONE - 1)
}

/// One timer: a deadline, or [`NONE`].
#[derive(Debug)]
pub(crate) struct Timer(AtomicU64);

impl Default for Timer {
    fn default() -> Self {
        Timer(AtomicU64::new(NONE))
    }
}

impl Timer {
    /// `Mod`: pending, due at `at`.
    pub(crate) fn set(&self, at: Nanos) {
        self.0.store(at.min(NONE - 1), Relaxed);
    }

    /// `Del`: not pending.
    pub(crate) fn del(&self) {
        self.0.store(NONE, Relaxed);
    }

    /// `IsPending`.
    pub(crate) fn is_pending(&self) -> bool {
        self.0.load(Relaxed) != NONE
    }

    /// Sets the timer to `at` unless it is pending.
    pub(crate) fn set_if_idle(&self, at: Nanos) {
        let _ = self
            .0
            .compare_exchange(NONE, at.min(NONE - 1), Relaxed, Relaxed);
    }

    /// The deadline, if pending.
    pub(crate) fn deadline(&self) -> Option<Nanos> {
        match self.0.load(Relaxed) {
            NONE => None,
            d => Some(d),
        }
    }

    /// If the timer is due at `now`: clears it and returns true (once per expiry, to one
    /// caller, as a fired Go timer runs its function once).
    pub(crate) fn take_due(&self, now: Nanos) -> bool {
        let d = self.0.load(Relaxed);
        d != NONE && d <= now && self.0.compare_exchange(d, NONE, Relaxed, Relaxed).is_ok()
    }
}

/// A cheap, non-cryptographic source of jitter (splitmix64 over an atomic counter), as
/// wireguard-go's `fastrandn`: no system call on the data path.
#[derive(Debug)]
pub(crate) struct Jitter(AtomicU64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Jitter(AtomicU64::new(seed))
    }

    /// A whole number of milliseconds in `[0, max)` (0 if `max` is below 1 ms).
    pub(crate) fn below(&self, max: Duration) -> Duration {
        let ms = max.as_millis().min(u128::from(u32::MAX)) as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        let mut z = self.0.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Duration::from_millis(z % ms)
    }
}

/// One peer's timers and the counters `timers.go` keeps beside them.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Retransmit our handshake initiation (REKEY_TIMEOUT + jitter after sending it).
    pub(crate) retransmit_handshake: Timer,
    /// Send a passive keepalive (KEEPALIVE_TIMEOUT after receiving data).
    pub(crate) send_keepalive: Timer,
    /// Start a new handshake: data sent and nothing received for KEEPALIVE_TIMEOUT +
    /// REKEY_TIMEOUT + jitter.
    pub(crate) new_handshake: Timer,
    /// Zero all key material (3 x REJECT_AFTER_TIME after a session was derived).
    pub(crate) zero_key_material: Timer,
    /// Persistent keepalive (its interval after any authenticated packet).
    pub(crate) persistent_keepalive: Timer,
    /// Retransmissions of the current handshake so far.
    pub(crate) handshake_attempts: AtomicU32,
    /// Data arrived while the keepalive timer was pending: re-arm it after it fires.
    pub(crate) need_another_keepalive: AtomicBool,
    /// The receive-side rekey (near REJECT_AFTER_TIME) was already asked for.
    pub(crate) sent_last_minute_handshake: AtomicBool,
}

impl Timers {
    /// The five timers, for the earliest deadline.
    pub(crate) fn all(&self) -> [&Timer; 5] {
        [
            &self.retransmit_handshake,
            &self.send_keepalive,
            &self.new_handshake,
            &self.zero_key_material,
            &self.persistent_keepalive,
        ]
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<Nanos> {
        self.all().iter().filter_map(|t| t.deadline()).min()
    }

    /// Clears every timer and counter (a peer removed or reset).
    pub(crate) fn stop(&self) {
        for t in self.all() {
            t.del();
        }
        self.handshake_attempts.store(0, Relaxed);
        self.need_another_keepalive.store(false, Relaxed);
        self.sent_last_minute_handshake.store(false, Relaxed);
    }

    /// `timersDataSent`: after an authenticated data packet is sent.
    pub(crate) fn data_sent(&self, now: Nanos, t: &Timing, jitter: Duration) {
        if !self.new_handshake.is_pending() {
            self.new_handshake.set_if_idle(after(
                now,
                (t.keepalive_timeout.saturating_add(t.rekey_timeout)).saturating_add(jitter),
            ));
        }
    }

    /// `timersDataReceived`: after an authenticated data packet is received.
    pub(crate) fn data_received(&self, now: Nanos, t: &Timing) {
        if !self.send_keepalive.is_pending() {
            self.send_keepalive.set(after(now, t.keepalive_timeout));
        } else {
            self.need_another_keepalive.store(true, Relaxed);
        }
    }

    /// `timersAnyAuthenticatedPacketSent`: after any authenticated packet is sent.
    pub(crate) fn any_authenticated_packet_sent(&self) {
        self.send_keepalive.del();
    }

    /// `timersAnyAuthenticatedPacketReceived`: after any authenticated packet is
    /// received.
    pub(crate) fn any_authenticated_packet_received(&self) {
        self.new_handshake.del();
    }

    /// `timersHandshakeInitiated`: after a handshake initiation is sent.
    pub(crate) fn handshake_initiated(&self, now: Nanos, t: &Timing, jitter: Duration) {
        self.retransmit_handshake
            .set(after(now, t.rekey_timeout.saturating_add(jitter)));
    }

    /// `timersHandshakeComplete` (the timers' part; the caller records the time): after
    /// a response is consumed, or the first data message of a responder's session.
    pub(crate) fn handshake_complete(&self) {
        self.retransmit_handshake.del();
        self.handshake_attempts.store(0, Relaxed);
        self.sent_last_minute_handshake.store(false, Relaxed);
    }

    /// `timersSessionDerived`: after a session's keys are derived.
    pub(crate) fn session_derived(&self, now: Nanos, t: &Timing) {
        self.zero_key_material
            .set(after(now, t.reject_after_time.saturating_mul(3)));
    }

    /// `timersAnyAuthenticatedPacketTraversal`: before an authenticated packet is sent,
    /// or after one is received.
    pub(crate) fn any_authenticated_packet_traversal(&self, now: Nanos, keepalive_secs: u16) {
        if keepalive_secs > 0 {
            self.persistent_keepalive
                .set(after(now, Duration::from_secs(u64::from(keepalive_secs))));
        }
    }
}
