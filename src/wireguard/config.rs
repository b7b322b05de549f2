//! A [`Device`]'s configuration (wireguard-go's `device.go` and the semantics of its
//! `uapi.go`): the settings a caller gives at creation ([`DeviceConfig`], also from a
//! binding's keyword arguments), the private key, listen port, fwmark and padding limit,
//! and the peers, changed one UAPI line at a time ([`PeerLine`]) and reported as `get=1`
//! does ([`PeerStatus`]). The text protocol itself is [`super::uapi`].
//!
//! Configuration changes are serialized by the device's configuration lock (as
//! wireguard-go's `ipcMutex`), so a `set` is never interleaved with another change.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::allowed_ips::IpNet;
use super::cookie::CookieChecker;
use super::crypto;
use super::device::{Device, PeerTable, Static};
use super::noise::Identity;
use super::peer::{lock, read, want, write, Peer};
use super::timers::Timing;
use crate::engine::error::{bail, Error, ErrorKind};
use crate::engine::Result;

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

impl DeviceConfig {
    /// The configuration a binding's constructor takes as keyword arguments: `timers`
    /// (name, value) pairs as [`Timing::set`] takes them (testing only), `force_under_load`
    /// (testing only) and `mtu` as [`mtu_limit`] takes it. The first bad pair or value is
    /// the error (`unknown_option` naming it, or `out_of_range`).
    pub fn from_options<K: AsRef<str>>(
        timers: impl IntoIterator<Item = (K, f64)>,
        force_under_load: bool,
        mtu: i128,
    ) -> Result<DeviceConfig> {
        let mut timing = Timing::default();
        for (name, value) in timers {
            timing.set(name.as_ref(), value)?;
        }
        Ok(DeviceConfig {
            timing,
            mtu: mtu_limit(mtu)?,
            force_under_load,
            ..DeviceConfig::default()
        })
    }
}

/// The padding limit from a TUN device's MTU as a caller gives it: 0 is no limit (pad to
/// a multiple of 16 always), 1..=65535 a limit; anything else `out_of_range`.
pub fn mtu_limit(mtu: i128) -> Result<Option<usize>> {
    match mtu {
        0 => Ok(None),
        1..=65535 => Ok(Some(mtu as usize)),
        _ => bail!(OutOfRange, "mtu must be 0 (no limit) to 65535, got {mtu}"),
    }
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
    /// `allowed_ip` lines, in the order they were added.
    pub allowed_ips: Vec<IpNet>,
}

/// One peer block being applied, line by line (wireguard-go's `ipcSetPeer`): the peer,
/// or `None` for a placeholder whose lines change nothing (a block for our own public
/// key, or after `remove` or `update_only` dropped the peer), and what the block did.
pub(crate) struct Section {
    peer: Option<Arc<Peer>>,
    created: bool,
    pka_on: bool,
}

impl Device {
    // ----- the device's lines ---------------------------------------------------------

    /// Sets the private key (clamped; all zeros: none) and derives the public key. As
    /// wireguard-go: a peer whose public key is our new one is removed, and every session
    /// whose static-static DH changes is expired.
    pub fn set_private_key(&self, key: &[u8; 32], _now: Instant) {
        let _config = lock(&self.config);
        self.apply_private_key(key);
    }

    /// [`set_private_key`](Self::set_private_key), the configuration lock held.
    pub(crate) fn apply_private_key(&self, key: &[u8; 32]) {
        let new = (!crypto::is_zero(key)).then(|| Zeroizing::new(crypto::clamp(*key)));
        let mut st = write(&self.static_);
        let same = match (&*st, &new) {
            (None, None) => true,
            (Some(s), Some(k)) => crypto::ct_eq(s.identity.secret.as_bytes(), &k[..]),
            _ => false,
        };
        if same {
            return;
        }
        let identity = new.as_ref().map(|k| Identity::new(k));
        let mut table = write(&self.peers);
        if let Some(id) = &identity {
            if let Some(me) = table.by_key.get(&id.public).cloned() {
                self.remove_peer_locked(&mut table, &me);
            }
        }
        for peer in table.by_key.values() {
            let mut hs = lock(&peer.handshake);
            let ss = identity
                .as_ref()
                .and_then(|id| crypto::dh(&id.secret, &peer.public_key));
            let changed = match (&hs.static_static, &ss) {
                (Some(a), Some(b)) => !crypto::ct_eq(&a[..], &b[..]),
                (None, None) => false,
                _ => true,
            };
            hs.static_static = ss;
            if changed {
                self.expire_current_keypairs(peer, &mut hs);
            }
        }
        *st = identity.map(|identity| Static {
            checker: CookieChecker::new(&identity.public),
            identity,
        });
    }

