//! The handshake's primitives (whitepaper 5.4): BLAKE2s `HASH`, `HMAC` and `KDF1..3`,
//! the keyed BLAKE2s-128 `MAC`, X25519 `DH`, and `AEAD` / `XAEAD` of one handshake field
//! (ChaCha20-Poly1305 with a zero counter, XChaCha20-Poly1305 for cookie replies).
//!
//! Every derived secret is returned in [`Zeroizing`], so it is zeroed when dropped.
//! Comparisons of MACs and checks for an all-zero DH result are constant-time.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// A BLAKE2s-256 output.
pub(crate) const HASH_LEN: usize = 32;
/// A BLAKE2s-128 MAC.
pub(crate) const MAC_LEN: usize = 16;
/// A Poly1305 tag.
pub(crate) const TAG_LEN: usize = 16;
/// An XChaCha20 nonce.
pub(crate) const XNONCE_LEN: usize = 24;
/// BLAKE2s's block, HMAC's pad length.
const BLOCK_LEN: usize = 64;

/// A 32-byte secret that is zeroed on drop.
pub(crate) type Secret = Zeroizing<[u8; 32]>;

/// `HASH(parts[0] || parts[1] || ...)`: BLAKE2s-256.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// `MAC(key, parts...)`: keyed BLAKE2s with a 16-byte output (`key`: 1 to 32 bytes).
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key)
        .expect("BLAKE2s keys of 1 to 32 bytes (callers pass 16 or 32)");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// `HMAC(key, parts...)`: RFC 2104 over BLAKE2s-256 (64-byte block).
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> Secret {
    let mut k = Zeroizing::new([0u8; BLOCK_LEN]);
    if key.len() > BLOCK_LEN {
        k[..HASH_LEN].copy_from_slice(&hash(&[key]));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut pad = Zeroizing::new([0u8; BLOCK_LEN]);
    for (p, b) in pad.iter_mut().zip(k.iter()) {
        *p = b ^ 0x36;
    }
    let mut inner = Blake2s256::new();
    Update::update(&mut inner, &pad[..]);
    for p in parts {
        Update::update(&mut inner, p);
    }
    let mut ih = Zeroizing::new([0u8; HASH_LEN]);
    FixedOutput::finalize_into(inner, (&mut ih[..]).into());
    for (p, b) in pad.iter_mut().zip(k.iter()) {
        *p = b ^ 0x5c;
    }
    let mut outer = Blake2s256::new();
    Update::update(&mut outer, &pad[..]);
    Update::update(&mut outer, &ih[..]);
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    FixedOutput::finalize_into(outer, (&mut out[..]).into());
    out
}

/// `KDF1(key, input)`.
pub(crate) fn kdf1(key: &[u8; 32], input: &[u8]) -> Secret {
    let prk = hmac(key, &[input]);
    hmac(&prk[..], &[&[1]])
}

/// `KDF2(key, input)`.
pub(crate) fn kdf2(key: &[u8; 32], input: &[u8]) -> (Secret, Secret) {
    let prk = hmac(key, &[input]);
    let t1 = hmac(&prk[..], &[&[1]]);
    let t2 = hmac(&prk[..], &[&t1[..], &[2]]);
    (t1, t2)
}

/// `KDF3(key, input)`.
pub(crate) fn kdf3(key: &[u8; 32], input: &[u8]) -> (Secret, Secret, Secret) {
    let prk = hmac(key, &[input]);
    let t1 = hmac(&prk[..], &[&[1]]);
    let t2 = hmac(&prk[..], &[&t1[..], &[2]]);
    let t3 = hmac(&prk[..], &[&t2[..], &[3]]);
    (t1, t2, t3)
}

/// Seals `plaintext` into `out` (`plaintext.len() + 16` bytes) with `cipher`.
fn seal_with<C: AeadInPlace>(
    cipher: &C,
    nonce: &[u8],
    plaintext: &[u8],
    aad: &[u8],
    out: &mut [u8],
) {
    let (ct, tag) = out.split_at_mut(plaintext.len());
    ct.copy_from_slice(plaintext);
    let t = cipher
        .encrypt_in_place_detached(nonce.into(), aad, ct)
        .expect("a handshake field or cookie is far below the cipher's length limit");
    tag.copy_from_slice(&t);
}

/// Opens `sealed` (ciphertext and tag) into `out` (`sealed.len() - 16` bytes) with
/// `cipher`; false (and `out` zeroed) if it does not authenticate.
fn open_with<C: AeadInPlace>(
    cipher: &C,
    nonce: &[u8],
    sealed: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> bool {
    let Some(n) = sealed
        .len()
        .checked_sub(TAG_LEN)
        .filter(|&n| n == out.len())
    else {
        return false;
    };
    out.copy_from_slice(&sealed[..n]);
    let ok = cipher
        .decrypt_in_place_detached(nonce.into(), aad, out, sealed[n..].into())
        .is_ok();
    if !ok {
        out.zeroize();
    }
    ok
}

/// `AEAD(key, 0, plaintext, aad)` into `out` (`plaintext.len() + 16` bytes).
pub(crate) fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8], out: &mut [u8]) {
    seal_with(
        &ChaCha20Poly1305::new(key.into()),
        &[0; 12],
        plaintext,
        aad,
        out,
    );
}

