//! The Internet checksum (RFC 1071): one's-complement sums of big-endian 16-bit words.
//!
//! Sums are carried in wide accumulators and folded to 16 bits at the end, over
//! native-endian words (the one's-complement sum is byte-order independent up to a final
//! byte swap). With AVX2 (checked at run time) 64 bytes go per step, and
//! [`copy_and_sum`] copies in the same pass; elsewhere a portable loop of 32-bit words.

/// Folds a wide one's-complement accumulator to 16 bits (end-around carry), not complemented.
///
/// The result is never 0 unless every added word was 0.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// One's-complement sum of `data` read as big-endian 16-bit words (an odd last byte is
/// padded with zero), folded to 16 bits, not complemented.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= 128 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above, cached by std after the first
        // call); no destination, so nothing is written.
        return finish(unsafe { acc_avx2::<false>(data, std::ptr::null_mut()) });
    }
    finish(acc_portable(data))
}

/// Copies `src` into `dst` (which must be as long: a shorter one panics, as
/// `copy_from_slice` does) and returns the one's-complement sum of the bytes, as [`sum`]
/// would, in one pass over them: each 64-byte block is loaded once, stored and summed.
#[inline]
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    let dst = &mut dst[..src.len()];
    #[cfg(target_arch = "x86_64")]
    if src.len() >= 128 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above); `dst` is exactly `src.len()`
        // bytes and cannot overlap `src` (one is borrowed mutably, the other shared).
        return finish(unsafe { acc_avx2::<true>(src, dst.as_mut_ptr()) });
    }
    dst.copy_from_slice(src);
    finish(acc_portable(dst))
}

/// The wide native-endian accumulator as a folded big-endian sum.
#[inline(always)]
fn finish(acc: u64) -> u16 {
    let native = fold(acc);
    if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    }
}

/// How many bytes [`acc_avx2`] sums before it moves its 32-bit lanes into the 64-bit
/// total: each lane of each accumulator gains at most 65536 in magnitude per 64-byte step
/// (and `a` one 32-byte block more at the very end), so 4096 steps (256 KiB) keep a lane
/// within 2^28 + 2^16 and the four lanes it is added into at the end within 2^31.
#[cfg(target_arch = "x86_64")]
const AVX2_FLUSH: usize = 1 << 18;

/// The unfolded native-endian sum of `src`'s 16-bit words, 64 bytes per step with AVX2
/// (then one 32-byte step), and, if `COPY`, a copy of `src` into `dst` in the same pass.
///
/// Each word `w` is taken as the signed `w ^ 0x8000 = w - 32768`, so that `vpmaddwd`
/// (signed 16-bit multiply by 1, adjacent pairs added into 32-bit lanes) sums them
/// without overflow; the 32768 per word is added back at the end. Against the earlier
/// form (32-bit words widened to 64-bit lanes, which LLVM vectorised) and a separate
/// `memcpy` first: see `benchmarks/rust/examples/csum_probe.rs`.
///
/// # Safety
/// The CPU must have AVX2. If `COPY`, `dst` must be valid for writes of `src.len()`
/// bytes and not overlap `src`; otherwise `dst` is not used.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn acc_avx2<const COPY: bool>(src: &[u8], dst: *mut u8) -> u64 {
    use std::arch::x86_64::*;
    let bias = _mm256_set1_epi16(i16::MIN);
    let ones = _mm256_set1_epi16(1);
    // One 32-byte block: loaded, stored if COPY, summed into 32-bit lanes.
    // SAFETY (of the closure's body): callers pass `i + 32 <= src.len()`; with COPY the
    // same offsets are in `dst`, which is as long (the function's contract).
    let block = |i: usize| unsafe {
        let x = _mm256_loadu_si256(src.as_ptr().add(i).cast());
        if COPY {
            _mm256_storeu_si256(dst.add(i).cast(), x);
        }
        _mm256_madd_epi16(_mm256_xor_si256(x, bias), ones)
    };
    let whole = src.len() / 32 * 32;
    let pairs = src.len() / 64 * 64;
    let mut total: i64 = 0;
    let mut i = 0;
    while i < whole {
        let end = pairs.min(i + AVX2_FLUSH);
        let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        while i < end {
            a = _mm256_add_epi32(a, block(i));
            b = _mm256_add_epi32(b, block(i + 32));
            i += 64;
        }
        if i == pairs && pairs < whole {
            a = _mm256_add_epi32(a, block(i)); // the last 32-byte block
            i += 32;
        }
        // 16 lanes of at most 2^28 + 2^16 each, two by two: 4 lanes within 2^31, then
        // 64-bit.
        let v = _mm256_add_epi32(a, b);
        let v = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let w = _mm_add_epi64(
            _mm_cvtepi32_epi64(v),
            _mm_cvtepi32_epi64(_mm_srli_si128::<8>(v)),
        );
        total += _mm_cvtsi128_si64(w) + _mm_extract_epi64::<1>(w);
    }
    // Add back 32768 per word: the true sum of `whole / 2` unsigned words, never negative.
    let mut acc = (total + 32768 * (whole / 2) as i64) as u64;
    let rest = &src[whole..];
    if COPY {
        // SAFETY: `dst[whole..src.len()]` is in `dst` (see the contract) and is not
        // `src`; `rest` is `rest.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), dst.add(whole), rest.len()) };
    }
    // `whole` is even, so the tail's words line up with the rest.
    acc += acc_portable(rest);
    acc
}