    /// The private key as stored (clamped), `None` if unset.
    pub fn private_key(&self) -> Option<[u8; 32]> {
        read(&self.static_)
            .as_ref()
            .map(|s| s.identity.secret.to_bytes())
    }

    /// The public key, `None` without a private key.
    pub fn public_key(&self) -> Option<[u8; 32]> {
        read(&self.static_).as_ref().map(|s| s.identity.public)
    }

    /// `listen_port`: stored and reported (the caller binds the sockets).
    pub fn set_listen_port(&self, port: u16) {
        self.listen_port.store(port, Relaxed);
    }

    /// The stored listen port (0: none).
    pub fn listen_port(&self) -> u16 {
        self.listen_port.load(Relaxed)
    }

    /// `fwmark`: stored and reported.
    pub fn set_fwmark(&self, mark: u32) {
        self.fwmark.store(mark, Relaxed);
    }

    /// The stored fwmark (0: none).
    pub fn fwmark(&self) -> u32 {
        self.fwmark.load(Relaxed)
    }

    /// Changes the padding limit ([`DeviceConfig::mtu`]; [`mtu_limit`] makes one from a
    /// number).
    pub fn set_mtu(&self, mtu: Option<usize>) {
        self.mtu.store(mtu.unwrap_or(0), Relaxed);
    }

    /// The padding limit.
    pub fn mtu(&self) -> Option<usize> {
        match self.mtu.load(Relaxed) {
            0 => None,
            m => Some(m),
        }
    }

    /// Turns [`DeviceConfig::force_under_load`] on or off.
    pub fn set_force_under_load(&self, on: bool) {
        self.force_under_load.store(on, Relaxed);
    }

    /// `replace_peers=true`: removes every peer (their keys zeroed, staged packets
    /// dropped).
    pub fn remove_all_peers(&self) {
        let _config = lock(&self.config);
        self.apply_remove_all_peers();
    }

    /// [`remove_all_peers`](Self::remove_all_peers), the configuration lock held.
    pub(crate) fn apply_remove_all_peers(&self) {
        let mut table = write(&self.peers);
        let all: Vec<Arc<Peer>> = table.by_key.values().cloned().collect();
        for p in &all {
            self.remove_peer_locked(&mut table, p);
        }
    }

    // ----- peers ------------------------------------------------------------------------

    /// One UAPI peer block: `public_key=` then `lines` in order, as [`uapi_set`] applies
    /// them, but every line is checked before any is applied (`protocol_version` other
    /// than 1: an error, nothing changed). The peer is created unless an
    /// [`PeerLine::UpdateOnly`] says not to; a block for our own public key is ignored.
    /// After the block, as wireguard-go: turning a persistent keepalive on queues a
    /// keepalive, and staged packets are sent if a session allows.
    ///
    /// [`uapi_set`]: Device::uapi_set
    pub fn set_peer(&self, public_key: &[u8; 32], lines: &[PeerLine], _now: Instant) -> Result<()> {
        for line in lines {
            if let PeerLine::ProtocolVersion(v) = line {
                if *v != 1 {
                    return Err(Error::new(
                        ErrorKind::BadProtocolVersion,
                        format!("protocol_version {v}: only 1 exists"),
                    ));
                }
            }
        }
        let _config = lock(&self.config);
        let mut section = self.begin_section(public_key);
        for line in lines {
            self.section_line(&mut section, line);
        }
        self.end_section(section);
        Ok(())
    }

    /// `public_key=` (wireguard-go's `handlePublicKeyLine`): the section of the peer with
    /// `public_key`, created if there is none; a placeholder for our own public key.
    /// Called with the configuration lock held.
    pub(crate) fn begin_section(&self, public_key: &[u8; 32]) -> Section {
        let st = read(&self.static_);
        let mut section = Section {
            peer: None,
            created: false,
            pka_on: false,
        };
        if st
            .as_ref()
            .is_some_and(|s| s.identity.public == *public_key)
        {
            return section;
        }
        let mut table = write(&self.peers);
        let peer = match table.by_key.get(public_key) {
            Some(p) => p.clone(),
            None => {
                let ss = st
                    .as_ref()
                    .and_then(|s| crypto::dh(&s.identity.secret, public_key));
                table.next_seq += 1;
                let p = Arc::new(Peer::new(*public_key, ss, table.next_seq));
                table.by_key.insert(*public_key, p.clone());
                section.created = true;
                p
            }
        };
        section.peer = Some(peer);
        section
    }