/// Opens `AEAD(key, 0, ., aad)` of `sealed` (ciphertext and tag) into `out`
/// (`sealed.len() - 16` bytes); false (and `out` zeroed) if it does not authenticate.
pub(crate) fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8], out: &mut [u8]) -> bool {
    open_with(
        &ChaCha20Poly1305::new(key.into()),
        &[0; 12],
        sealed,
        aad,
        out,
    )
}

/// `XAEAD(key, nonce, plaintext, aad)` into `out` (`plaintext.len() + 16` bytes).
pub(crate) fn xseal(
    key: &[u8; 32],
    nonce: &[u8; XNONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
    out: &mut [u8],
) {
    seal_with(
        &XChaCha20Poly1305::new(key.into()),
        nonce,
        plaintext,
        aad,
        out,
    );
}

/// Opens `XAEAD(key, nonce, ., aad)` of `sealed` into `out`; false if it does not
/// authenticate.
pub(crate) fn xopen(
    key: &[u8; 32],
    nonce: &[u8; XNONCE_LEN],
    sealed: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> bool {
    open_with(&XChaCha20Poly1305::new(key.into()), nonce, sealed, aad, out)
}

/// `DH(secret, public)`; `None` if the result is all zeros (a low-order point), as
/// wireguard-go refuses it.
pub(crate) fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Option<Secret> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return None;
    }
    Some(Zeroizing::new(shared.to_bytes()))
}

/// The public key of `secret`.
pub(crate) fn public_key(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

/// A fresh private key from the operating system's random source.
pub(crate) fn random_secret() -> StaticSecret {
    StaticSecret::random_from_rng(rand_core::OsRng)
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, buf);
}

/// A random 32-bit number from the operating system's random source.
pub(crate) fn random_u32() -> u32 {
    rand_core::RngCore::next_u32(&mut rand_core::OsRng)
}

/// Constant-time equality of two byte strings of the same length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Constant-time test for all zeros.
pub(crate) fn is_zero(a: &[u8]) -> bool {
    let acc = a.iter().fold(0u8, |acc, b| acc | b);
    bool::from(acc.ct_eq(&0))
}

