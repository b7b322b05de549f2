//! A session: its transport keys as the aead module's [`Sealer`] and [`Opener`], and the
//! current / previous / next slots of a peer (wireguard-go's `keypair.go`).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use super::noise::SessionKeys;
use super::timers::{nanos, Nanos, Timing};
use crate::aead::{Key, Opener, Sealer};

/// One session's keys and facts. Its key material lives in the [`Sealer`] and
/// [`Opener`], which zero it when the last reference to the keypair is dropped.
pub(crate) struct Keypair {
    pub(crate) sealer: Sealer,
    pub(crate) opener: Opener,
    /// When the session was derived.
    pub(crate) created: Nanos,
    pub(crate) is_initiator: bool,
    /// Our index: the receiver index of the messages the peer sends us.
    pub(crate) local_index: u32,
    /// Sending refused from now on (wireguard-go's `sendNonce = RejectAfterMessages` when
    /// the private key changes).
    pub(crate) send_expired: AtomicBool,
    /// The keypair is or was current, or can no longer become current. A responder's new
    /// keypair waits in `next` (unconfirmed) until the initiator's first message arrives
    /// under it; one that left `next` otherwise is marked by the first message under it
    /// ([`Keypairs::confirm`]), so that later ones skip the write lock.
    pub(crate) confirmed: AtomicBool,
}

impl Keypair {
    /// The keypair of a new session at `now`.
    pub(crate) fn new(keys: &SessionKeys, now: Nanos) -> Keypair {
        let send = Key::from(*keys.send);
        let recv = Key::from(*keys.recv);
        Keypair {
            sealer: Sealer::new(&send, keys.remote_index),
            opener: Opener::new(&recv, keys.local_index),
            created: now,
            is_initiator: keys.is_initiator,
            local_index: keys.local_index,
            send_expired: AtomicBool::new(false),
            confirmed: AtomicBool::new(keys.is_initiator),
        }
    }

    /// How long ago it was derived.
    pub(crate) fn age(&self, now: Nanos) -> Nanos {
        now.saturating_sub(self.created)
    }

    /// Whether it may still seal: not expired, fewer than REJECT_AFTER_MESSAGES sent,
    /// younger than REJECT_AFTER_TIME (`SendStagedPackets`' test).
    pub(crate) fn can_send(&self, now: Nanos, t: &Timing) -> bool {
        !self.send_expired.load(Relaxed)
            && self.sealer.next_counter() < t.reject_after_messages
            && self.age(now) < nanos(t.reject_after_time)
    }

    /// Whether messages under it are still accepted (younger than REJECT_AFTER_TIME).
    pub(crate) fn can_receive(&self, now: Nanos, t: &Timing) -> bool {
        self.age(now) <= nanos(t.reject_after_time)
    }

    /// `keepKeyFreshSending`: time for a new handshake after sending with it.
    pub(crate) fn wants_rekey_on_send(&self, now: Nanos, t: &Timing) -> bool {
        self.sealer.next_counter() > t.rekey_after_messages
            || (self.is_initiator && self.age(now) > nanos(t.rekey_after_time))
    }

    /// `keepKeyFreshReceiving`'s test: an initiator's session near REJECT_AFTER_TIME.
    pub(crate) fn wants_rekey_on_receive(&self, now: Nanos, t: &Timing) -> bool {
        let limit = t
            .reject_after_time
            .saturating_sub(t.keepalive_timeout)
            .saturating_sub(t.rekey_timeout);
        self.is_initiator && self.age(now) > nanos(limit)
    }
}

/// A peer's sessions.
#[derive(Default)]
pub(crate) struct Keypairs {
    /// The one we send with.
    pub(crate) current: Option<Arc<Keypair>>,
    /// The one before, still accepted for messages in flight.
    pub(crate) previous: Option<Arc<Keypair>>,
    /// A responder's new session, until confirmed.
    pub(crate) next: Option<Arc<Keypair>>,
}

impl Keypairs {
    /// Installs a new session as wireguard-go's `BeginSymmetricSession` rotates them;
    /// returns the keypairs it dropped (whose indices the caller removes).
    pub(crate) fn install(&mut self, kp: Arc<Keypair>) -> [Option<Arc<Keypair>>; 2] {
        if kp.is_initiator {
            let dropped_current;
            let old_previous;
            if let Some(next) = self.next.take() {
                old_previous = self.previous.replace(next);
                dropped_current = self.current.take();
            } else {
                old_previous = std::mem::replace(&mut self.previous, self.current.take());
                dropped_current = None;
            }
            self.current = Some(kp);
            [dropped_current, old_previous]
        } else {
            let old_next = self.next.replace(kp);
            [old_next, self.previous.take()]
        }
    }

    /// `ReceivedWithKeypair`: if `kp` is the unconfirmed next one, it becomes current
    /// (current becomes previous). Returns whether it did, and the dropped previous.
    pub(crate) fn confirm(&mut self, kp: &Arc<Keypair>) -> (bool, Option<Arc<Keypair>>) {
        if !self.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, kp)) {
            // Not the next one (any more: a session of ours replaced it): nothing will
            // confirm it, and its messages need not take this lock again.
            kp.confirmed.store(true, Relaxed);
            return (false, None);
        }
        kp.confirmed.store(true, Relaxed);
        let old = std::mem::replace(&mut self.previous, self.current.take());
        self.current = self.next.take();
        (true, old)
    }

    /// Takes all three out (zeroing a peer's sessions).
    pub(crate) fn take_all(&mut self) -> [Option<Arc<Keypair>>; 3] {
        [self.previous.take(), self.current.take(), self.next.take()]
    }
}
