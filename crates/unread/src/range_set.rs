//! A set of `u64` stored as sorted, disjoint, coalesced inclusive ranges.

use crate::SeqRange;

/// A set of sequence numbers stored as inclusive ranges.
///
/// Invariant (checked by [`RangeSet::is_canonical`]): every range has
/// `first <= last`, and for consecutive ranges `a`, `b` we have
/// `a.last + 1 < b.first`: sorted, disjoint and never adjacent. So a given
/// set of seqs has exactly one representation, and `PartialEq` on the
/// representation is equality of the sets.
///
/// Membership and single-seq updates are a binary search plus at most one
/// `Vec` insert or remove (a shift of the ranges after the position).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: Vec<SeqRange>,
}

/// Number of seqs in an inclusive range.
///
/// Cannot overflow for the ranges this crate stores: every stored seq is
/// above a read mark, so `first >= 1` and `last - first + 1 <= u64::MAX`.
fn range_len(range: SeqRange) -> u64 {
    debug_assert!(range.first <= range.last);
    range.last - range.first + 1
}

impl RangeSet {
    /// Builds a set from ranges that already satisfy the invariant.
    pub(crate) fn from_canonical(ranges: Vec<SeqRange>) -> Self {
        let set = RangeSet { ranges };
        debug_assert!(set.is_canonical());
        set
    }

    pub(crate) fn ranges(&self) -> &[SeqRange] {
        &self.ranges
    }

    pub(crate) fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub(crate) fn first(&self) -> Option<SeqRange> {
        self.ranges.first().copied()
    }

    /// Joins the two lowest ranges into one, filling the gap between them; returns
    /// whether there were two. The set then holds every seq of the gap too.
    pub(crate) fn fill_first_gap(&mut self) -> bool {
        if self.ranges.len() < 2 {
            return false;
        }
        self.ranges[0].last = self.ranges[1].last;
        self.ranges.remove(1);
        true
    }

    pub(crate) fn pop_first(&mut self) -> Option<SeqRange> {
        if self.ranges.is_empty() {
            return None;
        }
        Some(self.ranges.remove(0))
    }

    /// Total number of seqs in the set, `None` if it does not fit in a `u64`.
    pub(crate) fn checked_seq_count(&self) -> Option<u64> {
        self.ranges
            .iter()
            .try_fold(0u64, |total, &range| total.checked_add(range_len(range)))
    }

    /// Index of the first range with `last >= seq`: every range before it
    /// lies entirely below `seq`.
    fn search(&self, seq: u64) -> usize {
        self.ranges.partition_point(|range| range.last < seq)
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        let index = self.search(seq);
        match self.ranges.get(index) {
            Some(range) => range.first <= seq,
            None => false,
        }
    }

    /// Adds `seq`; returns whether it was absent. Coalesces with the
    /// neighbouring ranges when `seq` is adjacent to them.
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        let index = self.search(seq);
        if let Some(range) = self.ranges.get(index)
            && range.first <= seq
        {
            return false;
        }
        // Ranges before `index` end below `seq`, so `previous.last + 1` does
        // not overflow; ranges from `index` on start above `seq`, so
        // `next.first - 1` does not underflow.
        let joins_previous = index > 0 && self.ranges[index - 1].last + 1 == seq;
        let joins_next = index < self.ranges.len() && self.ranges[index].first - 1 == seq;
        match (joins_previous, joins_next) {
            (true, true) => {
                self.ranges[index - 1].last = self.ranges[index].last;
                self.ranges.remove(index);
            }
            (true, false) => self.ranges[index - 1].last = seq,
            (false, true) => self.ranges[index].first = seq,
            (false, false) => self.ranges.insert(
                index,
                SeqRange {
                    first: seq,
                    last: seq,
                },
            ),
        }
        true
    }

    /// Removes `seq`; returns whether it was present. Removing from the
    /// middle of a range splits it in two.
    pub(crate) fn remove(&mut self, seq: u64) -> bool {
        let index = self.search(seq);
        let Some(range) = self.ranges.get(index).copied() else {
            return false;
        };
        if range.first > seq {
            return false;
        }
        if range.first == range.last {
            self.ranges.remove(index);
        } else if seq == range.first {
            self.ranges[index].first = seq + 1;
        } else if seq == range.last {
            self.ranges[index].last = seq - 1;
        } else {
            self.ranges[index].last = seq - 1;
            self.ranges.insert(
                index + 1,
                SeqRange {
                    first: seq + 1,
                    last: range.last,
                },
            );
        }
        true
    }

    /// Removes every seq `<= seq`; returns how many seqs were removed.
    pub(crate) fn remove_through(&mut self, seq: u64) -> u64 {
        let whole_ranges = self.ranges.partition_point(|range| range.last <= seq);
        let mut removed: u64 = self.ranges[..whole_ranges]
            .iter()
            .map(|&range| range_len(range))
            .sum();
        if let Some(straddling) = self.ranges.get_mut(whole_ranges)
            && straddling.first <= seq
        {
            // `seq < straddling.last` here, so `seq + 1` does not overflow.
            removed += seq - straddling.first + 1;
            straddling.first = seq + 1;
        }
        self.ranges.drain(..whole_ranges);
        removed
    }

    /// Whether the representation invariant holds.
    pub(crate) fn is_canonical(&self) -> bool {
        let ranges_valid = self.ranges.iter().all(|range| range.first <= range.last);
        let gaps_between = self
            .ranges
            .windows(2)
            .all(|pair| pair[0].last < pair[1].first && pair[1].first - pair[0].last > 1);
        ranges_valid && gaps_between
    }

    /// Whether the two sets have no seq in common (linear merge walk).
    pub(crate) fn is_disjoint(&self, other: &RangeSet) -> bool {
        first_overlap(&self.ranges, &other.ranges).is_none()
    }
}

