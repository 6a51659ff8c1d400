//! Grace-period sequence numbers (`GpSeq`), after the kernel's `rcu_seq_*` helpers in
//! `kernel/rcu/rcu.h`.
//!
//! # Implementation
//!
//! A sequence is a `u64`: a counter in the high 62 bits and a state in the low 2 bits.
//!
//! | bits  | meaning                                                        |
//! |-------|----------------------------------------------------------------|
//! | 63..2 | number of grace periods completed since the engine started     |
//! | 1..0  | state: `0` = idle, `1` = a grace period is in progress; 2, 3 unused |
//!
//! * `start`: `0b..c00 → 0b..c01` (the counter does not move).
//! * `end`:   `0b..c01 → 0b..(c+1)00`.
//! * `snap(s)`: the smallest idle value whose grace period *started after* `s` was read: if a grace
//!   period was in progress at `s`, it may have started before the caller's update, so the next one
//!   is needed as well.
//! * `done(cur, snap)`: `cur` has reached `snap`.
//!
//! All comparisons are wrap-safe (`wrapping_sub` read as signed), so the helpers stay correct after
//! 2^63 sequence steps; at one grace period per microsecond that is 146,000 years, but the tests
//! check the wrap anyway.

use core::fmt;

/// Width of the state field in the low bits of a sequence.
pub(crate) const STATE_BITS: u32 = 2;
/// Mask of the state field.
pub(crate) const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
/// State value: a grace period is in progress.
pub(crate) const STATE_IN_PROGRESS: u64 = 1;

/// A grace-period sequence number: counter in the high bits, state in the low two bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GpSeq(pub(crate) u64);

impl GpSeq {
    /// The sequence of a freshly started engine: no grace period completed, none in progress.
    pub const ZERO: GpSeq = GpSeq(0);

    /// Wraps a raw value (tests and debugging).
    pub const fn from_raw(raw: u64) -> GpSeq {
        GpSeq(raw)
    }

    /// The raw `u64`.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The state bits (`0` idle, `1` in progress).
    pub const fn state(self) -> u64 {
        self.0 & STATE_MASK
    }

    /// Whether a grace period is in progress in this sequence value.
    pub const fn in_progress(self) -> bool {
        self.state() == STATE_IN_PROGRESS
    }

    /// The number of completed grace periods (counter field; wraps with the sequence).
    pub const fn completed(self) -> u64 {
        self.0 >> STATE_BITS
    }

    /// The value after starting a grace period. The sequence must be idle.
    pub fn start(self) -> GpSeq {
        debug_assert_eq!(
            self.state(),
            0,
            "GpSeq::start on a sequence already in progress"
        );
        GpSeq(self.0.wrapping_add(1))
    }

    /// The value after ending the grace period in progress. The sequence must be in progress.
    pub fn end(self) -> GpSeq {
        debug_assert_eq!(
            self.state(),
            STATE_IN_PROGRESS,
            "GpSeq::end on a sequence with no grace period in progress"
        );
        GpSeq((self.0 | STATE_MASK).wrapping_add(1))
    }

    /// The sequence value that marks the end of a full grace period starting after `self` was read.
    ///
    /// Idle `c00` → `(c+1)00` (the next grace period); in progress `c01` → `(c+2)00` (the current
    /// one may have begun before the caller's update, so the one after it).
    pub fn snap(self) -> GpSeq {
        GpSeq(self.0.wrapping_add(2 * STATE_MASK + 1) & !STATE_MASK)
    }

    /// Whether this (current) sequence has reached `snap`: the grace period `snap` asks for is over.
    pub fn done(self, snap: GpSeq) -> bool {
        self.diff(snap) >= 0
    }

    /// Signed distance `self - other`, wrap-safe.
    pub fn diff(self, other: GpSeq) -> i64 {
        self.0.wrapping_sub(other.0) as i64
    }

    /// Wrap-safe `self < other`.
    pub fn before(self, other: GpSeq) -> bool {
        self.diff(other) < 0
    }
}

/// The newer of an optional snapshot and `s` (wrap-safe): folds the snapshots a set of waiters
/// needs into the one grace period that serves them all. The one copy for the kit (rcu-core's
/// worker, kfree-batch's collectors).
#[inline]
pub fn newer(a: Option<GpSeq>, s: GpSeq) -> GpSeq {
    match a {
        Some(n) if s.before(n) => n,
        _ => s,
    }
}

impl fmt::Debug for GpSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GpSeq({}{})",
            self.completed(),
            if self.in_progress() { "+" } else { "" }
        )
    }
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn start_end_cycle() {
        let s = GpSeq::ZERO;
        assert!(!s.in_progress());
        let s1 = s.start();
        assert!(s1.in_progress());
        assert_eq!(s1.completed(), 0);
        let s2 = s1.end();
        assert!(!s2.in_progress());
        assert_eq!(s2.completed(), 1);
    }

    #[test]
    fn snap_idle_needs_next_gp() {
        let s = GpSeq::from_raw(4 * 7);
        let snap = s.snap();
        assert_eq!(snap.completed(), 8);
        assert!(!s.done(snap));
        assert!(!s.start().done(snap));
        assert!(s.start().end().done(snap));
    }

    #[test]
    fn snap_in_progress_needs_one_more_gp() {
        let s = GpSeq::from_raw(4 * 7).start();
        let snap = s.snap();
        assert_eq!(snap.completed(), 9);
        let after_current = s.end();
        assert!(
            !after_current.done(snap),
            "the GP in progress may predate the update"
        );
        assert!(after_current.start().end().done(snap));
    }

    #[test]
    fn wrap_around() {
        // Walk through the wrap point of the u64 in both states.
        let mut s = GpSeq::from_raw(!STATE_MASK - 4 * 3); // idle, 4 GPs before the wrap
        assert_eq!(s.state(), 0);
        for _ in 0..8 {
            let snap = s.snap();
            let started = s.start();
            assert!(!started.done(snap));
            assert!(started.before(snap));
            let snap_during = started.snap();
            let ended = started.end();
            assert!(ended.done(snap), "{ended:?} should be done for {snap:?}");
            assert!(!ended.done(snap_during));
            assert!(ended.start().end().done(snap_during));
            assert!(s.before(ended));
            assert_eq!(ended.diff(s), 4);
            s = ended;
        }
        assert!(s.raw() < 64, "walked past the wrap: {:#x}", s.raw());
    }

    #[test]
    fn diff_is_signed() {
        let a = GpSeq::from_raw(0);
        let b = GpSeq::from_raw(u64::MAX - 3); // four steps "before" zero
        assert_eq!(a.diff(b), 4);
        assert_eq!(b.diff(a), -4);
        assert!(b.before(a));
        assert!(a.done(b));
    }

    #[test]
    fn debug_format() {
        assert_eq!(format!("{:?}", GpSeq::from_raw(8)), "GpSeq(2)");
        assert_eq!(format!("{:?}", GpSeq::from_raw(9)), "GpSeq(2+)");
    }
}