    /// One line of a peer section (wireguard-go's `handlePeerLine` once the value is
    /// parsed); nothing for a placeholder. Called with the configuration lock held.
    pub(crate) fn section_line(&self, section: &mut Section, line: &PeerLine) {
        let Some(peer) = section.peer.clone() else {
            return;
        };
        let owned = |v: &Arc<Peer>| Arc::ptr_eq(v, &peer);
        match line {
            PeerLine::UpdateOnly | PeerLine::Remove => {
                if section.created || *line == PeerLine::Remove {
                    self.remove_peer_locked(&mut write(&self.peers), &peer);
                    section.peer = None;
                }
            }
            PeerLine::PresharedKey(k) => *lock(&peer.handshake).preshared_key = *k,
            PeerLine::Endpoint(a) => *write(&peer.endpoint) = Some(*a),
            PeerLine::PersistentKeepalive(secs) => {
                let old = peer.persistent_keepalive.swap(*secs, Relaxed);
                section.pka_on = old == 0 && *secs != 0;
            }
            PeerLine::ReplaceAllowedIps => write(&self.peers).allowed.remove_by(owned),
            PeerLine::AllowedIp(net) => {
                let mut table = write(&self.peers);
                // (The configuration lock keeps the peer in the table; checked anyway, so
                // that no route ever names a removed peer.)
                if peer.running.load(Relaxed) {
                    table.allowed.insert(*net, peer.clone());
                }
            }
            PeerLine::RemoveAllowedIp(net) => {
                write(&self.peers).allowed.remove(*net, owned);
            }
            PeerLine::ProtocolVersion(_) => {}
        }
    }

    /// The end of a peer section (wireguard-go's `handlePostConfig`): a keepalive if the
    /// section turned a persistent keepalive on, and the staged packets sent if a session
    /// allows (both by the next [`tick`](Self::tick)).
    pub(crate) fn end_section(&self, section: Section) {
        let Some(peer) = section.peer else { return };
        if section.pka_on {
            self.ask(&peer, want::KEEPALIVE);
        }
        self.ask(&peer, want::FLUSH);
    }

    /// Removes a peer; `false` if there was none.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> bool {
        let _config = lock(&self.config);
        let mut table = write(&self.peers);
        let Some(peer) = table.by_key.get(public_key).cloned() else {
            return false;
        };
        self.remove_peer_locked(&mut table, &peer);
        true
    }

    /// Removes `peer` (its routes, index entries, keys and staged packets).
    pub(crate) fn remove_peer_locked(&self, table: &mut PeerTable, peer: &Arc<Peer>) {
        table.allowed.remove_by(|v| Arc::ptr_eq(v, peer));
        table.by_key.remove(&peer.public_key);
        peer.running.store(false, Relaxed);
        peer.timers.stop();
        self.zero_and_flush_all(peer);
    }

    /// Every peer, in the order they were added, as `get=1` reports them.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let table = read(&self.peers);
        let mut peers: Vec<&Arc<Peer>> = table.by_key.values().collect();
        peers.sort_by_key(|p| p.seq);
        peers
            .into_iter()
            .map(|p| PeerStatus {
                public_key: p.public_key,
                preshared_key: *lock(&p.handshake).preshared_key,
                endpoint: p.endpoint(),
                last_handshake: Duration::from_nanos(p.last_handshake.load(Relaxed)),
                tx_bytes: p.tx_bytes.load(Relaxed),
                rx_bytes: p.rx_bytes.load(Relaxed),
                persistent_keepalive_interval: p.persistent_keepalive.load(Relaxed),
                allowed_ips: table.allowed.entries_by(|v| Arc::ptr_eq(v, p)),
            })
            .collect()
    }
}

impl Timing {
    /// The names [`Timing::set`] takes: the fields, as wireguard-go's constants are named
    /// in lower case.
    pub const NAMES: [&'static str; 11] = [
        "rekey_after_time",
        "reject_after_time",
        "rekey_attempt_time",
        "rekey_timeout",
        "rekey_timeout_jitter",
        "keepalive_timeout",
        "cookie_refresh_time",
        "handshake_initiation_rate",
        "under_load_after_time",
        "rekey_after_messages",
        "reject_after_messages",
    ];

    /// The longest time [`Timing::set`] takes (a day): sums of a few of them stay far
    /// from `Duration`'s limit, so the timers' arithmetic cannot overflow.
    pub const MAX_TIME: Duration = Duration::from_secs(86_400);

