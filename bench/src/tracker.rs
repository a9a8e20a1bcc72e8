//! Per-stream correctness counters: lost, duplicated and reordered messages.
//!
//! A stream is what one subscriber receives from one publisher. The publisher numbers
//! its messages 0, 1, 2, ... without gaps; [`SeqTracker`] sees them arrive and counts:
//!
//! - **duplicated**: a sequence number that already arrived;
//! - **reordered**: a first arrival whose sequence number is below the highest one seen
//!   so far (two swapped neighbours count as one reordered message);
//! - **lost**: at the end, `expected - distinct` where `expected` is what the publisher
//!   sent ([`SeqTracker::lost`]).
//!
//! Memory is a ring of [`SeqTracker::window_bits`] bits (default 2^20: 128 KiB per
//! stream) that slides up in 64-bit words behind the highest sequence number seen, so it
//! always covers at least the `window_bits - 64` numbers below it. A message older than
//! that window cannot be checked for duplication; it is counted as reordered and
//! distinct, and also as [`SeqTracker::too_old`] so a report can say the check was
//! incomplete. On loopback a message a million places late does not happen.

/// Default window: 2^20 sequence numbers, 128 KiB of bits per stream.
pub const WINDOW_BITS_DEFAULT: u64 = 1 << 20;

/// How one arrival was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival, no higher sequence number seen before.
    InOrder,
    /// First arrival, but after a higher sequence number.
    Reordered,
    /// Seen before.
    Duplicate,
}

/// Counts one stream's arrivals; see the module docs.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// Ring of bits: sequence `s` in `[base, base + window)` is bit `s % window`.
    bits: Vec<u64>,
    /// Lowest sequence number still in the window; a multiple of 64.
    base: u64,
    /// Highest sequence number seen.
    max_seen: Option<u64>,
    /// First arrivals.
    distinct: u64,
    /// Arrivals of an already seen sequence number.
    duplicates: u64,
    /// First arrivals below the highest sequence number seen.
    reordered: u64,
    /// Arrivals below the window (counted as reordered and distinct, unchecked for
    /// duplication).
    too_old: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker::with_window_bits(WINDOW_BITS_DEFAULT)
    }
}

impl SeqTracker {
    /// A tracker whose window covers `window_bits` sequence numbers, rounded up to a
    /// multiple of 64 (at least 64).
    pub fn with_window_bits(window_bits: u64) -> SeqTracker {
        let words = window_bits.div_ceil(64).max(1);
        SeqTracker {
            bits: vec![0; words as usize],
            base: 0,
            max_seen: None,
            distinct: 0,
            duplicates: 0,
            reordered: 0,
            too_old: 0,
        }
    }