/// A private key clamped as X25519 uses it (and as wireguard-go stores it).
pub(crate) fn clamp(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn h32(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }

    // Expected values from Python's hashlib.blake2s and hmac.new(key, msg, blake2s).
    #[test]
    fn hash_vectors() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9",
            ),
            (
                b"abc",
                "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982",
            ),
            // WireGuard's initial chaining key, HASH(CONSTRUCTION).
            (
                b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
                "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hash(&[input]).to_vec(), hex(want), "{input:?}");
        }
        // Split input hashes as the whole.
        assert_eq!(hash(&[b"a", b"", b"bc"]), hash(&[b"abc"]));
    }

    #[test]
    fn hmac_vectors() {
        let long = [b'x'; 100];
        let cases: &[(Vec<u8>, &[u8], &str)] = &[
            (
                (0..32).collect(),
                b"hello",
                "ca3386d2021b8c299b42476827e7e729b48255da7aee060261072790ea0fc3fa",
            ),
            // RFC 2104 / 4231 test case 1 and 2 inputs.
            (
                vec![0x0b; 20],
                b"Hi There",
                "65a8b7c5cc9136d424e82c37e2707e74e913c0655b99c75f40edf387453a3260",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "90b6281e2f3038c9056af0b4a7e763cae6fe5d9eb4386a0ec95237890c104ff0",
            ),
            // A key of exactly one block, and one longer (hashed first).
            (
                (0..64).collect(),
                &long,
                "92ad3ca6b5cc024090ab6986a60437a151e64560914da426747b2fefdf11694b",
            ),
            (
                (0..80).collect(),
                b"long key",
                "94437c34dcdc7b0e1aa2fbbcb1c9251d3e8f7a2b1a4d366a05fde321008bc3f9",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(hmac(key, &[msg]).to_vec(), hex(want), "key {key:?}");
        }
        let k: Vec<u8> = (0..32).collect();
        assert_eq!(*hmac(&k, &[b"he", b"llo"]), *hmac(&k, &[b"hello"]));
    }

    #[test]
    fn mac_vectors() {
        let cases: &[(Vec<u8>, Vec<u8>, &str)] = &[
            (
                (0..32).collect(),
                vec![],
                "9536f9b267655743dee97b8a670f9f53",
            ),
            (
                (0..16).collect(),
                b"cookie".to_vec(),
                "d6299c318b76ee501544e61b2477140c",
            ),
            (
                (1..33).collect(),
                (0..100).collect(),
                "8e2eb2f03b34051fe7715a2998b89469",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(mac(key, &[msg]).to_vec(), hex(want));
        }
    }

    #[test]
    fn kdf_vectors() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let input: Vec<u8> = (100..133).collect();
        let t = [
            h32("0e815e594e987c034b015e8abc8fd4b518414c8f0a839a777fcdd760e9f32f7e"),
            h32("c1e8bc52e426b32faca977d3677ca9f423efa209201c5b601ead38fde60779d9"),
            h32("7f617fcacf0f5c2c3c27a65d1e2e3bfdd4ed3bc5f4519a23c66f1387093a35da"),
        ];
        assert_eq!(*kdf1(&key, &input), t[0]);
        let (a, b) = kdf2(&key, &input);
        assert_eq!((*a, *b), (t[0], t[1]));
        let (a, b, c) = kdf3(&key, &input);
        assert_eq!((*a, *b, *c), (t[0], t[1], t[2]));
        // Empty input, as the transport keys are derived.
        let (a, b) = kdf2(&key, &[]);
        assert_eq!(
            (*a, *b),
            (
                h32("7a38c34bf2b8738d7374ca77c44ecb309a11d2b2528304fa86052c365e722624"),
                h32("1a17621f346abdc520746a9fb64d8eb03231d674fc15687537b0780fd9c060fd")
            )
        );
    }

    #[test]
    fn aead_round_trip_and_forgery() {
        let key = [7u8; 32];
        let mut sealed = [0u8; 48];
        seal(&key, &[1u8; 32], b"aad", &mut sealed);
        let mut out = [0u8; 32];
        assert!(open(&key, &sealed, b"aad", &mut out));
        assert_eq!(out, [1u8; 32]);
        assert!(!open(&key, &sealed, b"aae", &mut out));
        assert_eq!(out, [0u8; 32], "zeroed on failure");
        for i in 0..sealed.len() {
            let mut bad = sealed;
            bad[i] ^= 1;
            assert!(!open(&key, &bad, b"aad", &mut out), "flip at {i}");
        }
        assert!(!open(&key, &sealed[..10], b"aad", &mut [0u8; 0]));
        // An empty plaintext is a bare tag.
        let mut tag = [0u8; 16];
        seal(&key, &[], b"h", &mut tag);
        assert!(open(&key, &tag, b"h", &mut []));
    }

    #[test]
    fn xaead_round_trip_and_forgery() {
        let key = [9u8; 32];
        let nonce = [3u8; 24];
        let mut sealed = [0u8; 32];
        xseal(&key, &nonce, &[5u8; 16], b"mac1", &mut sealed);
        let mut out = [0u8; 16];
        assert!(xopen(&key, &nonce, &sealed, b"mac1", &mut out));
        assert_eq!(out, [5u8; 16]);
        assert!(!xopen(&key, &[4u8; 24], &sealed, b"mac1", &mut out));
        assert!(!xopen(&key, &nonce, &sealed, b"mac2", &mut out));
    }

    #[test]
    fn dh_agrees_and_refuses_low_order_points() {
        let a = random_secret();
        let b = random_secret();
        let ab = dh(&a, &public_key(&b)).unwrap();
        let ba = dh(&b, &public_key(&a)).unwrap();
        assert_eq!(*ab, *ba);
        // The identity and a point of order 8: all-zero results.
        assert!(dh(&a, &[0u8; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(dh(&a, &one).is_none());
        let order8 = h32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        assert!(dh(&a, &order8).is_none());
    }

    #[test]
    fn constant_time_helpers() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(is_zero(&[0; 32]));
        assert!(!is_zero(&[0, 0, 1]));
        let c = clamp([0xff; 32]);
        assert_eq!((c[0], c[31]), (0xf8, 0x7f));
        assert_eq!(clamp([0; 32])[31], 0x40);
    }
}