    /// Sets the constant `name` (one of [`Timing::NAMES`]): a time in seconds, finite and
    /// above 0 (`rekey_timeout_jitter` may be 0), or for the `*_messages` counts a whole
    /// number from 1 to 2^64 - 1. An unknown name is `unknown_option`, a bad value
    /// `out_of_range`, each naming it.
    pub fn set(&mut self, name: &str, value: f64) -> Result<()> {
        if let Some(count) = match name {
            "rekey_after_messages" => Some(&mut self.rekey_after_messages),
            "reject_after_messages" => Some(&mut self.reject_after_messages),
            _ => None,
        } {
            // 2^64 as an f64: the first value past u64::MAX.
            if !((1.0..18_446_744_073_709_551_616.0).contains(&value) && value.fract() == 0.0) {
                bail!(
                    OutOfRange,
                    "timer {name} must be a whole number of messages from 1 to 2^64 - 1, \
                     got {value}"
                );
            }
            *count = value as u64;
            return Ok(());
        }
        let time = match name {
            "rekey_after_time" => &mut self.rekey_after_time,
            "reject_after_time" => &mut self.reject_after_time,
            "rekey_attempt_time" => &mut self.rekey_attempt_time,
            "rekey_timeout" => &mut self.rekey_timeout,
            "rekey_timeout_jitter" => &mut self.rekey_timeout_jitter,
            "keepalive_timeout" => &mut self.keepalive_timeout,
            "cookie_refresh_time" => &mut self.cookie_refresh_time,
            "handshake_initiation_rate" => &mut self.handshake_initiation_rate,
            "under_load_after_time" => &mut self.under_load_after_time,
            _ => bail!(
                UnknownOption,
                "no timer named {name:?} (the timers: {})",
                Timing::NAMES.join(", ")
            ),
        };
        let zero_ok = name == "rekey_timeout_jitter";
        match Duration::try_from_secs_f64(value) {
            Ok(d) if (!d.is_zero() || zero_ok) && d <= Timing::MAX_TIME => *time = d,
            _ => bail!(
                OutOfRange,
                "timer {name} must be a number of seconds above 0 and at most {}, got {value}",
                Timing::MAX_TIME.as_secs()
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_bad_one() {
        let c = DeviceConfig::from_options(
            [("rekey_after_time", 5.0), ("rekey_after_messages", 100.0)],
            true,
            1420,
        )
        .unwrap();
        assert_eq!(c.timing.rekey_after_time, Duration::from_secs(5));
        assert_eq!(c.timing.rekey_after_messages, 100);
        assert_eq!(
            c.timing.reject_after_time,
            Timing::default().reject_after_time
        );
        assert!(c.force_under_load);
        assert_eq!(c.mtu, Some(1420));
        // Names owned (a binding's dict) as well as borrowed.
        let owned = std::collections::HashMap::from([("rekey_timeout".to_string(), 1.0)]);
        let c = DeviceConfig::from_options(owned, false, 0).unwrap();
        assert_eq!(c.timing.rekey_timeout, Duration::from_secs(1));
        assert_eq!(
            DeviceConfig::from_options([("", 0.0); 0], false, 0)
                .unwrap()
                .mtu,
            None
        );
        let cases: &[(&str, f64, i128, ErrorKind, &str)] = &[
            (
                "rekey_after",
                5.0,
                0,
                ErrorKind::UnknownOption,
                "rekey_after",
            ),
            (
                "rekey_timeout",
                0.0,
                0,
                ErrorKind::OutOfRange,
                "rekey_timeout",
            ),
            (
                "rekey_timeout",
                -1.0,
                0,
                ErrorKind::OutOfRange,
                "rekey_timeout",
            ),
            (
                "rekey_timeout",
                f64::NAN,
                0,
                ErrorKind::OutOfRange,
                "rekey_timeout",
            ),
            // Past a day: the timers' sums would overflow (1e19 s panicked in tick).
            (
                "reject_after_time",
                1e19,
                0,
                ErrorKind::OutOfRange,
                "reject_after_time",
            ),
            (
                "rekey_timeout_jitter",
                86_401.0,
                0,
                ErrorKind::OutOfRange,
                "rekey_timeout_jitter",
            ),
            (
                "keepalive_timeout",
                f64::INFINITY,
                0,
                ErrorKind::OutOfRange,
                "keepalive",
            ),
            (
                "rekey_after_messages",
                1.5,
                0,
                ErrorKind::OutOfRange,
                "whole number",
            ),
            (
                "reject_after_messages",
                0.0,
                0,
                ErrorKind::OutOfRange,
                "reject_after",
            ),
            (
                "reject_after_messages",
                2f64.powi(64),
                0,
                ErrorKind::OutOfRange,
                "2^64",
            ),
            ("rekey_timeout", 1.0, 65536, ErrorKind::OutOfRange, "mtu"),
            ("rekey_timeout", 1.0, -1, ErrorKind::OutOfRange, "mtu"),
        ];
        for &(name, value, mtu, kind, says) in cases {
            let e = DeviceConfig::from_options([(name, value)], false, mtu).unwrap_err();
            assert_eq!(e.kind(), kind, "{name}={value} mtu {mtu}: {e}");
            assert!(e.message().contains(says), "{e}");
        }
        let mut t = Timing::default();
        t.set("rekey_timeout_jitter", 0.0).unwrap();
        assert_eq!(t.rekey_timeout_jitter, Duration::ZERO);
        for name in Timing::NAMES {
            Timing::default().set(name, 2.0).unwrap();
        }
    }
}
