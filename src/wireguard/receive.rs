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
use super::messages::{control_type, MESSAGE_COOKIE_REPLY};
use super::peer::{read, want, write, Peer};
use crate::aead::{check_batch, open_batch, parse_header, Header, Opener, Sessions};
use crate::engine::error::bail;
use crate::engine::{Buffers, Error, ExpandBuffer, Result};
use crate::hooks::Hooks;

/// A handshake message of the batch, in arrival order: its source if it is kept for
/// [`Device::handle_control`], `None` if it was dropped (a bad mac1).
type Control = Option<Option<SocketAddr>>;

thread_local! {
    /// Per thread, reused: the batch's handshake messages in arrival order, and its
    /// message sizes as passed in.
    static SCRATCH: RefCell<(Vec<Control>, Vec<usize>)> = const {
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
            // The handshake messages in arrival order (the ones with a bad mac1 dropped
            // here, so that only messages made for our public key reach the caller), and
            // the sizes as passed in.
            ctrl.clear();
            sizes0.clear();
            sizes0.extend_from_slice(sizes);
            let mut bad_mac1 = 0;
            let mut st = None;
            let mut checked = None;
            for i in 0..n.min(bufs.len()) {
                let msg = bufs[i]
                    .bytes()
                    .get(offset..)
                    .and_then(|b| b.get(..sizes[i]));
                let Some((msg, kind)) = msg.and_then(|m| Some((m, control_type(m)?))) else {
                    continue;
                };
                // A cookie reply has no mac1 (its seal is checked by `handle_control`).
                let st = st.get_or_insert_with(|| read(&self.static_));
                let ok = kind == MESSAGE_COOKIE_REPLY
                    || st.as_ref().is_some_and(|s| {
                        checked = Some(s.checker.verdict());
                        s.checker.check_mac1(msg)
                    });
                bad_mac1 += u64::from(!ok);
                ctrl.push(ok.then_some(sources[i]));
            }
            drop(st);
            self.count(|c| &c.hs_bad_mac1, bad_mac1);
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
            let mut seen = 0;
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
                if control_type(msg).is_some() {
                    // Counted above when its mac1 was bad.
                    if let Some(Some(src)) = ctrl.get(seen) {
                        bufs.swap(p + c, j);
                        sizes.swap(p + c, j);
                        sources[p + c] = *src;
                        c += 1;
                    }
                    seen += 1;
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
                mac1: checked,
            })
        })
    }

    /// [`decrypt`](Self::decrypt) on a caller's [`Buffers`] (a binding's list of
    /// `bytearray`s), datagram `i` at `bufs[i][offset..offset + sizes[i]]` from
    /// `sources[i]` for `i < sizes.len()` (a binding's `RecvMeta` holds `sources`). The
    /// buffers are converted once and keep their lengths; buffers that share memory are
    /// refused (`overlapping_buffers`), as are more `sizes` than `bufs`
    /// (`count_too_large`) or `sources` (`too_few_addresses`) and a datagram past its
    /// buffer (`buffer_too_small`), before anything changes. When `hooks` finds the batch
    /// worth it ([`Hooks::worth_releasing`] of its bytes), the buffers are pinned and the
    /// opening runs through [`Hooks::work`] (the binding releases the GIL). Afterwards the
    /// caller's entries are in the compacted order ([`Buffers::reorder`]), as `sizes`.
    pub fn decrypt_with<E, L, H>(
        &self,
        bufs: &mut L,
        offset: usize,
        sizes: &mut [usize],
        sources: &mut [Option<SocketAddr>],
        now: Instant,
        hooks: &mut H,
    ) -> std::result::Result<Decrypted, E>
    where
        E: From<Error>,
        L: Buffers<E> + ?Sized,
        H: Hooks<E> + ?Sized,
    {
        let n = sizes.len();
        // (Fewer bufs than sizes: all of them converted, for check_batch to refuse.)
        let b = bufs.bufs(n.min(bufs.count()), true, usize::MAX)?;
        check_batch(b, offset, sizes, 0, "message")?;
        let r = if hooks.worth_releasing(sizes.iter().sum()) {
            bufs.pinned(n, |w| {
                hooks.work(|| self.decrypt(w, offset, sizes, sources, now))
            })??
        } else {
            self.decrypt(bufs.bufs(n, true, usize::MAX)?, offset, sizes, sources, now)?
        };
        bufs.reorder()?;
        Ok(r)
    }
}
