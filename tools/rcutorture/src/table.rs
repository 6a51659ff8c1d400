//! The identity table: where pipeline ages live.
//!
//! # Implementation
//!
//! Every element carries an *identity* (`tag`): a slot index of this table and the generation
//! that owns the slot. The slot holds one word:
//!
//! | bits   | field | meaning                                                        |
//! |--------|-------|----------------------------------------------------------------|
//! | 0..8   | age   | 0 published, 1 removed, +1 per grace period since, `DEAD` after |
//! | 8..64  | gen   | generation owning the slot (40 bits used)                      |
//!
//! Age and generation share one word so that a reader's single load cannot mix the age of one
//! identity with the generation of the next. The table is allocated once and never freed, so a
//! reader can always look an identity up, even one whose element was (wrongly) destroyed under
//! it: "destroyed" is an age (`DEAD`) or a newer generation (`recycled`), never a dangling read.
//!
//! Slots go back to a free list when their identity is killed (the element's destructor), and a
//! new identity takes the most recently freed slot first, so an identity killed early is recycled
//! quickly and readers still holding it see the generation change.
//!
//! ## Memory orderings
//! A new identity's word is stored before the element carrying its tag is published (release
//! store of the cell), so readers that reach the element see the word. Age changes are
//! `Relaxed`: they happen after a grace period, which orders them after every read-side critical
//! section that could hold the element (rcu-core's guarantee, the very thing under test).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Ages go 0 (published), 1 (removed), then +1 per grace period up to `PIPE_LEN`, where the
/// element is freed (the kernel's `RCU_TORTURE_PIPE_LEN`).
pub(crate) const PIPE_LEN: u32 = 10;
/// The age of an identity whose element was destroyed.
pub(crate) const DEAD: u32 = 0xff;

const IDX_BITS: u32 = 24;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
const GEN_MASK: u64 = (1 << 40) - 1;
const AGE_MASK: u64 = 0xff;
/// Largest pool (slot indices must fit in a tag).
pub(crate) const MAX_POOL: usize = 1 << IDX_BITS;

/// What a reader finds when it looks an identity up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The identity is alive with this age.
    Age(u32),
    /// The identity's element was destroyed.
    Dead,
    /// The slot belongs to a newer identity: the element was destroyed and its slot reused.
    Recycled,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Table {
    /// One word per slot (state table in the module docs).
    words: Box<[AtomicU64]>,
    /// Free slot indices (LIFO).
    free: Mutex<Vec<u32>>,
    /// Identities created.
    created: AtomicU64,
    /// Identities killed.
    killed: AtomicU64,
    /// Kills of identities that were already dead or recycled (double destroy).
    double_kills: AtomicU64,
}

static TABLE: OnceLock<Table> = OnceLock::new();

/// Creates the process-wide table with `pool` slots (the first call decides the size).
pub(crate) fn init(pool: usize) -> &'static Table {
    TABLE.get_or_init(|| Table::new(pool))
}

/// The process-wide table.
pub(crate) fn table() -> &'static Table {
    TABLE
        .get()
        .expect("identity table initialised before any element exists")
}

fn split(tag: u64) -> (usize, u64) {
    ((tag & IDX_MASK) as usize, tag >> IDX_BITS)
}

fn word(gen: u64, age: u32) -> u64 {
    (gen << 8) | u64::from(age)
}

impl Table {
    fn new(pool: usize) -> Table {
        assert!(pool > 0 && pool <= MAX_POOL);
        Table {
            words: (0..pool).map(|_| AtomicU64::new(word(0, DEAD))).collect(),
            // Reversed so that slot 0 is handed out first.
            free: Mutex::new((0..pool as u32).rev().collect()),
            created: AtomicU64::new(0),
            killed: AtomicU64::new(0),
            double_kills: AtomicU64::new(0),
        }
    }

    /// Number of slots.
    pub(crate) fn size(&self) -> usize {
        self.words.len()
    }

    /// A new identity with age 0, or `None` when every slot is in use.
    pub(crate) fn create(&self) -> Option<u64> {
        let idx = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()? as usize;
        let w = &self.words[idx];
        let old = w.load(Ordering::Relaxed);
        debug_assert_eq!(old & AGE_MASK, u64::from(DEAD), "free slot not dead");
        let mut gen = ((old >> 8) + 1) & GEN_MASK;
        if gen == 0 {
            gen = 1;
        }
        // Release: readers reach this word only through the element carrying the tag, published
        // later with a release store; this keeps the order explicit.
        w.store(word(gen, 0), Ordering::Release);
        self.created.fetch_add(1, Ordering::Relaxed);
        Some((gen << IDX_BITS) | idx as u64)
    }

    /// Looks `tag` up.
    #[inline]
    pub(crate) fn observe(&self, tag: u64) -> Seen {
        let (idx, gen) = split(tag);
        // Acquire pairs with the Release store in `create` (see the module docs).
        let w = self.words[idx].load(Ordering::Acquire);
        if w >> 8 != gen {
            Seen::Recycled
        } else if w & AGE_MASK == u64::from(DEAD) {
            Seen::Dead
        } else {
            Seen::Age((w & AGE_MASK) as u32)
        }
    }

    /// Applies `f` to the age of a live `tag`; `None` if it is dead or recycled.
    fn update(&self, tag: u64, f: impl Fn(u32) -> u32) -> Option<u32> {
        let (idx, gen) = split(tag);
        let w = &self.words[idx];
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            let age = (cur & AGE_MASK) as u32;
            if cur >> 8 != gen || age == DEAD {
                return None;
            }
            let new = f(age);
            // Relaxed: see "Memory orderings" in the module docs.
            match w.compare_exchange_weak(cur, word(gen, new), Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(new),
                Err(c) => cur = c,
            }
        }
    }

    /// Sets the age of a live `tag` (no-op for dead identities: broken build).
    pub(crate) fn set_age(&self, tag: u64, age: u32) {
        let _ = self.update(tag, |_| age);
    }

    /// One more grace period for `tag`: returns the new age, or `None` if it is dead.
    pub(crate) fn bump(&self, tag: u64) -> Option<u32> {
        self.update(tag, |a| (a + 1).min(PIPE_LEN))
    }

    /// Ends `tag` (its element is destroyed) and frees its slot. A second kill is counted as a
    /// double destroy and changes nothing.
    pub(crate) fn kill(&self, tag: u64) {
        if self.update(tag, |_| DEAD).is_none() {
            self.double_kills.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.killed.fetch_add(1, Ordering::Relaxed);
        let (idx, _) = split(tag);
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(idx as u32);
    }

    /// `(created, killed, double kills)` so far.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.created.load(Ordering::Relaxed),
            self.killed.load(Ordering::Relaxed),
            self.double_kills.load(Ordering::Relaxed),
        )
    }

    /// Free slots now.
    pub(crate) fn free_slots(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_lifecycle() {
        let t = Table::new(2);
        let a = t.create().unwrap();
        assert_eq!(t.observe(a), Seen::Age(0));
        t.set_age(a, 1);
        assert_eq!(t.bump(a), Some(2));
        t.kill(a);
        assert_eq!(t.observe(a), Seen::Dead);
        assert_eq!(t.bump(a), None);
        let b = t.create().unwrap();
        assert_eq!(split(a).0, split(b).0, "LIFO reuse of the freed slot");
        assert_eq!(t.observe(a), Seen::Recycled);
        t.kill(a);
        assert_eq!(t.counts(), (2, 1, 1));
        let _c = t.create().unwrap();
        assert!(t.create().is_none());
    }
}
