//! The UDP-to-TUN data path ([`Device::decrypt`]), wireguard-go's
//! `RoutineReceiveIncoming`, decryption and `RoutineSequentialReceiver` for one batch:
//! the aead module's [`open_batch`] with a [`Sessions`] over the index table, the
//! allowed-IPs check of each packet's inner source, roaming, counters and timers per run
//! of messages from one peer, and the handshake messages kept for the control path.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::allowed_ips::AllowedIps;
use super::device::{Decrypted, Device};
use super::index_table::IndexTable;
use super::keypair::Keypair;
use super::messages::control_type;
use super::peer::{read, want, write, Peer};
use crate::aead::{open_batch, parse_header, Header, Opener, Sessions};
use crate::engine::error::bail;
use crate::engine::{ExpandBuffer, Result};

thread_local! {
    /// Per thread, reused: the sources of the batch's handshake messages in arrival
    /// order, and the batch's message sizes as passed in.
    static SCRATCH: RefCell<(Vec<Option<SocketAddr>>, Vec<usize>)> = const {
        RefCell::new((Vec::new(), Vec::new()))
    };
}

/// The inner source address of an opened IP packet (the aead module checked its version
/// and length): its bytes and family.
fn source(packet: &[u8]) -> Option<([u8; 16], bool)> {
    let mut a = [0u8; 16];
    match packet.first()? >> 4 {
        4 => {
            a[..4].copy_from_slice(packet.get(12..16)?);
            Some((a, false))
        }
        6 => {
            a.copy_from_slice(packet.get(8..24)?);
            Some((a, true))
        }
        _ => None,
    }
}

/// What one peer's messages of a run did, applied when the run ends.
struct Run<'a> {
    peer: &'a Arc<Peer>,
    bytes: u64,
    data: bool,
    source: Option<SocketAddr>,
}

/// The [`Sessions`] of one batch: lookups in the index table (held read-locked for the
/// batch), the allowed-IPs check, and the bookkeeping per peer.
struct Rx<'a> {
    dev: &'a Device,
    now: Instant,
    t: u64,
    index: &'a IndexTable,
    allowed: &'a AllowedIps<Arc<Peer>>,
    sources: &'a [Option<SocketAddr>],
    sizes: &'a [usize],
    run: Option<Run<'a>>,
    unknown: u64,
    expired: u64,
    /// The last source address checked and whether it was the peer's.
    checked: Option<(&'a Arc<Peer>, [u8; 16], bool, bool)>,
    /// Keypairs dropped by a confirmation, whose indices go once the table is unlocked.
    to_remove: Vec<Arc<Keypair>>,
    wake: bool,
}

impl<'a> Rx<'a> {
    /// Applies the current run to its peer: rx bytes, roaming, the receive-side rekey,
    /// the timers.
    fn end_run(&mut self) {
        let Some(run) = self.run.take() else { return };
        let (dev, peer, t) = (self.dev, run.peer, self.t);
        peer.rx_bytes.fetch_add(run.bytes, Relaxed);
        if let Some(src) = run.source {
            peer.roam(src);
        }
        // keepKeyFreshReceiving.
        if !peer.timers.sent_last_minute_handshake.load(Relaxed) {
            let current = read(&peer.keypairs).current.clone();
            if current.is_some_and(|kp| kp.wants_rekey_on_receive(t, &dev.timing)) {
                peer.timers.sent_last_minute_handshake.store(true, Relaxed);
                dev.ask(peer, want::HANDSHAKE);
                self.wake = true;
            }
        }
        let keepalive = peer.persistent_keepalive.load(Relaxed);
        peer.timers.any_authenticated_packet_traversal(t, keepalive);
        peer.timers.any_authenticated_packet_received();
        if run.data {
            peer.timers.data_received(t, &dev.timing);
        }
    }

    /// `ReceivedWithKeypair`: the first message under a responder's new session makes it
    /// current.
    fn confirm(&mut self, peer: &Arc<Peer>, kp: &Arc<Keypair>) {
        let (done, old) = write(&peer.keypairs).confirm(kp);
        if done {
            self.to_remove.extend(old);
            self.dev.handshake_complete(peer, self.now);
            self.dev.ask(peer, want::FLUSH);
            self.wake = true;
        }
    }
}

/// A session found by its receiver index: the peer and the keypair.
type Session<'a> = (&'a Arc<Peer>, &'a Arc<Keypair>);

impl<'a> Sessions for Rx<'a> {
    type Session = Session<'a>;

