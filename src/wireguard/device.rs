//! [`Device`]: the whole WireGuard interface. See the module doc of
//! [`crate::wireguard`] for the API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::allowed_ips::IpNet;
use super::timers::Timing;
use crate::engine::{ExpandBuffer, Result};

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

/// A device's settings that are not part of UAPI.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The protocol's timer and counter constants (defaults: the real ones).
    pub timing: Timing,
    /// Pad transport messages only up to this many plaintext bytes (wireguard-go pads to
    /// the TUN MTU); `None`: always to a multiple of 16.
    pub mtu: Option<usize>,
    /// The device is under load (handshake messages need a valid mac2, else a cookie
    /// reply) while it receives at least this many handshake messages in one second, and
    /// for [`Timing::under_load_after_time`] after.
    pub under_load_per_second: u32,
    /// Always under load (tests; a daemon's testing option).
    pub force_under_load: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            timing: Timing::default(),
            mtu: None,
            under_load_per_second: 128,
            force_under_load: false,
        }
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
}

/// One line of a UAPI peer block, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLine {
    /// `update_only=true`: do not create the peer if it does not exist.
    UpdateOnly,
    /// `remove=true`.
    Remove,
    /// `preshared_key=` (all zeros: none).
    PresharedKey([u8; 32]),
    /// `endpoint=`.
    Endpoint(SocketAddr),
    /// `persistent_keepalive_interval=` in seconds (0: off).
    PersistentKeepalive(u16),
    /// `replace_allowed_ips=true`.
    ReplaceAllowedIps,
    /// `allowed_ip=`.
    AllowedIp(IpNet),
    /// `allowed_ip=-...` (wireguard-go's removal).
    RemoveAllowedIp(IpNet),
    /// `protocol_version=` (only 1 is accepted).
    ProtocolVersion(u32),
}

/// One peer as `get=1` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// `public_key`.
    pub public_key: [u8; 32],
    /// `preshared_key` (zeros: none).
    pub preshared_key: [u8; 32],
    /// `endpoint`.
    pub endpoint: Option<SocketAddr>,
    /// `last_handshake_time_sec` / `_nsec` since the Unix epoch (zero: never).
    pub last_handshake: Duration,
    /// `tx_bytes`.
    pub tx_bytes: u64,
    /// `rx_bytes`.
    pub rx_bytes: u64,
    /// `persistent_keepalive_interval`.
    pub persistent_keepalive_interval: u16,
    /// `allowed_ip` lines.
    pub allowed_ips: Vec<IpNet>,
}

/// The device's counters: what it dropped, by reason, and what it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    // --- sending ---
    /// Batches whose first packet's destination has no peer.
    pub tx_no_route: u64,
    /// Batches whose first packet is no IP packet.
    pub tx_not_ip: u64,
    /// Packets staged (no session or endpoint yet).
    pub tx_staged: u64,
    /// Staged packets dropped: the queue was full (the oldest go), or the handshake gave
    /// up, or the peer's keys were zeroed.
    pub tx_staged_dropped: u64,
    // --- receiving transport data ---
    /// Decrypted packets handed to the caller.
    pub rx_packets: u64,
    /// Authenticated keepalives.
    pub rx_keepalives: u64,
    /// Transport messages for no session we have (unknown or stale receiver index).
    pub rx_unknown_index: u64,
    /// Transport messages for a session older than REJECT_AFTER_TIME.
    pub rx_expired: u64,
    /// Transport messages that failed authentication.
    pub rx_forged: u64,
    /// Authenticated transport messages whose counter the replay window refused.
    pub rx_replayed: u64,
    /// Transport messages too short, or whose plaintext is no IP packet of a fitting
    /// length.
    pub rx_malformed: u64,
    /// Decrypted packets whose inner source address is not the peer's (allowed IPs).
    pub rx_filtered: u64,
    /// Datagrams of no known type or of a wrong size for their type.
    pub rx_junk: u64,
    // --- handshakes ---
    /// Handshake messages with a wrong mac1.
    pub hs_bad_mac1: u64,
    /// Handshake messages answered with a cookie reply (under load, no valid mac2).
    pub hs_cookie_sent: u64,
    /// Handshake messages refused by the per-address rate limiter (under load).
    pub hs_rate_limited: u64,
    /// Initiations and responses that did not authenticate (or name no peer of ours).
    pub hs_invalid: u64,
    /// Initiations whose timestamp is not newer than the last accepted one (replays).
    pub hs_replayed: u64,
    /// Initiations within 20 ms of the last one accepted from the same peer.
    pub hs_flood: u64,
    /// Cookie replies accepted.
    pub cookies_accepted: u64,
    /// Cookie replies refused (unknown index, no mac1 sent, bad tag).
    pub cookies_invalid: u64,
    /// Sessions established (both roles).
    pub sessions: u64,
}

