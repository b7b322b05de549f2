//! The TUN-to-UDP data path ([`Device::encrypt`]), wireguard-go's `RoutineReadFromTUN`,
//! `SendStagedPackets` and the encryption routine for one batch: one allowed-IPs lookup,
//! one seal of the whole batch with the peer's current session.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::device::{Device, Encrypted};
use super::peer::{read, want, Peer};
use crate::aead::{check_batch, make_room, HEADER_LEN};
use crate::engine::error::ErrorKind;
use crate::engine::{Buffers, Error, ExpandBuffer, Result};
use crate::hooks::Hooks;

/// The destination address of an IP packet, if it is one (version 4 with at least 20
/// bytes, or 6 with at least 40).
pub(crate) fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[16..20]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).ok()?)),
        _ => None,
    }
}

impl Device {
    /// Refuses (`mixed_peers`) a batch in which a packet after the first routes to
    /// another peer than `peer` (the first's, for `dst`), or is not an IP packet: sealed
    /// for `peer`, it would be readable by the wrong peer. A TUN read (one super-packet, one
    /// flow) never is; each packet costs a comparison of its destination with `dst`, and
    /// a lookup only when they differ.
    fn check_one_peer<B: ExpandBuffer>(
        &self,
        bufs: &[B],
        offset: usize,
        sizes: &[usize],
        dst: IpAddr,
        peer: &Arc<Peer>,
    ) -> Result<()> {
        for (i, (b, &n)) in bufs.iter().zip(sizes).enumerate().skip(1) {
            let same = match destination(&b.bytes()[offset..offset + n]) {
                Some(d) if d == dst => true,
                Some(d) => read(&self.peers)
                    .allowed
                    .lookup(&d)
                    .is_some_and(|p| Arc::ptr_eq(p, peer)),
                None => false,
            };
            if !same {
                let m = format!(
                    "packet {i} does not route to the peer of packet 0: a batch is sealed for \
                     one peer"
                );
                return Err(Error::new(ErrorKind::MixedPeers, m).at(i));
            }
        }
        Ok(())
    }

    /// Seals a batch of packets from the TUN device for the peer of the first packet's
    /// destination. See the module doc. Errors (nothing sealed or staged): `offset < 16`
    /// (`offset_too_small`), more `sizes` than `bufs` (`count_too_large`), a packet past
    /// its buffer (`buffer_too_small`), a buffer that cannot grow for padding and tag
    /// (`out_buf_too_small`), a packet that routes to another peer than the first
    /// (`mixed_peers`).
    pub fn encrypt<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        offset: usize,
        sizes: &mut [usize],
        now: Instant,
    ) -> Result<Encrypted> {
        check_batch(bufs, offset, sizes, HEADER_LEN, "packet")?;
        let Some(&first) = sizes.first() else {
            return Ok(Encrypted::NoRoute);
        };
        let Some(dst) = destination(&bufs[0].bytes()[offset..offset + first]) else {
            self.count(|c| &c.tx_not_ip, 1);
            return Ok(Encrypted::NoRoute);
        };
        let peer: Option<Arc<Peer>> = read(&self.peers).allowed.lookup(&dst).cloned();
        let Some(peer) = peer.filter(|p| p.running.load(Relaxed)) else {
            self.count(|c| &c.tx_no_route, 1);
            return Ok(Encrypted::NoRoute);
        };
        self.check_one_peer(bufs, offset, sizes, dst, &peer)?;
        let t = self.nanos(now);
        let kp = read(&peer.keypairs).current.clone();
        if let (Some(kp), Some(endpoint)) = (kp, peer.endpoint()) {
            if kp.can_send(t, &self.timing) {
                if peer.staged_len.load(Relaxed) > 0 {
                    // Older packets wait: the control thread sends them next.
                    self.ask(&peer, want::FLUSH);
                }
                match kp.sealer.seal(bufs, offset, sizes, self.mtu()) {
                    Ok(count) => {
                        let bytes: usize = sizes.iter().sum();
                        peer.tx_bytes.fetch_add(bytes as u64, Relaxed);
                        let keepalive = peer.persistent_keepalive.load(Relaxed);
                        peer.timers.any_authenticated_packet_traversal(t, keepalive);
                        peer.timers.any_authenticated_packet_sent();
                        let jitter = self.jitter.below(self.timing.rekey_timeout_jitter);
                        peer.timers.data_sent(t, &self.timing, jitter);
                        // (Not while our initiation is out: it is retried on its timer.)
                        let rekey = kp.wants_rekey_on_send(t, &self.timing)
                            && !peer.timers.retransmit_handshake.is_pending();
                        if rekey {
                            self.ask(&peer, want::HANDSHAKE);
                        }
                        let wake = rekey || peer.staged_len.load(Relaxed) > 0;
                        return Ok(Encrypted::Send {
                            endpoint,
                            count,
                            wake,
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::KeyExhausted => {
                        kp.send_expired.store(true, Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let packets = bufs
            .iter()
            .zip(sizes.iter())
            .map(|(b, &n)| &b.bytes()[offset..offset + n]);
        self.count(|c| &c.tx_staged_dropped, peer.stage(packets));
        self.count(|c| &c.tx_staged, sizes.len() as u64);
        self.ask(&peer, want::FLUSH);
        Ok(Encrypted::Staged)
    }

    /// [`encrypt`](Self::encrypt) on a caller's [`Buffers`] (a binding's list of
    /// `bytearray`s), packet `i` at `bufs[i][offset..offset + sizes[i]]` for `i <
    /// sizes.len()`. The buffers are converted once; each keeps its length, a buffer
    /// too short for its message grows (where it can) before anything is sealed; buffers
    /// that share memory are refused (`overlapping_buffers`), as are more `sizes` than
    /// `bufs` (`count_too_large`). When `hooks` finds the batch worth it
    /// ([`Hooks::worth_releasing`] of its bytes), the buffers are pinned and the sealing
    /// runs through [`Hooks::work`] (the binding releases the GIL). `sizes` become the
    /// messages' lengths, as with `encrypt`.
    pub fn encrypt_with<E, L, H>(
        &self,
        bufs: &mut L,
        offset: usize,
        sizes: &mut [usize],
        now: Instant,
        hooks: &mut H,
    ) -> std::result::Result<Encrypted, E>
    where
        E: From<Error>,
        L: Buffers<E> + ?Sized,
        H: Hooks<E> + ?Sized,
    {
        let n = sizes.len();
        // (Fewer bufs than sizes: all of them converted, for check_batch to refuse.)
        let b = bufs.bufs(n.min(bufs.count()), true, offset)?;
        check_batch(b, offset, sizes, HEADER_LEN, "packet")?;
        let bytes = make_room(b, offset, sizes, self.mtu())?; // so pinned ones need not grow
        if hooks.worth_releasing(bytes) {
            let r = bufs.pinned(n, |w| hooks.work(|| self.encrypt(w, offset, sizes, now)))?;
            return Ok(r?);
        }
        Ok(self.encrypt(bufs.bufs(n, true, offset)?, offset, sizes, now)?)
    }
}