/// The unfolded native-endian sum, 4 bytes at a time (an odd last byte padded with zero
/// on the right, in big-endian terms).
#[inline(always)]
fn acc_portable(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    let mut total: u64 = (&mut chunks)
        .map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        total += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        total += u64::from(u16::from_ne_bytes(if cfg!(target_endian = "little") {
            [*last, 0]
        } else {
            [0, *last]
        }));
    }
    total
}

/// Adds two folded sums that start at byte offsets of the same parity.
#[inline]
pub fn add(a: u16, b: u16) -> u16 {
    fold(u64::from(a) + u64::from(b))
}

/// The folded (not complemented) pseudo-header sum for `proto` over `src`/`dst`
/// (4 or 16 bytes each), without the length; add the L4 length with [`add`].
#[inline]
pub fn pseudo_header_no_len(proto: u8, src: &[u8], dst: &[u8]) -> u16 {
    fold(u64::from(sum(src)) + u64::from(sum(dst)) + u64::from(proto))
}

/// The folded (not complemented) pseudo-header sum with the L4 length: what goes into the
/// transport checksum field of a `CHECKSUM_PARTIAL` packet.
#[inline]
pub fn pseudo_header(proto: u8, src: &[u8], dst: &[u8], l4_len: u16) -> u16 {
    add(pseudo_header_no_len(proto, src, dst), l4_len)
}

/// The checksum of an IPv4 header (complemented), computed as if its checksum field were 0.
#[inline]
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    // The field's own contribution is removed by adding its complement.
    let field = u16::from_be_bytes([header[10], header[11]]);
    !add(sum(header), !field)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook definition, for comparison.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for w in data.chunks(2) {
            let hi = u32::from(w[0]) << 8;
            let lo = w.get(1).map_or(0, |b| u32::from(*b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn matches_reference_on_all_lengths_and_alignments() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(151) ^ (i >> 3)) as u8)
            .collect();
        for start in 0..8 {
            for end in start..data.len() {
                let s = &data[start..end];
                let (a, b) = (sum(s), reference(s));
                // 0x0000 and 0xffff are the same number; only all-zero input gives 0.
                assert!(
                    a == b || (a == 0xffff && b == 0) || (a == 0 && b == 0xffff),
                    "{start}..{end}"
                );
                let mut d = vec![0u8; s.len()];
                assert_eq!(copy_and_sum(&mut d, s), a, "copy {start}..{end}");
                assert_eq!(&d[..], s, "copy {start}..{end}");
            }
        }
    }

    #[test]
    fn all_ones_and_zeros() {
        assert_eq!(sum(&[0xff; 64]), 0xffff);
        assert_eq!(sum(&[0; 64]), 0);
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0x12]), 0x1200);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn ipv4_header() {
        // A well-known header with checksum b861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
    }

    #[test]
    fn wide_loop_matches_reference() {
        // Lengths around the 64-byte steps and beyond one lane block, at every alignment.
        let data: Vec<u8> = (0..(2 << 21) + 300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let ones = vec![0xffu8; (1 << 21) + 130];
        for (start, len) in [
            (0, 128),
            (1, 129),
            (3, 191),
            (5, 1448),
            (7, 65535),
            (0, 65536),
        ]
        .into_iter()
        .chain([(2, 1 << 21), (1, (2 << 21) + 7)])
        {
            let s = &data[start..start + len];
            let (a, b) = (sum(s), reference(s));
            assert!(a == b || (a == 0xffff && b == 0), "{start}+{len}");
            let mut d = vec![0u8; len];
            assert_eq!(copy_and_sum(&mut d, s), a, "{start}+{len}");
            assert_eq!(&d[..], s);
        }
        assert_eq!(sum(&ones), 0xffff); // every lane full for a whole block and more
                                        // A whole flush block and then the last 32-byte step: the largest a lane gets.
        for len in [
            (1 << 18) + 32,
            (1 << 19) + 32,
            (1 << 19) + 62,
            (1 << 20) + 32,
        ] {
            let (zeros, ffs) = (vec![0u8; len], vec![0xffu8; len]);
            assert_eq!(sum(&zeros), 0, "zeros {len}");
            assert_eq!(sum(&ffs), 0xffff, "ones {len}");
            let mut d = vec![0u8; len];
            assert_eq!(copy_and_sum(&mut d, &ffs), 0xffff, "copy ones {len}");
            assert_eq!(copy_and_sum(&mut d, &zeros), 0, "copy zeros {len}");
        }
        let mut d = vec![0u8; ones.len()];
        assert_eq!(copy_and_sum(&mut d, &ones), 0xffff);
        assert_eq!(d, ones);
    }

    #[test]
    fn copy_and_sum_copies() {
        let src: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let mut dst = vec![0; 1500];
        assert_eq!(copy_and_sum(&mut dst, &src), sum(&src));
        assert_eq!(dst, src);
    }
}
