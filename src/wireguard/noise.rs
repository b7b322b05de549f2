//! Noise_IKpsk2 as WireGuard uses it (whitepaper 5.4.2 to 5.4.5, wireguard-go's
//! `noise-protocol.go`): the handshake state of one peer, the initiation and the
//! response in both roles, and the derivation of a session's transport keys.
//!
//! These functions fill and check the Noise fields only; mac1 and mac2 are the
//! `cookie` module's, the index table and the session slots are the device's. Every
//! secret (chaining key, hash, ephemeral key, pre-shared key, static-static DH) is zeroed
//! when the handshake is cleared or dropped.

use std::sync::OnceLock;

use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use super::crypto::{self, Secret, HASH_LEN, TAG_LEN};
use super::messages::*;
use super::tai64n::{self, Tai64n};
use super::timers::Nanos;

/// The Noise protocol name, whose hash is the initial chaining key.
pub(crate) const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's identifier, mixed into the initial hash.
pub(crate) const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

/// `(initial chaining key, initial hash)`.
fn initial() -> &'static ([u8; HASH_LEN], [u8; HASH_LEN]) {
    static INITIAL: OnceLock<([u8; HASH_LEN], [u8; HASH_LEN])> = OnceLock::new();
    INITIAL.get_or_init(|| {
        let ck = crypto::hash(&[CONSTRUCTION]);
        let h = crypto::hash(&[&ck, IDENTIFIER]);
        (ck, h)
    })
}

/// The device's static key pair.
pub(crate) struct Identity {
    /// The private key (zeroed on drop by x25519-dalek).
    pub(crate) secret: StaticSecret,
    /// Its public key.
    pub(crate) public: [u8; 32],
}

impl Identity {
    /// The identity of a (clamped) private key.
    pub(crate) fn new(private: &[u8; 32]) -> Identity {
        let secret = StaticSecret::from(*private);
        let public = crypto::public_key(&secret);
        Identity { secret, public }
    }
}

/// Where a peer's handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Zeroed,
    InitiationCreated,
    InitiationConsumed,
    ResponseCreated,
    ResponseConsumed,
}

/// One peer's handshake state (wireguard-go's `Handshake`).
pub(crate) struct Handshake {
    pub(crate) state: State,
    hash: [u8; HASH_LEN],
    chain_key: [u8; HASH_LEN],
    local_ephemeral: Option<StaticSecret>,
    remote_ephemeral: [u8; 32],
    /// Our index of the handshake in progress (0: none).
    pub(crate) local_index: u32,
    /// The peer's index (the sender field of its last message).
    pub(crate) remote_index: u32,
    /// The peer's public key.
    pub(crate) remote_static: [u8; 32],
    /// `DH(our private key, the peer's public key)`; `None` without a private key or for
    /// a low-order public key (no handshake is possible then).
    pub(crate) static_static: Option<Secret>,
    /// The pre-shared key (zeros: none).
    pub(crate) preshared_key: Secret,
    /// The latest initiation timestamp accepted from the peer.
    pub(crate) last_timestamp: Tai64n,
    /// When the last initiation from the peer was accepted.
    pub(crate) last_initiation_consumption: Option<Nanos>,
    /// When we last sent an initiation or a response.
    pub(crate) last_sent_handshake: Option<Nanos>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.hash.zeroize();
        self.chain_key.zeroize();
        self.remote_ephemeral.zeroize();
    }
}

/// The transport keys of a new session.
pub(crate) struct SessionKeys {
    pub(crate) send: Secret,
    pub(crate) recv: Secret,
    pub(crate) is_initiator: bool,
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
}

/// Why an initiation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitiationRefused {
    /// It does not authenticate (or no static-static DH).
    Invalid,
    /// Its timestamp is not after the last accepted one.
    Replay,
    /// It came within the initiation rate of the last accepted one.
    Flood,
}

/// An initiation whose static key decrypted: who sent it, and the state so far.
pub(crate) struct InitiationStatic {
    /// The initiator's public key.
    pub(crate) peer: [u8; 32],
    hash: [u8; HASH_LEN],
    chain_key: Secret,
}

impl Drop for InitiationStatic {
    fn drop(&mut self) {
        self.hash.zeroize();
    }
}

fn mix_hash(h: &mut [u8; HASH_LEN], data: &[u8]) {
    *h = crypto::hash(&[&h[..], data]);
}

