//! The replay window of RFC 6479: a ring of 64-bit words, as wireguard-go's `replay.go`
//! and Linux's `counter_validate`.

use super::{REJECT_AFTER_MESSAGES, WINDOW};

const WORD_BITS: u64 = 64;
const WORDS: usize = WINDOW / WORD_BITS as usize;
/// How far behind the highest counter seen a counter is still accepted: the ring less
/// one word, which the window's top may be anywhere in.
const BEHIND: u64 = (WINDOW as u64) - WORD_BITS;

/// Which counters a receive key has seen: accepts each counter below
/// [`REJECT_AFTER_MESSAGES`] once, unless it is more than `WINDOW - 64` behind the highest
/// one accepted. Pure state, no lock: [`super::Opener`] keeps one behind a mutex.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest counter accepted (0 before any).
    last: u64,
    /// Bit `c % WINDOW` is set if counter `c` (within the window) was accepted.
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// A window that has seen nothing.
    pub const fn new() -> Self {
        ReplayWindow {
            last: 0,
            ring: [0; WORDS],
        }
    }

    /// Whether `counter` is new (below the limit, not seen, not too far behind); if it is,
    /// it is marked seen (and the window moves forward to it).
    pub fn check(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let word = counter / WORD_BITS;
        if counter > self.last {
            // Clear the words the window moves into (all of them, at most).
            let top = self.last / WORD_BITS;
            let moved = (word - top).min(WORDS as u64);
            for w in top + 1..=top + moved {
                self.ring[(w % WORDS as u64) as usize] = 0;
            }
            self.last = counter;
        } else if self.last - counter > BEHIND {
            return false;
        }
        let slot = &mut self.ring[(word % WORDS as u64) as usize];
        let bit = 1u64 << (counter % WORD_BITS);
        let fresh = *slot & bit == 0;
        *slot |= bit;
        fresh
    }

    /// The highest counter accepted (0 before any).
    pub fn last(&self) -> u64 {
        self.last
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The naive model: a set of every counter accepted, and the highest one.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        last: u64,
    }

    impl Model {
        fn check(&mut self, c: u64) -> bool {
            // 8128 = 8192 - 64, written out rather than taken from the code under test.
            if c >= REJECT_AFTER_MESSAGES || (c <= self.last && self.last - c > 8128) {
                return false;
            }
            if !self.seen.insert(c) {
                return false;
            }
            self.last = self.last.max(c);
            true
        }
    }

    #[test]
    fn window_is_8192_less_one_word() {
        assert_eq!(BEHIND, 8128);
        assert_eq!(size_of::<ReplayWindow>(), 8 + 1024);
    }

    /// The cases of wireguard-go's `TestReplay` (device/replay_test.go's sequence,
    /// restated), each against the model too.
    #[test]
    fn table() {
        const T: u64 = 8128 + 1; // wireguard-go's windowSize + 1
        const R: u64 = REJECT_AFTER_MESSAGES;
        let cases: &[(u64, bool)] = &[
            (0, true),
            (1, true),
            (1, false),
            (9, true),
            (8, true),
            (7, true),
            (7, false),
            (T, true),
            (T - 1, true),
            (T - 1, false),
            (T - 2, true),
            (2, true),
            (2, false),
            (T + 16, true),
            (3, false),
            (T + 16, false),
            (T * 4, true),
            (T * 4 - (T - 1), true),
            (10, false),
            (T * 4 - T, false),
            (T * 4 - (T + 1), false),
            (T * 4 - (T - 2), true),
            (T * 4 + 1 - T, false),
            (0, false),
            (R, false),
            (R - 1, true),
            (R, false),
            (R - 1, false),
            (R - 2, true),
            (R + 1, false),
            (R + 2, false),
            (R - 2, false),
            (R - 3, true),
            (0, false),
            (u64::MAX, false),
        ];
        let (mut w, mut m) = (ReplayWindow::new(), Model::default());
        for (n, &(c, want)) in cases.iter().enumerate() {
            assert_eq!(w.check(c), want, "case {n}: counter {c}");
            assert_eq!(m.check(c), want, "model, case {n}: counter {c}");
        }
    }

    /// Bulk runs: every counter of a full window in order, backwards, and beyond it.
    #[test]
    fn bulk() {
        // In order from 1, then 0: all new; then all seen.
        let mut w = ReplayWindow::new();
        for c in 1..=BEHIND {
            assert!(w.check(c), "{c}");
        }
        assert!(w.check(0));
        for c in 0..=BEHIND {
            assert!(!w.check(c), "{c} again");
        }
        // One more pushes 0 out of the window: rejected as too old, not as seen.
        let mut w = ReplayWindow::new();
        for c in 1..=BEHIND + 1 {
            assert!(w.check(c), "{c}");
        }
        assert!(!w.check(0));
        // Backwards from the top: the whole window, but nothing beyond it.
        let mut w = ReplayWindow::new();
        let top = 3 * WINDOW as u64;
        for c in (top - BEHIND..=top).rev() {
            assert!(w.check(c), "{c}");
        }
        assert!(!w.check(top - BEHIND - 1));
        // A jump of more than the whole ring clears it.
        assert!(w.check(top + 10 * WINDOW as u64));
        assert!(w.check(top + 10 * WINDOW as u64 - 1));
    }

    /// Random counters around a moving top, against the model.
    #[test]
    fn random_against_model() {
        let mut rng = crate::aead::tests::Rng(0x5eed_1234);
        for round in 0..20 {
            let (mut w, mut m) = (ReplayWindow::new(), Model::default());
            let base = if round % 4 == 3 {
                REJECT_AFTER_MESSAGES - 3 * WINDOW as u64
            } else {
                0
            };
            let mut top = base;
            for step in 0..20_000 {
                let r = rng.next();
                let c = match r % 8 {
                    // Forward by a little or a lot (sometimes past the whole ring).
                    0 | 1 => top.saturating_add(r >> 3 & 0x3f),
                    2 => top.saturating_add(r >> 3 & 0x7fff),
                    // Around the window's edge.
                    3 => top.saturating_sub(BEHIND - 4).saturating_add(r >> 3 & 7),
                    // Anywhere in or near the window.
                    _ => top.saturating_sub(r >> 3 & 0x3fff),
                };
                top = top.max(c);
                assert_eq!(w.check(c), m.check(c), "round {round}, step {step}: {c}");
                assert_eq!(w.last(), m.last);
            }
        }
    }
}
