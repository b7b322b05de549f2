//! [`Device`]: the whole WireGuard interface, its sessions, the control path and the
//! timers. See the module doc of [`crate::wireguard`] for the API; the configuration is
//! in `config.rs`, the data paths in `send.rs` and `receive.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::allowed_ips::AllowedIps;
use super::config::DeviceConfig;
use super::cookie::{CookieChecker, LoadMeter, Mac1Checked, RateLimiter};
use super::crypto;
use super::index_table::IndexTable;
use super::keypair::Keypair;
use super::messages::*;
use super::noise::{consume_initiation_static, Handshake, Identity, InitiationRefused};
use super::peer::{lock, read, want, write, Peer};
use super::pump::{PumpCounters, PumpStats};
use super::tai64n::Tai64n;
use super::timers::{after, nanos, Jitter, Nanos, Timing, NONE};
use crate::aead::HEADER_LEN;
use crate::engine::error::ErrorKind;

/// One datagram to send: its bytes and where to.
pub type Datagram = (Vec<u8>, SocketAddr);

/// Wall-clock time for TAI64N timestamps and the last handshake time.
pub trait Clock: Send + Sync {
    /// The wall-clock time at the monotonic instant `now` (the `now` of the call that
    /// asks).
    fn wall(&self, now: Instant) -> SystemTime;
}

/// The system's clock: [`SystemTime::now`], whatever `now` is.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self, _now: Instant) -> SystemTime {
        SystemTime::now()
    }
}

/// What [`Device::encrypt`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypted {
    /// Sealed: messages `bufs[i][offset - 16..offset - 16 + sizes[i]]` for `i < count`,
    /// to send to `endpoint`.
    Send {
        /// The peer's endpoint.
        endpoint: SocketAddr,
        /// How many messages (the batch's packet count).
        count: usize,
        /// The control thread has work (a rekey was queued): call [`Device::tick`].
        wake: bool,
    },
    /// No peer for the first packet's destination (or it is not an IP packet): dropped.
    NoRoute,
    /// No usable session or endpoint: the packets were staged and a handshake queued;
    /// call [`Device::tick`].
    Staged,
}

/// What [`Device::decrypt`] made of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decrypted {
    /// `[0..packets)`: decrypted IP packets at `bufs[i][offset + 16..]`, `sizes[i]` bytes.
    pub packets: usize,
    /// `[packets..packets + control)`: handshake messages for [`Device::handle_control`].
    pub control: usize,
    /// The control thread has work (staged packets to send, a handshake): call
    /// [`Device::tick`].
    pub wake: bool,
    /// The handshake messages kept had a valid mac1 under this key (`None`: none was
    /// checked): the native receive loop hands it to the control path with them, which
    /// then does not compute their mac1 again.
    pub(crate) mac1: Option<Mac1Checked>,
}

