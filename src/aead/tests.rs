//! The AEAD's tests: byte for byte against RustCrypto's `chacha20poly1305`, every drop in
//! its bucket, counter exhaustion and concurrency.

/// A small seeded PRNG (xorshift64*), so the property tests need no extra crate.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
