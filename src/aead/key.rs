//! Key material: the caller's [`Key`], and the `ring` key built from it, both zeroed when
//! dropped.

use std::fmt;
use std::mem::ManuallyDrop;

use ring::aead::{LessSafeKey, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

use crate::engine::error::{bail, Result};

/// A ChaCha20-Poly1305 key: 32 bytes, zeroed when dropped. Its `Debug` does not show it.
///
/// Made from a `[u8; 32]` (`Key::from`; the caller's array is the caller's to wipe) or a
/// slice ([`Key::new`], an error of kind `bad_key_length` if it is not 32 bytes).
pub struct Key([u8; Key::LEN]);

impl Key {
    /// A key's length in bytes.
    pub const LEN: usize = 32;

    /// The key in `bytes`, which must be 32 bytes long (else `bad_key_length`).
    pub fn new(bytes: &[u8]) -> Result<Key> {
        let Ok(array) = <[u8; Key::LEN]>::try_from(bytes) else {
            bail!(
                BadKeyLength,
                "a key is {} bytes, not {}",
                Key::LEN,
                bytes.len()
            );
        };
        Ok(Key(array))
    }

    /// The `ring` key for this key, wiped when dropped.
    pub(super) fn ring_key(&self) -> RingKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .expect("32 bytes is ChaCha20-Poly1305's key length");
        RingKey(ManuallyDrop::new(LessSafeKey::new(unbound)))
    }
}

impl From<[u8; Key::LEN]> for Key {
    fn from(bytes: [u8; Key::LEN]) -> Key {
        Key(bytes)
    }
}

impl TryFrom<&[u8]> for Key {
    type Error = crate::engine::Error;

    fn try_from(bytes: &[u8]) -> Result<Key> {
        Key::new(bytes)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

// The wipe below overwrites a `LessSafeKey` that owns nothing else: no heap, no `Drop`.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

/// `ring`'s key for one [`Key`], its bytes overwritten with zeros when dropped (`ring`
/// does not zero its keys; a ChaCha20 `LessSafeKey` holds the key words inline).
pub(super) struct RingKey(ManuallyDrop<LessSafeKey>);

impl RingKey {
    /// The `ring` key.
    #[inline]
    pub(super) fn get(&self) -> &LessSafeKey {
        &self.0
    }
}

impl Drop for RingKey {
    fn drop(&mut self) {
        // SAFETY: the pointer is to the `LessSafeKey` this `RingKey` owns, valid for writes
        // of its size, and it owns nothing outside itself (no heap, no `Drop`: asserted
        // above), so overwriting its bytes leaks nothing. The all-zero pattern is not a
        // valid `LessSafeKey` (it holds a `&'static Algorithm`), but the value is never
        // read, used or dropped again: it is in a `ManuallyDrop` whose owner is being
        // dropped now. `zeroize_flat_type` writes with volatile writes and a fence, so the
        // writes are not elided as dead stores.
        unsafe { zeroize::zeroize_flat_type(&mut *self.0 as *mut LessSafeKey) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ErrorKind;
    use std::mem::MaybeUninit;

    #[test]
    fn lengths_and_debug() {
        assert!(Key::new(&[1; 32]).is_ok());
        for n in [0, 16, 31, 33, 64] {
            let e = Key::new(&vec![1; n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadKeyLength, "{n} bytes");
            assert!(e.message().contains(&n.to_string()), "{}", e.message());
        }
        let k = Key::try_from(&[0xab; 32][..]).unwrap();
        assert_eq!(format!("{k:?}"), "Key(..)");
    }

    #[test]
    fn dropping_zeroes_the_bytes() {
        let mut slot = MaybeUninit::<Key>::uninit();
        slot.write(Key::from([0xa5; 32]));
        // SAFETY: the slot holds the key just written; it is dropped once, then its
        // bytes (all written by the wipe: a `[u8; 32]` has no padding) are read.
        let bytes = unsafe {
            std::ptr::drop_in_place(slot.as_mut_ptr());
            std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), size_of::<Key>())
        };
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn dropping_the_ring_key_zeroes_it() {
        let key = Key::from([0xa5; 32]);
        let mut slot = MaybeUninit::<RingKey>::uninit();
        slot.write(key.ring_key());
        // SAFETY: as above; the wipe writes every byte of the `LessSafeKey`, which is all
        // of the `RingKey` (a `ManuallyDrop` adds nothing), so every byte read is written.
        let bytes = unsafe {
            std::ptr::drop_in_place(slot.as_mut_ptr());
            std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), size_of::<RingKey>())
        };
        assert_eq!(bytes.len(), size_of::<LessSafeKey>());
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