    fn lookup(&mut self, receiver: u32) -> Option<Session<'a>> {
        let Some(e) = self.index.get(receiver) else {
            self.unknown += 1;
            return None;
        };
        let Some(kp) = &e.keypair else {
            self.unknown += 1;
            return None;
        };
        if !kp.can_receive(self.t, &self.dev.timing) {
            self.expired += 1;
            return None;
        }
        Some((&e.peer, kp))
    }

    fn opener(session: &Session<'a>) -> &'a Opener {
        &session.1.opener
    }

    fn authenticated(&mut self, index: usize, session: &Session<'a>) {
        let (peer, kp) = *session;
        if !self.run.as_ref().is_some_and(|r| Arc::ptr_eq(r.peer, peer)) {
            self.end_run();
            self.run = Some(Run {
                peer,
                bytes: 0,
                data: false,
                source: None,
            });
        }
        if let Some(run) = self.run.as_mut() {
            run.bytes += self.sizes.get(index).copied().unwrap_or(0) as u64;
            if let Some(src) = self.sources.get(index).copied().flatten() {
                run.source = Some(src);
            }
        }
        if !kp.confirmed.load(Relaxed) {
            self.confirm(peer, kp);
        }
    }

    fn accept(&mut self, _index: usize, session: &Session<'a>, packet: &[u8]) -> bool {
        let peer = session.0;
        if let Some(run) = self.run.as_mut() {
            run.data = true;
        }
        let Some((addr, v6)) = source(packet) else {
            return false;
        };
        if let Some((p, a, six, ok)) = self.checked {
            if Arc::ptr_eq(p, peer) && a == addr && six == v6 {
                return ok;
            }
        }
        let owner = if v6 {
            self.allowed.lookup_v6(addr)
        } else {
            self.allowed.lookup_v4([addr[0], addr[1], addr[2], addr[3]])
        };
        let ok = owner.is_some_and(|p| Arc::ptr_eq(p, peer));
        self.checked = Some((peer, addr, v6, ok));
        ok
    }
}

impl Device {
    /// Opens a batch of datagrams from the UDP socket in place and compacts it. See the
    /// module doc. Errors (nothing changed): fewer `sources` than `sizes`
    /// (`too_few_addresses`), more `sizes` than `bufs` (`count_too_large`), a message past
    /// its buffer (`buffer_too_small`).
    pub fn decrypt<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        offset: usize,
        sizes: &mut [usize],
        sources: &mut [Option<SocketAddr>],
        now: Instant,
    ) -> Result<Decrypted> {
        let n = sizes.len();
        if sources.len() < n {
            bail!(
                TooFewAddresses,
                "{} sources for {n} datagrams (one source address per datagram)",
                sources.len()
            );
        }
        SCRATCH.with(|scratch| {
            let (ctrl, sizes0) = &mut *scratch.borrow_mut();
            // The handshake messages' sources in arrival order, and the sizes as passed in.
            ctrl.clear();
            sizes0.clear();
            sizes0.extend_from_slice(sizes);
            for i in 0..n.min(bufs.len()) {
                let msg = bufs[i]
                    .bytes()
                    .get(offset..)
                    .and_then(|b| b.get(..sizes[i]));
                if msg.and_then(control_type).is_some() {
                    ctrl.push(sources[i]);
                }
            }
            let t = self.nanos(now);
            let (opened, rx) = {
                let peers = read(&self.peers);
                let index = read(&self.index);
                let mut rx = Rx {
                    dev: self,
                    now,
                    t,
                    index: &index,
                    allowed: &peers.allowed,
                    sources,
                    sizes: sizes0,
                    run: None,
                    unknown: 0,
                    expired: 0,
                    checked: None,
                    to_remove: Vec::new(),
                    wake: false,
                };
                let opened = open_batch(&mut rx, bufs, offset, sizes)?;
                rx.end_run();
                (
                    opened,
                    (
                        rx.unknown,
                        rx.expired,
                        std::mem::take(&mut rx.to_remove),
                        rx.wake,
                    ),
                )
            };
            let (unknown, expired, to_remove, wake) = rx;
            if !to_remove.is_empty() {
                let mut index = super::peer::write(&self.index);
                for kp in &to_remove {
                    index.remove(kp.local_index);
                }
            }
            // Keep the handshake messages among the others, in order; drop the rest.
            let (p, o) = (opened.packets, opened.other);
            let mut c = 0;
            let mut junk = 0;
            for j in p..p + o {
                let Some(msg) = bufs[j]
                    .bytes()
                    .get(offset..)
                    .and_then(|b| b.get(..sizes[j]))
                else {
                    junk += 1;
                    continue;
                };
                if control_type(msg).is_some() && c < ctrl.len() {
                    bufs.swap(p + c, j);
                    sizes.swap(p + c, j);
                    sources[p + c] = ctrl[c];
                    c += 1;
                } else if !matches!(parse_header(msg), Header::Transport { .. }) {
                    // Transport data for no session was counted by the lookup.
                    junk += 1;
                }
            }
            for s in &mut sizes[p + c..] {
                *s = 0;
            }
            let st = &opened.stats;
            self.count(|c| &c.rx_packets, st.packets);
            self.count(|c| &c.rx_keepalives, st.keepalives);
            self.count(|c| &c.rx_forged, st.dropped_forged);
            self.count(|c| &c.rx_replayed, st.dropped_replayed);
            self.count(|c| &c.rx_malformed, st.dropped_malformed);
            self.count(|c| &c.rx_filtered, st.dropped_filtered);
            self.count(|c| &c.rx_unknown_index, unknown);
            self.count(|c| &c.rx_expired, expired);
            self.count(|c| &c.rx_junk, junk);
            Ok(Decrypted {
                packets: p,
                control: c,
                wake,
            })
        })
    }
}