/// A WireGuard interface without I/O. See the module doc of [`crate::wireguard`].
pub struct Device {
    _config: DeviceConfig,
    _clock: Arc<dyn Clock>,
}

impl Device {
    /// A device with no private key and no peers, on the system clock.
    pub fn new(config: DeviceConfig) -> Device {
        Device::with_clock(config, Arc::new(SystemClock))
    }

    /// A device on another wall clock (tests).
    pub fn with_clock(config: DeviceConfig, clock: Arc<dyn Clock>) -> Device {
        Device {
            _config: config,
            _clock: clock,
        }
    }

    // ----- configuration ------------------------------------------------------------

    /// Sets the private key (clamped; all zeros: none) and derives the public key. As
    /// wireguard-go: a peer whose public key is our new one is removed, and every session
    /// whose static-static DH changes is expired.
    pub fn set_private_key(&self, _key: &[u8; 32], _now: Instant) {
        todo!()
    }

    /// The private key as stored (clamped), `None` if unset.
    pub fn private_key(&self) -> Option<[u8; 32]> {
        todo!()
    }

    /// The public key, `None` without a private key.
    pub fn public_key(&self) -> Option<[u8; 32]> {
        todo!()
    }

    /// `listen_port`: stored and reported (the caller binds the sockets).
    pub fn set_listen_port(&self, _port: u16) {
        todo!()
    }

    /// The stored listen port (0: none).
    pub fn listen_port(&self) -> u16 {
        todo!()
    }

    /// `fwmark`: stored and reported.
    pub fn set_fwmark(&self, _mark: u32) {
        todo!()
    }

    /// The stored fwmark (0: none).
    pub fn fwmark(&self) -> u32 {
        todo!()
    }

    /// Changes the padding limit ([`DeviceConfig::mtu`]).
    pub fn set_mtu(&self, _mtu: Option<usize>) {
        todo!()
    }

    /// Turns [`DeviceConfig::force_under_load`] on or off.
    pub fn set_force_under_load(&self, _on: bool) {
        todo!()
    }

    /// `replace_peers=true`: removes every peer (their keys zeroed, staged packets
    /// dropped).
    pub fn remove_all_peers(&self) {
        todo!()
    }

    /// One UAPI peer block: `public_key=` then `lines` in order. Creates the peer unless
    /// an [`PeerLine::UpdateOnly`] says not to; a block for our own public key is
    /// ignored. Every line is checked before any is applied (`protocol_version` other
    /// than 1: an error, nothing changed). After the block, as wireguard-go: turning a
    /// persistent keepalive on queues a keepalive, and staged packets are sent if a
    /// session allows.
    pub fn set_peer(
        &self,
        _public_key: &[u8; 32],
        _lines: &[PeerLine],
        _now: Instant,
    ) -> Result<()> {
        todo!()
    }

    /// Removes a peer; `false` if there was none.
    pub fn remove_peer(&self, _public_key: &[u8; 32]) -> bool {
        todo!()
    }

    /// Every peer, in the order they were added, as `get=1` reports them.
    pub fn peers(&self) -> Vec<PeerStatus> {
        todo!()
    }

    /// The device's counters.
    pub fn stats(&self) -> DeviceStats {
        todo!()
    }

    // ----- data path ------------------------------------------------------------------

    /// Seals a batch of packets from the TUN device for the peer of the first packet's
    /// destination. See the module doc. Errors (nothing sealed): `offset < 16`, a size
    /// past its buffer, a buffer that cannot grow for padding and tag.
    pub fn encrypt<B: ExpandBuffer>(
        &self,
        _bufs: &mut [B],
        _offset: usize,
        _sizes: &mut [usize],
        _now: Instant,
    ) -> Result<Encrypted> {
        todo!()
    }

    /// Opens a batch of datagrams from the UDP socket in place and compacts it. See the
    /// module doc. `sources` must have at least `sizes.len()` entries (else an error,
    /// nothing changed).
    pub fn decrypt<B: ExpandBuffer>(
        &self,
        _bufs: &mut [B],
        _offset: usize,
        _sizes: &mut [usize],
        _sources: &mut [Option<SocketAddr>],
        _now: Instant,
    ) -> Result<Decrypted> {
        todo!()
    }

    // ----- control path ---------------------------------------------------------------

    /// One handshake initiation, response or cookie reply from `src`. Returns what to
    /// send.
    pub fn handle_control(&self, _msg: &[u8], _src: SocketAddr, _now: Instant) -> Vec<Datagram> {
        todo!()
    }

    /// Runs the timers due at `now` and the work the data paths queued. Returns what to
    /// send.
    pub fn tick(&self, _now: Instant) -> Vec<Datagram> {
        todo!()
    }

    /// When [`tick`](Self::tick) has something to do next: `Some(t <= now)` if work is
    /// queued, `None` if no timer is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        todo!()
    }
}
