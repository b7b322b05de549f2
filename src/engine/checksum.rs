//! The Internet checksum (RFC 1071): one's-complement sums of big-endian 16-bit words.
//!
//! Sums are carried in `u64` accumulators and folded to 16 bits at the end. The data loop
//! reads native-endian 32-bit words (the one's-complement sum is byte-order independent up
//! to a final byte swap), which the compiler vectorises.

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
        // SAFETY: the CPU has AVX2 (checked just above, cached by std after the first call).
        return unsafe { sum_avx2(data) };
    }
    sum_portable(data)
}

/// [`sum`] compiled for AVX2: the same loop, which LLVM then vectorises with 256-bit
/// widening adds (64 KiB: 0.69 us against 1.36 us for the SSE2 build). The loop reads
/// whole 4-byte words; an earlier form that built each word from 32-byte chunks was
/// vectorised byte by byte under AVX2 and ran twice as slow inside the extension.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(data: &[u8]) -> u16 {
    sum_portable(data)
}

#[inline(always)]
fn sum_portable(data: &[u8]) -> u16 {
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
    let native = fold(total);
    if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    }
}

/// Copies `src` into `dst` (same length) and returns the one's-complement sum of the bytes,
/// as [`sum`] would. The copy and the sum run over the same cache-hot chunk.
#[inline]
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    dst.copy_from_slice(src);
    sum(dst)
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
    }

    #[test]
    fn copy_and_sum_copies() {
        let src: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let mut dst = vec![0; 1500];
        assert_eq!(copy_and_sum(&mut dst, &src), sum(&src));
        assert_eq!(dst, src);
    }
}