/// Declares a struct of counters (plain numbers, `$stats`) and its atomic twin
/// (`$counters`, the same fields), with the field list written once.
macro_rules! stats {
    ($(#[$sdoc:meta])* $stats:ident, $counters:ident;
     $($(#[$doc:meta])* $field:ident,)*) => {
        $(#[$sdoc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $stats {
            $($(#[$doc])* pub $field: u64,)*
        }

        #[doc = concat!("[`", stringify!($stats), "`], updated by several threads.")]
        #[derive(Debug, Default)]
        pub(crate) struct $counters {
            $(pub(crate) $field: AtomicU64,)*
        }

        impl $stats {
            /// Every counter with its name, in the order declared (a binding's dict).
            pub fn items(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }

        impl $counters {
            pub(crate) fn get(&self) -> $stats {
                $stats {
                    $($field: self.$field.load(Relaxed),)*
                }
            }
        }
    };
}
pub(crate) use stats;

stats! {
    /// The device's counters: what it dropped, by reason, and what it did.
    DeviceStats, Counters;
    // --- sending ---
    /// Batches whose first packet's destination has no peer.
    tx_no_route,
    /// Batches whose first packet is no IP packet.
    tx_not_ip,
    /// Packets staged (no session or endpoint yet).
    tx_staged,
    /// Staged packets dropped: the queue was full (the oldest go), or the handshake gave
    /// up, or the peer's keys were zeroed.
    tx_staged_dropped,
    // --- receiving transport data ---
    /// Decrypted packets handed to the caller.
    rx_packets,
    /// Authenticated keepalives.
    rx_keepalives,
    /// Transport messages for no session we have (unknown or stale receiver index).
    rx_unknown_index,
    /// Transport messages for a session older than REJECT_AFTER_TIME.
    rx_expired,
    /// Transport messages that failed authentication.
    rx_forged,
    /// Authenticated transport messages whose counter the replay window refused.
    rx_replayed,
    /// Transport messages too short, or whose plaintext is no IP packet of a fitting
    /// length.
    rx_malformed,
    /// Decrypted packets whose inner source address is not the peer's (allowed IPs).
    rx_filtered,
    /// Datagrams of no known type or of a wrong size for their type.
    rx_junk,
    // --- handshakes ---
    /// Handshake messages with a wrong mac1.
    hs_bad_mac1,
    /// Handshake messages answered with a cookie reply (under load, no valid mac2).
    hs_cookie_sent,
    /// Handshake messages refused by the per-address rate limiter (under load).
    hs_rate_limited,
    /// Initiations and responses that did not authenticate (or name no peer of ours).
    hs_invalid,
    /// Initiations whose timestamp is not newer than the last accepted one (replays).
    hs_replayed,
    /// Initiations within 20 ms of the last one accepted from the same peer.
    hs_flood,
    /// Cookie replies accepted.
    cookies_accepted,
    /// Cookie replies refused (unknown index, no mac1 sent, bad tag).
    cookies_invalid,
    /// Handshake initiations made (first ones and retransmissions).
    hs_initiations_sent,
    /// Handshake responses made.
    hs_responses_sent,
    /// Handshakes given up after REKEY_ATTEMPT_TIME of retransmissions.
    hs_given_up,
    /// Sessions established (both roles).
    sessions,
}

/// The device's static identity and what derives from it.
pub(crate) struct Static {
    pub(crate) identity: Identity,
    pub(crate) checker: CookieChecker,
}

/// The peers and cryptokey routing.
#[derive(Default)]
pub(crate) struct PeerTable {
    pub(crate) by_key: HashMap<[u8; 32], Arc<Peer>>,
    pub(crate) allowed: AllowedIps<Arc<Peer>>,
    pub(crate) next_seq: u64,
}

/// A WireGuard interface without I/O. See the module doc of [`crate::wireguard`].
pub struct Device {
    pub(crate) timing: Timing,
    under_load_per_second: u32,
    /// [`DeviceConfig::mtu`], 0 for none.
    pub(crate) mtu: AtomicUsize,
    pub(crate) force_under_load: AtomicBool,
    clock: Arc<dyn Clock>,
    epoch: Instant,
    /// Held by each configuration change (wireguard-go's `ipcMutex`): a UAPI `set` is
    /// applied line by line, never interleaved with another change.
    pub(crate) config: Mutex<()>,
    pub(crate) static_: RwLock<Option<Static>>,
    pub(crate) listen_port: AtomicU16,
    pub(crate) fwmark: AtomicU32,
    pub(crate) peers: RwLock<PeerTable>,
    pub(crate) index: RwLock<IndexTable>,
    load: Mutex<LoadMeter>,
    rate: RateLimiter,
    pub(crate) jitter: Jitter,
    pub(crate) counters: Counters,
    /// The data-path loops' counters ([`crate::wireguard::pump`]).
    pub(crate) pump: PumpCounters,
    /// Some peer has [`want`] bits set.
    pub(crate) wake: AtomicBool,
    /// Set by [`Device::kick`], taken by [`Device::wait_for_kick`] (which `kicked` wakes).
    kicked: Mutex<bool>,
    kick: Condvar,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("public_key", &self.public_key())
            .field("peers", &read(&self.peers).by_key.len())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device with no private key and no peers, on the system clock.
    pub fn new(config: DeviceConfig) -> Device {
        Device::with_clock(config, Arc::new(SystemClock))
    }

    /// A device on another wall clock (tests).
    pub fn with_clock(config: DeviceConfig, clock: Arc<dyn Clock>) -> Device {
        let mut seed = [0u8; 8];
        crypto::random_bytes(&mut seed);
        Device {
            timing: config.timing,
            under_load_per_second: config.under_load_per_second,
            mtu: AtomicUsize::new(config.mtu.unwrap_or(0)),
            force_under_load: AtomicBool::new(config.force_under_load),
            clock,
            epoch: Instant::now(),
            config: Mutex::new(()),
            static_: RwLock::new(None),
            listen_port: AtomicU16::new(0),
            fwmark: AtomicU32::new(0),
            peers: RwLock::new(PeerTable::default()),
            index: RwLock::new(IndexTable::default()),
            load: Mutex::new(LoadMeter::default()),
            rate: RateLimiter::default(),
            jitter: Jitter::new(u64::from_le_bytes(seed)),
            counters: Counters::default(),
            pump: PumpCounters::default(),
            wake: AtomicBool::new(false),
            kicked: Mutex::new(false),
            kick: Condvar::new(),
        }
    }

    /// `now` in nanoseconds since the device's epoch (its creation; an earlier instant
    /// counts as the epoch).
    pub(crate) fn nanos(&self, now: Instant) -> Nanos {
        now.saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u128::from(NONE - 1)) as Nanos
    }

    /// The instant of `t`.
    fn instant(&self, t: Nanos) -> Instant {
        self.epoch + Duration::from_nanos(t)
    }

    /// Adds to a counter.
    pub(crate) fn count(&self, c: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        if n != 0 {
            c(&self.counters).fetch_add(n, Relaxed);
        }
    }

    /// Asks the control thread for work on `peer`, and wakes it ([`Device::kick`]) unless
    /// that work was asked for already (a busy sender asks once per batch).
    pub(crate) fn ask(&self, peer: &Peer, what: u8) {
        if peer.ask(what) {
            self.wake.store(true, Relaxed);
            self.kick();
        }
    }

    /// Wakes the control thread: its [`wait_for_kick`](Self::wait_for_kick) returns
    /// `true` now, or at once the next time if it is not waiting. The data paths kick it
    /// whenever they queue work for [`tick`](Self::tick); a caller kicks it after a
    /// configuration change (a persistent keepalive turned on, staged packets that now
    /// have a peer's endpoint), or to have it look at a stop.
    pub fn kick(&self) {
        *lock(&self.kicked) = true;
        self.kick.notify_all();
    }

    /// The control thread's wait between two [`tick`](Self::tick)s: returns `true` as
    /// soon as the device is kicked (a kick since the last wait counts), `false` after
    /// `timeout` without one. Either way the kick is taken. The caller computes
    /// `timeout` from [`next_deadline`](Self::next_deadline).
    pub fn wait_for_kick(&self, timeout: Duration) -> bool {
        let guard = lock(&self.kicked);
        let (mut kicked, _) = self
            .kick
            .wait_timeout_while(guard, timeout, |k| !*k)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *kicked)
    }

    /// The device's counters.
    pub fn stats(&self) -> DeviceStats {
        self.counters.get()
    }

    /// The counters of the data-path loops that ran on this device
    /// ([`pump_tx`](crate::wireguard::pump_tx), [`pump_rx`](crate::wireguard::pump_rx)).
    pub fn pump_stats(&self) -> PumpStats {
        self.pump.get()
    }

    /// The peers, in creation order (the control thread's snapshot).
    fn peer_list(&self) -> Vec<Arc<Peer>> {
        let mut v: Vec<Arc<Peer>> = read(&self.peers).by_key.values().cloned().collect();
        v.sort_by_key(|p| p.seq);
        v
    }

    // ----- sessions -------------------------------------------------------------------

    /// `ZeroAndFlushAll`: drops every session and the handshake in progress of `peer`
    /// (their keys zeroed with them) and its staged packets.
    pub(crate) fn zero_and_flush_all(&self, peer: &Peer) {
        let mut hs = lock(&peer.handshake);
        let mut index = write(&self.index);
        let dropped = write(&peer.keypairs).take_all();
        index.remove_keypairs(&dropped);
        index.remove(hs.local_index);
        hs.clear();
        drop((index, hs));
        self.count(|c| &c.tx_staged_dropped, peer.flush_staged());
    }

    /// `ExpireCurrentKeypairs` (the private key changed): the handshake in progress is
    /// forgotten, a new one may start at once, and the current and next sessions send no
    /// more.
    pub(crate) fn expire_current_keypairs(&self, peer: &Peer, hs: &mut Handshake) {
        write(&self.index).remove(hs.local_index);
        hs.clear();
        hs.last_sent_handshake = None;
        let kps = read(&peer.keypairs);
        for kp in [&kps.current, &kps.next].into_iter().flatten() {
            kp.send_expired.store(true, Relaxed);
        }
    }

    /// `BeginSymmetricSession`: the session `hs` just completed becomes a keypair in its
    /// slot (current for the initiator, next for the responder) and its index.
    fn begin_session(&self, peer: &Peer, hs: &mut Handshake, now: Nanos) -> bool {
        let Some(keys) = hs.derive_session() else {
            return false;
        };
        let kp = Arc::new(Keypair::new(&keys, now));
        let mut index = write(&self.index);
        index.swap_for_keypair(keys.local_index, kp.clone());
        hs.local_index = 0;
        let dropped = write(&peer.keypairs).install(kp);
        index.remove_keypairs(&dropped);
        self.count(|c| &c.sessions, 1);
        true
    }

    /// `timersHandshakeComplete`, with the wall-clock time of the handshake.
    pub(crate) fn handshake_complete(&self, peer: &Peer, now: Instant) {
        peer.timers.handshake_complete();
        let wall = self
            .clock
            .wall(now)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX).max(1);
        peer.last_handshake.store(ns, Relaxed);
    }

    // ----- sending (control path) -----------------------------------------------------

    /// `SendHandshakeInitiation`: a new initiation to `peer`, unless one went out less
    /// than REKEY_TIMEOUT ago (or there is no private key or static-static DH). Sent
    /// only if the peer has an endpoint; the timers run either way.
    fn send_initiation(&self, peer: &Arc<Peer>, is_retry: bool, now: Instant) -> Option<Datagram> {
        if !is_retry {
            peer.timers.handshake_attempts.store(0, Relaxed);
        }
        let t = self.nanos(now);
        let st = read(&self.static_);
        let mut hs = lock(&peer.handshake);
        // Checked under the handshake lock: a peer being removed is either seen as
        // removed here, or zeroed (indices freed) after this returns.
        if !peer.running.load(Relaxed) {
            return None;
        }
        if hs
            .last_sent_handshake
            .is_some_and(|last| t.saturating_sub(last) < nanos(self.timing.rekey_timeout))
        {
            return None;
        }
        hs.last_sent_handshake = Some(t);
        let st = st.as_ref()?;
        let mut msg = [0u8; INITIATION_LEN];
        let sender = {
            let mut index = write(&self.index);
            index.remove(hs.local_index);
            hs.local_index = 0;
            index.new_handshake_index(peer)
        };
        let ts = Tai64n::from_system_time(self.clock.wall(now));
        if !hs.create_initiation(&st.identity, sender, ts, &mut msg) {
            write(&self.index).remove(sender);
            return None;
        }
        drop(hs);
        lock(&peer.cookie).add_macs(&mut msg, t, self.timing.cookie_refresh_time);
        self.count(|c| &c.hs_initiations_sent, 1);
        let keepalive = peer.persistent_keepalive.load(Relaxed);
        peer.timers.any_authenticated_packet_traversal(t, keepalive);
        peer.timers.any_authenticated_packet_sent();
        let out = peer.endpoint().map(|ep| {
            peer.tx_bytes.fetch_add(INITIATION_LEN as u64, Relaxed);
            (msg.to_vec(), ep)
        });
        let jitter = self.jitter.below(self.timing.rekey_timeout_jitter);
        peer.timers.handshake_initiated(t, &self.timing, jitter);
        out
    }

    /// `SendKeepalive`: a keepalive if nothing is staged, then `SendStagedPackets`.
    fn send_keepalive(&self, peer: &Arc<Peer>, now: Instant, out: &mut Vec<Datagram>) {
        peer.stage_keepalive();
        self.send_staged(peer, now, out);
    }

    /// `SendStagedPackets`: seals the staged packets with the current session and sends
    /// them to the endpoint; without a usable session, starts a handshake instead (the
    /// packets wait).
    pub(crate) fn send_staged(&self, peer: &Arc<Peer>, now: Instant, out: &mut Vec<Datagram>) {
        if peer.staged_len.load(Relaxed) == 0 || !peer.running.load(Relaxed) {
            return;
        }
        let t = self.nanos(now);
        let kp = read(&peer.keypairs).current.clone();
        let Some(kp) = kp.filter(|kp| kp.can_send(t, &self.timing)) else {
            out.extend(self.send_initiation(peer, false, now));
            return;
        };
        let Some(ep) = peer.endpoint() else {
            return; // the packets wait for an endpoint
        };
        let mut bufs: Vec<Vec<u8>> = peer.take_staged().into();
        if bufs.is_empty() {
            return;
        }
        let mut sizes: Vec<usize> = bufs.iter().map(|b| b.len() - HEADER_LEN).collect();
        let data = sizes.iter().any(|&s| s > 0);
        match kp
            .sealer
            .seal(&mut bufs, HEADER_LEN, &mut sizes, self.mtu())
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::KeyExhausted => {
                kp.send_expired.store(true, Relaxed);
                self.count(|c| &c.tx_staged_dropped, peer.restage_front(bufs.into()));
                out.extend(self.send_initiation(peer, false, now));
                return;
            }
            Err(_) => {
                // Vec buffers always grow: not reached; drop rather than panic.
                self.count(|c| &c.tx_staged_dropped, bufs.len() as u64);
                return;
            }
        }
        let keepalive = peer.persistent_keepalive.load(Relaxed);
        peer.timers.any_authenticated_packet_traversal(t, keepalive);
        peer.timers.any_authenticated_packet_sent();
        let mut total = 0;
        for (mut b, n) in bufs.into_iter().zip(sizes) {
            b.truncate(n);
            total += n as u64;
            out.push((b, ep));
        }
        peer.tx_bytes.fetch_add(total, Relaxed);
        if data {
            let jitter = self.jitter.below(self.timing.rekey_timeout_jitter);
            peer.timers.data_sent(t, &self.timing, jitter);
        }
        if kp.wants_rekey_on_send(t, &self.timing) {
            out.extend(self.send_initiation(peer, false, now));
        }
    }

    // ----- control path ---------------------------------------------------------------

    /// One handshake initiation, response or cookie reply from `src`. Returns what to
    /// send. Anything else (or invalid) is dropped and counted.
    pub fn handle_control(&self, msg: &[u8], src: SocketAddr, now: Instant) -> Vec<Datagram> {
        self.handle_checked_control(msg, src, now, None)
    }

    /// [`handle_control`](Self::handle_control) for a message whose mac1 was found valid
    /// already under the key of `checked` (the verdict [`Device::decrypt`] gives
    /// for the handshake messages it kept): mac1 is not computed again if the device's
    /// key is still that one. Everything else (the load meter, mac2 and cookie replies,
    /// the rate limiter, the counters) is as in `handle_control`.
    pub(crate) fn handle_checked_control(
        &self,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        checked: Option<Mac1Checked>,
    ) -> Vec<Datagram> {
        let mut out = Vec::new();
        let t = self.nanos(now);
        let Some(kind) = control_type(msg) else {
            self.count(|c| &c.rx_junk, 1);
            return out;
        };
        if kind == MESSAGE_COOKIE_REPLY {
            self.consume_cookie_reply(msg, t);
            return out;
        }
        let under_load = {
            let metered = lock(&self.load).record(
                t,
                self.under_load_per_second,
                self.timing.under_load_after_time,
            );
            metered || self.force_under_load.load(Relaxed)
        };
        let st_guard = read(&self.static_);
        let Some(st) = st_guard.as_ref() else {
            self.count(|c| &c.hs_invalid, 1);
            return out;
        };
        if !st.checker.check_mac1_once(msg, checked) {
            self.count(|c| &c.hs_bad_mac1, 1);
            return out;
        }
        if under_load {
            if !st
                .checker
                .check_mac2(msg, &src, t, self.timing.cookie_refresh_time)
            {
                let reply = st
                    .checker
                    .create_reply(msg, &src, t, self.timing.cookie_refresh_time);
                self.count(|c| &c.hs_cookie_sent, 1);
                out.push((reply.to_vec(), src));
                return out;
            }
            if !self.rate.allow(src.ip(), t) {
                self.count(|c| &c.hs_rate_limited, 1);
                return out;
            }
        }
        if kind == MESSAGE_INITIATION {
            self.consume_initiation(st, msg, src, now, &mut out);
        } else {
            drop(st_guard);
            self.consume_response(msg, src, now, &mut out);
        }
        out
    }

    fn consume_cookie_reply(&self, msg: &[u8], t: Nanos) {
        let receiver = u32_at(msg, COOKIE_RECEIVER);
        let peer = read(&self.index).get(receiver).map(|e| e.peer.clone());
        let ok =
            peer.is_some_and(|p| p.running.load(Relaxed) && lock(&p.cookie).consume_reply(msg, t));
        if ok {
            self.count(|c| &c.cookies_accepted, 1);
        } else {
            self.count(|c| &c.cookies_invalid, 1);
        }
    }

    fn consume_initiation(
        &self,
        st: &Static,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        out: &mut Vec<Datagram>,
    ) {
        let t = self.nanos(now);
        let Some(init) = consume_initiation_static(&st.identity, msg) else {
            self.count(|c| &c.hs_invalid, 1);
            return;
        };
        let peer = read(&self.peers).by_key.get(&init.peer).cloned();
        let Some(peer) = peer.filter(|p| p.running.load(Relaxed)) else {
            self.count(|c| &c.hs_invalid, 1);
            return;
        };
        let mut hs = lock(&peer.handshake);
        if !peer.running.load(Relaxed) {
            self.count(|c| &c.hs_invalid, 1);
            return;
        }
        let rate = nanos(self.timing.handshake_initiation_rate);
        if let Err(why) = hs.consume_initiation(init, msg, t, rate) {
            self.count(
                |c| match why {
                    InitiationRefused::Invalid => &c.hs_invalid,
                    InitiationRefused::Replay => &c.hs_replayed,
                    InitiationRefused::Flood => &c.hs_flood,
                },
                1,
            );
            return;
        }
        let keepalive = peer.persistent_keepalive.load(Relaxed);
        peer.timers.any_authenticated_packet_traversal(t, keepalive);
        peer.timers.any_authenticated_packet_received();
        peer.roam(src);
        peer.rx_bytes.fetch_add(INITIATION_LEN as u64, Relaxed);

        // SendHandshakeResponse.
        hs.last_sent_handshake = Some(t);
        let mut resp = [0u8; RESPONSE_LEN];
        let sender = {
            let mut index = write(&self.index);
            index.remove(hs.local_index);
            hs.local_index = 0;
            index.new_handshake_index(&peer)
        };
        if !hs.create_response(sender, &mut resp) {
            write(&self.index).remove(sender);
            self.count(|c| &c.hs_invalid, 1);
            return;
        }
        lock(&peer.cookie).add_macs(&mut resp, t, self.timing.cookie_refresh_time);
        if !self.begin_session(&peer, &mut hs, t) {
            return;
        }
        drop(hs);
        peer.timers.session_derived(t, &self.timing);
        peer.timers.any_authenticated_packet_traversal(t, keepalive);
        peer.timers.any_authenticated_packet_sent();
        self.count(|c| &c.hs_responses_sent, 1);
        peer.tx_bytes.fetch_add(RESPONSE_LEN as u64, Relaxed);
        out.push((resp.to_vec(), src));
    }

    fn consume_response(&self, msg: &[u8], src: SocketAddr, now: Instant, out: &mut Vec<Datagram>) {
        let t = self.nanos(now);
        let receiver = u32_at(msg, RESP_RECEIVER);
        let peer = read(&self.index)
            .get(receiver)
            .filter(|e| e.keypair.is_none())
            .map(|e| e.peer.clone());
        let Some(peer) = peer.filter(|p| p.running.load(Relaxed)) else {
            self.count(|c| &c.hs_invalid, 1);
            return;
        };
        let st_guard = read(&self.static_);
        let Some(st) = st_guard.as_ref() else {
            self.count(|c| &c.hs_invalid, 1);
            return;
        };
        let mut hs = lock(&peer.handshake);
        let running = peer.running.load(Relaxed);
        if !running || hs.local_index != receiver || !hs.consume_response(&st.identity, msg) {
            self.count(|c| &c.hs_invalid, 1);
            return;
        }
        drop(st_guard);
        peer.roam(src);
        peer.rx_bytes.fetch_add(RESPONSE_LEN as u64, Relaxed);
        let keepalive = peer.persistent_keepalive.load(Relaxed);
        peer.timers.any_authenticated_packet_traversal(t, keepalive);
        peer.timers.any_authenticated_packet_received();
        if !self.begin_session(&peer, &mut hs, t) {
            return;
        }
        drop(hs);
        peer.timers.session_derived(t, &self.timing);
        self.handshake_complete(&peer, now);
        self.send_keepalive(&peer, now, out);
    }

    /// Runs the timers due at `now` and the work the data paths queued. Returns what to
    /// send.
    pub fn tick(&self, now: Instant) -> Vec<Datagram> {
        let mut out = Vec::new();
        let t = self.nanos(now);
        self.wake.store(false, Relaxed);
        for peer in self.peer_list() {
            if !peer.running.load(Relaxed) {
                continue;
            }
            let asked = peer.want.swap(0, Relaxed);
            if asked & want::KEEPALIVE != 0 {
                self.send_keepalive(&peer, now, &mut out);
            }
            if asked & want::FLUSH != 0 {
                self.send_staged(&peer, now, &mut out);
            }
            if asked & want::HANDSHAKE != 0 {
                out.extend(self.send_initiation(&peer, false, now));
            }
            self.expire_timers(&peer, now, t, &mut out);
        }
        self.rate.collect_garbage(t);
        out
    }

    /// The `expired*` functions of `timers.go`, for the timers due at `t`.
    fn expire_timers(&self, peer: &Arc<Peer>, now: Instant, t: Nanos, out: &mut Vec<Datagram>) {
        let timers = &peer.timers;
        if timers.retransmit_handshake.take_due(t) {
            if timers.handshake_attempts.load(Relaxed) > self.timing.max_timer_handshakes() {
                // Give up: drop the staged packets, zero what is left later.
                timers.send_keepalive.del();
                self.count(|c| &c.hs_given_up, 1);
                self.count(|c| &c.tx_staged_dropped, peer.flush_staged());
                if !timers.zero_key_material.is_pending() {
                    timers
                        .zero_key_material
                        .set(after(t, self.timing.reject_after_time.saturating_mul(3)));
                }
            } else {
                timers.handshake_attempts.fetch_add(1, Relaxed);
                out.extend(self.send_initiation(peer, true, now));
            }
        }
        if timers.send_keepalive.take_due(t) {
            self.send_keepalive(peer, now, out);
            if timers.need_another_keepalive.swap(false, Relaxed) {
                timers
                    .send_keepalive
                    .set(after(t, self.timing.keepalive_timeout));
            }
        }
        if timers.new_handshake.take_due(t) {
            out.extend(self.send_initiation(peer, false, now));
        }
        if timers.zero_key_material.take_due(t) {
            self.zero_and_flush_all(peer);
        }
        if timers.persistent_keepalive.take_due(t) && peer.persistent_keepalive.load(Relaxed) > 0 {
            self.send_keepalive(peer, now, out);
        }
    }

    /// How long from `now` until [`tick`](Self::tick) has something to do, at most an
    /// hour (zero if work is queued or a timer is due; `None` if no timer is pending): a
    /// control thread's wait.
    pub fn time_to_deadline(&self, now: Instant) -> Option<Duration> {
        let d = self.next_deadline()?.saturating_duration_since(now);
        Some(d.min(Duration::from_secs(3600)))
    }

    /// When [`tick`](Self::tick) has something to do next: `Some(t <= now)` if work is
    /// queued, `None` if no timer is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.wake.load(Relaxed) {
            return Some(self.epoch);
        }
        let table = read(&self.peers);
        let mut best: Option<Nanos> = None;
        for p in table.by_key.values() {
            if p.want.load(Relaxed) != 0 {
                return Some(self.epoch);
            }
            if let Some(d) = p.timers.next_deadline() {
                best = Some(best.map_or(d, |b| b.min(d)));
            }
        }
        best.map(|d| self.instant(d))
    }
}