/// The first pair of overlapping ranges `(from a, from b)` between two
/// sorted, disjoint range lists, if any.
pub(crate) fn first_overlap(a: &[SeqRange], b: &[SeqRange]) -> Option<(SeqRange, SeqRange)> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (left, right) = (a[i], b[j]);
        if left.last < right.first {
            i += 1;
        } else if right.last < left.first {
            j += 1;
        } else {
            return Some((left, right));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, last: u64) -> SeqRange {
        SeqRange { first, last }
    }

    fn set_of(seqs: &[u64]) -> RangeSet {
        let mut set = RangeSet::default();
        for &seq in seqs {
            set.insert(seq);
        }
        assert!(set.is_canonical());
        set
    }

    #[test]
    fn insert_into_empty_makes_single_range() {
        let mut set = RangeSet::default();
        assert!(set.insert(5));
        assert_eq!(set.ranges(), &[range(5, 5)]);
    }

    #[test]
    fn insert_existing_is_noop() {
        let mut set = set_of(&[3, 4, 5]);
        assert!(!set.insert(3));
        assert!(!set.insert(4));
        assert!(!set.insert(5));
        assert_eq!(set.ranges(), &[range(3, 5)]);
    }

    #[test]
    fn insert_adjacent_after_extends_range() {
        let mut set = set_of(&[3]);
        assert!(set.insert(4));
        assert_eq!(set.ranges(), &[range(3, 4)]);
    }

    #[test]
    fn insert_adjacent_before_extends_range() {
        let mut set = set_of(&[3]);
        assert!(set.insert(2));
        assert_eq!(set.ranges(), &[range(2, 3)]);
    }

    #[test]
    fn insert_filling_gap_merges_two_ranges() {
        let mut set = set_of(&[1, 2, 4, 5]);
        assert_eq!(set.ranges(), &[range(1, 2), range(4, 5)]);
        assert!(set.insert(3));
        assert_eq!(set.ranges(), &[range(1, 5)]);
    }

    #[test]
    fn insert_non_adjacent_keeps_ranges_apart_and_sorted() {
        let set = set_of(&[10, 1, 5]);
        assert_eq!(set.ranges(), &[range(1, 1), range(5, 5), range(10, 10)]);
    }

    #[test]
    fn insert_at_u64_extremes() {
        let mut set = set_of(&[u64::MAX, 0]);
        assert_eq!(set.ranges(), &[range(0, 0), range(u64::MAX, u64::MAX)]);
        assert!(set.insert(u64::MAX - 1));
        assert!(set.insert(1));
        assert_eq!(set.ranges(), &[range(0, 1), range(u64::MAX - 1, u64::MAX)]);
        assert!(set.contains(u64::MAX));
        assert!(set.contains(0));
        assert!(!set.contains(2));
    }

    #[test]
    fn contains_checks_bounds_of_ranges() {
        let set = set_of(&[2, 3, 4, 8]);
        for seq in [2, 3, 4, 8] {
            assert!(set.contains(seq), "{seq}");
        }
        for seq in [0, 1, 5, 7, 9, 100] {
            assert!(!set.contains(seq), "{seq}");
        }
    }

    #[test]
    fn remove_absent_is_noop() {
        let mut set = set_of(&[2, 3, 8]);
        assert!(!set.remove(1));
        assert!(!set.remove(5));
        assert!(!set.remove(9));
        assert_eq!(set.ranges(), &[range(2, 3), range(8, 8)]);
    }

    #[test]
    fn remove_single_seq_range_drops_it() {
        let mut set = set_of(&[2, 3, 8]);
        assert!(set.remove(8));
        assert_eq!(set.ranges(), &[range(2, 3)]);
    }

    #[test]
    fn remove_range_ends_shrinks() {
        let mut set = set_of(&[2, 3, 4, 5]);
        assert!(set.remove(2));
        assert_eq!(set.ranges(), &[range(3, 5)]);
        assert!(set.remove(5));
        assert_eq!(set.ranges(), &[range(3, 4)]);
    }

    #[test]
    fn remove_middle_splits() {
        let mut set = set_of(&[2, 3, 4, 5, 6, 20]);
        assert!(set.remove(4));
        assert_eq!(set.ranges(), &[range(2, 3), range(5, 6), range(20, 20)]);
        assert!(set.is_canonical());
        assert!(set.insert(4));
        assert_eq!(set.ranges(), &[range(2, 6), range(20, 20)]);
    }

    #[test]
    fn remove_through_drops_whole_and_trims_straddling() {
        let mut set = set_of(&[1, 2, 5, 6, 7, 8, 12]);
        assert_eq!(set.remove_through(6), 4); // 1, 2, 5, 6
        assert_eq!(set.ranges(), &[range(7, 8), range(12, 12)]);
        assert_eq!(set.remove_through(9), 2);
        assert_eq!(set.ranges(), &[range(12, 12)]);
        assert_eq!(set.remove_through(11), 0);
        assert_eq!(set.ranges(), &[range(12, 12)]);
        assert_eq!(set.remove_through(12), 1);
        assert_eq!(set.ranges(), &[]);
    }

    #[test]
    fn remove_through_at_range_start() {
        let mut set = set_of(&[4, 5, 6]);
        assert_eq!(set.remove_through(4), 1);
        assert_eq!(set.ranges(), &[range(5, 6)]);
        assert_eq!(set.remove_through(3), 0);
    }

    #[test]
    fn pop_first_and_seq_count() {
        let mut set = set_of(&[1, 2, 3, 9]);
        assert_eq!(set.checked_seq_count(), Some(4));
        assert_eq!(set.pop_first(), Some(range(1, 3)));
        assert_eq!(set.pop_first(), Some(range(9, 9)));
        assert_eq!(set.pop_first(), None);
        assert_eq!(set.checked_seq_count(), Some(0));
    }

    #[test]
    fn canonical_rejects_adjacent_overlapping_and_inverted() {
        assert!(
            !RangeSet {
                ranges: vec![range(1, 2), range(3, 4)]
            }
            .is_canonical()
        );
        assert!(
            !RangeSet {
                ranges: vec![range(1, 3), range(3, 4)]
            }
            .is_canonical()
        );
        assert!(
            !RangeSet {
                ranges: vec![range(5, 6), range(1, 2)]
            }
            .is_canonical()
        );
        assert!(
            !RangeSet {
                ranges: vec![range(2, 1)]
            }
            .is_canonical()
        );
        assert!(
            RangeSet {
                ranges: vec![range(1, 2), range(4, 4)]
            }
            .is_canonical()
        );
    }

    #[test]
    fn overlap_detection() {
        let a = [range(1, 3), range(10, 12)];
        assert_eq!(first_overlap(&a, &[range(4, 9)]), None);
        assert_eq!(first_overlap(&a, &[range(4, 9), range(13, 20)]), None);
        assert_eq!(
            first_overlap(&a, &[range(5, 6), range(12, 14)]),
            Some((range(10, 12), range(12, 14)))
        );
        assert!(set_of(&[1, 2]).is_disjoint(&set_of(&[3, 4])));
        assert!(!set_of(&[1, 2]).is_disjoint(&set_of(&[2])));
    }
}