impl Handshake {
    /// A fresh handshake with `remote_static`, given the static-static DH.
    pub(crate) fn new(remote_static: [u8; 32], static_static: Option<Secret>) -> Handshake {
        Handshake {
            state: State::Zeroed,
            hash: [0; HASH_LEN],
            chain_key: [0; HASH_LEN],
            local_ephemeral: None,
            remote_ephemeral: [0; 32],
            local_index: 0,
            remote_index: 0,
            remote_static,
            static_static,
            preshared_key: Zeroizing::new([0; 32]),
            last_timestamp: Tai64n::default(),
            last_initiation_consumption: None,
            last_sent_handshake: None,
        }
    }

    /// Forgets the handshake in progress (wireguard-go's `Clear`): zeroes the ephemeral
    /// keys, hash and chaining key, index 0, state zeroed.
    pub(crate) fn clear(&mut self) {
        self.local_ephemeral = None;
        self.remote_ephemeral.zeroize();
        self.chain_key.zeroize();
        self.hash.zeroize();
        self.local_index = 0;
        self.state = State::Zeroed;
    }

    /// Writes an initiation with sender index `sender` into `msg` (mac1 and mac2 left
    /// zero). `false` (nothing usable written) without a static-static DH.
    pub(crate) fn create_initiation(
        &mut self,
        identity: &Identity,
        sender: u32,
        timestamp: Tai64n,
        msg: &mut [u8; INITIATION_LEN],
    ) -> bool {
        let Some(ss) = self.static_static.as_ref().map(|s| Zeroizing::new(**s)) else {
            return false;
        };
        let (ck0, h0) = initial();
        self.hash = *h0;
        self.chain_key = *ck0;
        mix_hash(&mut self.hash, &self.remote_static);

        let ephemeral = crypto::random_secret();
        let e_pub = crypto::public_key(&ephemeral);
        msg.fill(0);
        msg[..4].copy_from_slice(&MESSAGE_INITIATION.to_le_bytes());
        msg[SENDER..SENDER + 4].copy_from_slice(&sender.to_le_bytes());
        msg[INIT_EPHEMERAL..INIT_STATIC].copy_from_slice(&e_pub);
        self.chain_key = *crypto::kdf1(&self.chain_key, &e_pub);
        mix_hash(&mut self.hash, &e_pub);

        // The static key, under DH(e_i, S_r).
        let Some(es) = crypto::dh(&ephemeral, &self.remote_static) else {
            self.clear();
            return false;
        };
        let (ck, key) = crypto::kdf2(&self.chain_key, &es[..]);
        self.chain_key = *ck;
        crypto::seal(
            &key,
            &identity.public,
            &self.hash,
            &mut msg[INIT_STATIC..INIT_TIMESTAMP],
        );
        mix_hash(&mut self.hash, &msg[INIT_STATIC..INIT_TIMESTAMP]);

        // The timestamp, under DH(S_i, S_r).
        let (ck, key) = crypto::kdf2(&self.chain_key, &ss[..]);
        self.chain_key = *ck;
        let ts_end = INIT_TIMESTAMP + tai64n::LEN + TAG_LEN;
        crypto::seal(
            &key,
            &timestamp.0,
            &self.hash,
            &mut msg[INIT_TIMESTAMP..ts_end],
        );
        mix_hash(&mut self.hash, &msg[INIT_TIMESTAMP..ts_end]);

        self.local_ephemeral = Some(ephemeral);
        self.local_index = sender;
        self.state = State::InitiationCreated;
        true
    }

    /// The second half of consuming an initiation, under this (its sender's) handshake:
    /// checks the timestamp (authenticated, later than the last accepted, not within
    /// `rate` of the last accepted initiation) and takes the state over.
    pub(crate) fn consume_initiation(
        &mut self,
        mut st: InitiationStatic,
        msg: &[u8],
        now: Nanos,
        rate: Nanos,
    ) -> Result<(), InitiationRefused> {
        let Some(ss) = self.static_static.as_ref() else {
            return Err(InitiationRefused::Invalid);
        };
        let (ck, key) = crypto::kdf2(&st.chain_key, &ss[..]);
        let ts_end = INIT_TIMESTAMP + tai64n::LEN + TAG_LEN;
        let mut ts = [0u8; tai64n::LEN];
        if !crypto::open(&key, &msg[INIT_TIMESTAMP..ts_end], &st.hash, &mut ts) {
            return Err(InitiationRefused::Invalid);
        }
        mix_hash(&mut st.hash, &msg[INIT_TIMESTAMP..ts_end]);
        let ts = Tai64n(ts);
        if !ts.after(&self.last_timestamp) {
            return Err(InitiationRefused::Replay);
        }
        if let Some(last) = self.last_initiation_consumption {
            if now.saturating_sub(last) <= rate {
                return Err(InitiationRefused::Flood);
            }
        }
        self.hash = st.hash;
        self.chain_key = *ck;
        self.remote_index = u32_at(msg, SENDER);
        self.remote_ephemeral = key_at(msg, INIT_EPHEMERAL);
        self.last_timestamp = ts;
        if self.last_initiation_consumption.is_none_or(|l| now > l) {
            self.last_initiation_consumption = Some(now);
        }
        self.state = State::InitiationConsumed;
        Ok(())
    }

