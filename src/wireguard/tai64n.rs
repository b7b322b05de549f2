//! TAI64N timestamps, as a handshake initiation carries them (whitepaper 5.4.2) and as
//! wireguard-go's `tai64n` makes them: 8 bytes big-endian `2^62 + 10 + seconds since the
//! Unix epoch`, 4 bytes big-endian nanoseconds with the low 24 bits cleared (whitened,
//! so a timestamp does not reveal the clock to 16.7 ms). Ordering is byte order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The size of a TAI64N timestamp.
pub const LEN: usize = 12;
const BASE: u64 = 0x4000_0000_0000_000a;
const WHITENER_MASK: u32 = 0x00ff_ffff;

/// A TAI64N timestamp. `Ord` is the byte order, which is time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tai64n(pub [u8; LEN]);

impl Tai64n {
    /// The (whitened) timestamp of `t`. Times before 1970 count from the epoch down.
    pub fn from_system_time(t: SystemTime) -> Tai64n {
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (BASE.wrapping_add(d.as_secs()), d.subsec_nanos()),
            Err(e) => {
                // Before the epoch: floor the seconds, as Go's t.Unix() does.
                let d = e.duration();
                let mut s = d.as_secs();
                let mut n = d.subsec_nanos();
                if n > 0 {
                    s += 1;
                    n = 1_000_000_000 - n;
                }
                (BASE.wrapping_sub(s), n)
            }
        };
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(&secs.to_be_bytes());
        b[8..].copy_from_slice(&(nanos & !WHITENER_MASK).to_be_bytes());
        Tai64n(b)
    }

    /// Whether `self` is strictly later than `other` (wireguard-go's `After`).
    pub fn after(&self, other: &Tai64n) -> bool {
        self > other
    }

    /// The time since the Unix epoch it stands for (`None` before 1970).
    pub fn since_epoch(&self) -> Option<Duration> {
        let secs = u64::from_be_bytes(self.0[..8].try_into().unwrap()).checked_sub(BASE)?;
        let nanos = u32::from_be_bytes(self.0[8..].try_into().unwrap());
        Some(Duration::new(secs, nanos.min(999_999_999)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> Tai64n {
        Tai64n::from_system_time(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn encoding() {
        let t = at(1_700_000_000, 123_456_789);
        let mut want = [0u8; 12];
        want[..8].copy_from_slice(&(BASE + 1_700_000_000).to_be_bytes());
        want[8..].copy_from_slice(&(123_456_789u32 & 0xff00_0000).to_be_bytes());
        assert_eq!(t.0, want);
        assert_eq!(
            t.since_epoch(),
            Some(Duration::new(1_700_000_000, 123_456_789 & 0xff00_0000))
        );
        assert_eq!(at(0, 0).0[..8], BASE.to_be_bytes());
        // One second before the epoch, and half a second before.
        let before = |d| Tai64n::from_system_time(UNIX_EPOCH - d);
        assert_eq!(
            before(Duration::from_secs(1)).0[..8],
            (BASE - 1).to_be_bytes()
        );
        let half = before(Duration::from_millis(500));
        assert_eq!(half.0[..8], (BASE - 1).to_be_bytes());
        assert!(half < at(0, 0) && half > before(Duration::from_secs(1)));
    }

    #[test]
    fn ordering_follows_time_to_the_whitened_step() {
        // (earlier, later, strictly after?)
        type Time = (u64, u32);
        let step = 1u32 << 24; // 16.777216 ms
        let cases: &[(Time, Time, bool)] = &[
            ((100, 0), (101, 0), true),
            ((100, 999_999_999), (101, 0), true),
            ((100, 0), (100, step), true),
            ((100, 0), (100, step - 1), false), // same whitened value
            ((100, 5), (100, 6), false),
            ((100, 0), (100, 0), false),
            ((101, 0), (100, 999_999_999), false),
            ((u32::MAX as u64, 0), (u32::MAX as u64 + 1, 0), true),
        ];
        for &((s1, n1), (s2, n2), later) in cases {
            let (a, b) = (at(s1, n1), at(s2, n2));
            assert_eq!(b.after(&a), later, "{s2}.{n2} after {s1}.{n1}");
            assert!(!a.after(&a));
        }
    }
}