    /// How many sequence numbers the window covers.
    pub fn window_bits(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    /// Records the arrival of `sequence` and says how it counted.
    pub fn record(&mut self, sequence: u64) -> Arrival {
        let window = self.window_bits();
        if sequence < self.base {
            self.too_old += 1;
            self.reordered += 1;
            self.distinct += 1;
            return Arrival::Reordered;
        }
        if sequence >= self.base + window {
            self.slide_to(sequence);
        }
        let bit = sequence % window;
        let word = (bit / 64) as usize;
        let mask = 1u64 << (bit % 64);
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.bits[word] |= mask;
        self.distinct += 1;
        match self.max_seen {
            Some(max) if sequence < max => {
                self.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                self.max_seen = Some(sequence);
                Arrival::InOrder
            }
        }
    }

    /// Moves the window up so that `sequence` is its highest slot, clearing the words
    /// that leave it.
    fn slide_to(&mut self, sequence: u64) {
        let window = self.window_bits();
        let new_base = (sequence + 1 - window).div_ceil(64) * 64;
        let words_leaving = (new_base - self.base) / 64;
        if words_leaving >= self.bits.len() as u64 {
            self.bits.fill(0);
        } else {
            let first = ((self.base % window) / 64) as usize;
            for i in 0..words_leaving as usize {
                let word = (first + i) % self.bits.len();
                self.bits[word] = 0;
            }
        }
        self.base = new_base;
    }

    /// First arrivals.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Arrivals of an already seen sequence number.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// First arrivals after a higher sequence number.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Arrivals too late for the window (see the module docs).
    pub fn too_old(&self) -> u64 {
        self.too_old
    }

    /// Messages the publisher sent (`expected`) that never arrived.
    pub fn lost(&self, expected: u64) -> u64 {
        expected.saturating_sub(self.distinct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_counts_nothing_wrong() {
        let mut tracker = SeqTracker::default();
        for sequence in 0..1000 {
            assert_eq!(tracker.record(sequence), Arrival::InOrder);
        }
        assert_eq!(tracker.distinct(), 1000);
        assert_eq!(tracker.duplicates(), 0);
        assert_eq!(tracker.reordered(), 0);
        assert_eq!(tracker.lost(1000), 0);
    }

    #[test]
    fn gaps_are_lost_not_reordered() {
        let mut tracker = SeqTracker::default();
        for sequence in (0..100).filter(|s| s % 10 != 9) {
            tracker.record(sequence);
        }
        assert_eq!(tracker.lost(100), 10);
        assert_eq!(tracker.reordered(), 0);
        assert_eq!(tracker.duplicates(), 0);
    }

    #[test]
    fn swapped_neighbours_count_one_reordered() {
        let mut tracker = SeqTracker::default();
        for sequence in [0, 2, 1, 3, 5, 4, 6] {
            tracker.record(sequence);
        }
        assert_eq!(tracker.reordered(), 2);
        assert_eq!(tracker.duplicates(), 0);
        assert_eq!(tracker.lost(7), 0);
    }

    #[test]
    fn repeated_sequence_is_a_duplicate_even_when_late() {
        let mut tracker = SeqTracker::default();
        assert_eq!(tracker.record(0), Arrival::InOrder);
        assert_eq!(tracker.record(1), Arrival::InOrder);
        assert_eq!(tracker.record(1), Arrival::Duplicate);
        assert_eq!(tracker.record(2), Arrival::InOrder);
        assert_eq!(tracker.record(0), Arrival::Duplicate);
        assert_eq!(tracker.duplicates(), 2);
        assert_eq!(tracker.reordered(), 0);
        assert_eq!(tracker.distinct(), 3);
    }

    #[test]
    fn window_slides_and_still_detects_duplicates_inside_it() {
        let mut tracker = SeqTracker::with_window_bits(192);
        for sequence in 0..10_000 {
            assert_eq!(tracker.record(sequence), Arrival::InOrder);
            if sequence >= 100 {
                assert_eq!(tracker.record(sequence - 100), Arrival::Duplicate);
            }
        }
        assert_eq!(tracker.duplicates(), 9_900);
        assert_eq!(tracker.too_old(), 0);
        assert_eq!(tracker.lost(10_000), 0);
    }

    #[test]
    fn arrival_below_the_window_is_counted_as_too_old() {
        let mut tracker = SeqTracker::with_window_bits(64);
        tracker.record(1000);
        assert_eq!(tracker.record(1), Arrival::Reordered);
        assert_eq!(tracker.too_old(), 1);
        assert_eq!(tracker.distinct(), 2);
    }

    #[test]
    fn a_jump_beyond_the_whole_window_clears_it() {
        let mut tracker = SeqTracker::with_window_bits(128);
        tracker.record(5);
        tracker.record(1_000_000);
        // 999_941 uses the ring slot 5 had (both are 5 mod 128): cleared, so new.
        assert_eq!(999_941 % 128, 5);
        assert_eq!(tracker.record(999_941), Arrival::Reordered);
        assert_eq!(tracker.record(999_941), Arrival::Duplicate);
        assert_eq!(tracker.duplicates(), 1);
        assert_eq!(tracker.too_old(), 0);
    }
}