    /// Writes the response to the consumed initiation, with sender index `sender`, into
    /// `msg` (macs zero). `false` if no initiation was consumed or a DH is low-order.
    pub(crate) fn create_response(&mut self, sender: u32, msg: &mut [u8; RESPONSE_LEN]) -> bool {
        if self.state != State::InitiationConsumed {
            return false;
        }
        let ephemeral = crypto::random_secret();
        let e_pub = crypto::public_key(&ephemeral);
        msg.fill(0);
        msg[..4].copy_from_slice(&MESSAGE_RESPONSE.to_le_bytes());
        msg[SENDER..SENDER + 4].copy_from_slice(&sender.to_le_bytes());
        msg[RESP_RECEIVER..RESP_RECEIVER + 4].copy_from_slice(&self.remote_index.to_le_bytes());
        msg[RESP_EPHEMERAL..RESP_EMPTY].copy_from_slice(&e_pub);
        mix_hash(&mut self.hash, &e_pub);
        self.chain_key = *crypto::kdf1(&self.chain_key, &e_pub);
        let (Some(ee), Some(es)) = (
            crypto::dh(&ephemeral, &self.remote_ephemeral),
            crypto::dh(&ephemeral, &self.remote_static),
        ) else {
            self.clear();
            return false;
        };
        self.chain_key = *crypto::kdf1(&self.chain_key, &ee[..]);
        self.chain_key = *crypto::kdf1(&self.chain_key, &es[..]);
        let (ck, tau, key) = crypto::kdf3(&self.chain_key, &self.preshared_key[..]);
        self.chain_key = *ck;
        mix_hash(&mut self.hash, &tau[..]);
        crypto::seal(
            &key,
            &[],
            &self.hash,
            &mut msg[RESP_EMPTY..RESP_EMPTY + TAG_LEN],
        );
        mix_hash(&mut self.hash, &msg[RESP_EMPTY..RESP_EMPTY + TAG_LEN]);
        self.local_ephemeral = Some(ephemeral);
        self.local_index = sender;
        self.state = State::ResponseCreated;
        true
    }

    /// Consumes a response to our initiation (the caller found this handshake by the
    /// response's receiver index). `false` if we sent no initiation or it does not
    /// authenticate; nothing changes then.
    pub(crate) fn consume_response(&mut self, identity: &Identity, msg: &[u8]) -> bool {
        if self.state != State::InitiationCreated || msg.len() != RESPONSE_LEN {
            return false;
        }
        let Some(ephemeral) = self.local_ephemeral.as_ref() else {
            return false;
        };
        let e_r = key_at(msg, RESP_EPHEMERAL);
        let mut hash = Zeroizing::new(self.hash);
        mix_hash(&mut hash, &e_r);
        let mut ck = crypto::kdf1(&self.chain_key, &e_r);
        let (Some(ee), Some(se)) = (
            crypto::dh(ephemeral, &e_r),
            crypto::dh(&identity.secret, &e_r),
        ) else {
            return false;
        };
        ck = crypto::kdf1(&ck, &ee[..]);
        ck = crypto::kdf1(&ck, &se[..]);
        let (ck, tau, key) = crypto::kdf3(&ck, &self.preshared_key[..]);
        mix_hash(&mut hash, &tau[..]);
        let empty = &msg[RESP_EMPTY..RESP_EMPTY + TAG_LEN];
        if !crypto::open(&key, empty, &hash[..], &mut []) {
            return false;
        }
        mix_hash(&mut hash, empty);
        self.hash = *hash;
        self.chain_key = *ck;
        self.remote_index = u32_at(msg, SENDER);
        self.state = State::ResponseConsumed;
        true
    }

    /// Derives the session's transport keys (`BeginSymmetricSession`): as initiator
    /// after consuming the response, as responder after creating it. Zeroes the
    /// handshake's secrets (state zeroed; `local_index` is kept for the caller to move to
    /// the session, then clear). `None` in any other state.
    pub(crate) fn derive_session(&mut self) -> Option<SessionKeys> {
        let is_initiator = match self.state {
            State::ResponseConsumed => true,
            State::ResponseCreated => false,
            _ => return None,
        };
        let (t1, t2) = crypto::kdf2(&self.chain_key, &[]);
        let (send, recv) = if is_initiator { (t1, t2) } else { (t2, t1) };
        let keys = SessionKeys {
            send,
            recv,
            is_initiator,
            local_index: self.local_index,
            remote_index: self.remote_index,
        };
        self.chain_key.zeroize();
        self.hash.zeroize();
        self.local_ephemeral = None;
        self.state = State::Zeroed;
        Some(keys)
    }
}

/// The first half of consuming an initiation, with the device's identity only: decrypts
/// the initiator's static key (whose peer's handshake then takes
/// [`Handshake::consume_initiation`]). `None` if it does not authenticate.
pub(crate) fn consume_initiation_static(
    identity: &Identity,
    msg: &[u8],
) -> Option<InitiationStatic> {
    if msg.len() != INITIATION_LEN || message_type(msg) != Some(MESSAGE_INITIATION) {
        return None;
    }
    let (ck0, h0) = initial();
    let e_i = key_at(msg, INIT_EPHEMERAL);
    let mut hash = crypto::hash(&[h0, &identity.public]);
    mix_hash(&mut hash, &e_i);
    let ck = crypto::kdf1(ck0, &e_i);
    let es = crypto::dh(&identity.secret, &e_i)?;
    let (ck, key) = crypto::kdf2(&ck, &es[..]);
    let mut peer = [0u8; 32];
    if !crypto::open(&key, &msg[INIT_STATIC..INIT_TIMESTAMP], &hash, &mut peer) {
        hash.zeroize();
        return None;
    }
    mix_hash(&mut hash, &msg[INIT_STATIC..INIT_TIMESTAMP]);
    Some(InitiationStatic {
        peer,
        hash,
        chain_key: ck,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    struct Side {
        id: Identity,
        hs: Handshake,
    }

    fn pair(psk: [u8; 32]) -> (Side, Side) {
        let a = Identity::new(&crypto::clamp([1; 32]));
        let b = Identity::new(&crypto::clamp([2; 32]));
        let mut ha = Handshake::new(b.public, crypto::dh(&a.secret, &b.public));
        let mut hb = Handshake::new(a.public, crypto::dh(&b.secret, &a.public));
        *ha.preshared_key = psk;
        *hb.preshared_key = psk;
        (Side { id: a, hs: ha }, Side { id: b, hs: hb })
    }

    fn ts(secs: u64) -> Tai64n {
        Tai64n::from_system_time(UNIX_EPOCH + Duration::from_secs(secs))
    }

    const RATE: Nanos = 20_000_000;

    /// Runs a handshake from `i` to `r` at time `now` (ns) with timestamp `t`.
    fn handshake(i: &mut Side, r: &mut Side, now: Nanos, t: Tai64n) -> (SessionKeys, SessionKeys) {
        let mut init = [0u8; INITIATION_LEN];
        assert!(i.hs.create_initiation(&i.id, 11, t, &mut init));
        let st = consume_initiation_static(&r.id, &init).expect("static decrypts");
        assert_eq!(st.peer, i.id.public);
        r.hs.consume_initiation(st, &init, now, RATE).unwrap();
        assert_eq!(r.hs.remote_index, 11);
        let mut resp = [0u8; RESPONSE_LEN];
        assert!(r.hs.create_response(22, &mut resp));
        assert_eq!(u32_at(&resp, RESP_RECEIVER), 11);
        let rk = r.hs.derive_session().unwrap();
        assert!(i.hs.consume_response(&i.id, &resp));
        let ik = i.hs.derive_session().unwrap();
        (ik, rk)
    }

    #[test]
    fn keys_agree_with_and_without_psk() {
        for psk in [[0u8; 32], [7u8; 32]] {
            let (mut a, mut b) = pair(psk);
            let (ik, rk) = handshake(&mut a, &mut b, 1_000_000_000, ts(100));
            assert_eq!(*ik.send, *rk.recv);
            assert_eq!(*ik.recv, *rk.send);
            assert_ne!(*ik.send, *ik.recv);
            assert!(ik.is_initiator && !rk.is_initiator);
            assert_eq!((ik.local_index, ik.remote_index), (11, 22));
            assert_eq!((rk.local_index, rk.remote_index), (22, 11));
            assert_eq!(a.hs.state, State::Zeroed);
            assert_eq!(a.hs.chain_key, [0; 32], "secrets zeroed after derivation");
            assert_eq!(b.hs.hash, [0; 32]);
        }
    }

    #[test]
    fn psk_mismatch_fails_the_response() {
        let (mut a, mut b) = pair([1; 32]);
        *b.hs.preshared_key = [2; 32];
        let mut init = [0u8; INITIATION_LEN];
        assert!(a.hs.create_initiation(&a.id, 1, ts(5), &mut init));
        let st = consume_initiation_static(&b.id, &init).unwrap();
        b.hs.consume_initiation(st, &init, 0, RATE).unwrap();
        let mut resp = [0u8; RESPONSE_LEN];
        assert!(b.hs.create_response(2, &mut resp));
        assert!(!a.hs.consume_response(&a.id, &resp));
        assert_eq!(a.hs.state, State::InitiationCreated, "unchanged on failure");
    }

    #[test]
    fn initiation_replay_and_flood_are_refused() {
        let (mut a, mut b) = pair([0; 32]);
        let s = 1_000_000_000;
        let mut first = [0u8; INITIATION_LEN];
        assert!(a.hs.create_initiation(&a.id, 1, ts(10), &mut first));
        let take = |b: &mut Side, m: &[u8], now| {
            let st = consume_initiation_static(&b.id, m).unwrap();
            b.hs.consume_initiation(st, m, now, RATE)
        };
        assert_eq!(take(&mut b, &first, s), Ok(()));
        // The same message again, much later: its timestamp is not newer.
        assert_eq!(
            take(&mut b, &first, 100 * s),
            Err(InitiationRefused::Replay)
        );
        // An older timestamp.
        let mut old = [0u8; INITIATION_LEN];
        assert!(a.hs.create_initiation(&a.id, 2, ts(9), &mut old));
        assert_eq!(take(&mut b, &old, 100 * s), Err(InitiationRefused::Replay));
        // A newer one within 20 ms of the accepted one, then after.
        let mut newer = [0u8; INITIATION_LEN];
        assert!(a.hs.create_initiation(&a.id, 3, ts(11), &mut newer));
        assert_eq!(
            take(&mut b, &newer, s + RATE),
            Err(InitiationRefused::Flood)
        );
        assert_eq!(take(&mut b, &newer, s + RATE + 1), Ok(()));
        assert_eq!(b.hs.remote_index, 3);
    }

    #[test]
    fn tampered_initiations_and_responses_are_refused() {
        let (mut a, mut b) = pair([0; 32]);
        let mut init = [0u8; INITIATION_LEN];
        assert!(a.hs.create_initiation(&a.id, 1, ts(10), &mut init));
        // Every byte the Noise fields cover (ephemeral, static, timestamp).
        for i in INIT_EPHEMERAL..mac1_at(INITIATION_LEN) {
            let mut bad = init;
            bad[i] ^= 0x40;
            let ok = consume_initiation_static(&b.id, &bad)
                .map(|st| b.hs.consume_initiation(st, &bad, 0, RATE).is_ok())
                .unwrap_or(false);
            assert!(!ok, "flip at {i}");
        }
        // To a third party: the static key does not decrypt.
        let c = Identity::new(&crypto::clamp([3; 32]));
        assert!(consume_initiation_static(&c, &init).is_none());

        let st = consume_initiation_static(&b.id, &init).unwrap();
        b.hs.consume_initiation(st, &init, 0, RATE).unwrap();
        let mut resp = [0u8; RESPONSE_LEN];
        assert!(b.hs.create_response(2, &mut resp));
        for i in RESP_EPHEMERAL..mac1_at(RESPONSE_LEN) {
            let mut bad = resp;
            bad[i] ^= 1;
            assert!(!a.hs.consume_response(&a.id, &bad), "flip at {i}");
        }
        assert!(a.hs.consume_response(&a.id, &resp));
        // A second response for the same initiation: the state moved on.
        assert!(!a.hs.consume_response(&a.id, &resp));
    }

    #[test]
    fn no_handshake_without_static_static() {
        let a = Identity::new(&crypto::clamp([1; 32]));
        let mut hs = Handshake::new([0; 32], None);
        let mut init = [0u8; INITIATION_LEN];
        assert!(!hs.create_initiation(&a, 1, ts(1), &mut init));
        assert_eq!(hs.state, State::Zeroed);
        let mut resp = [0u8; RESPONSE_LEN];
        assert!(!hs.create_response(1, &mut resp));
        assert!(hs.derive_session().is_none());
    }
}
