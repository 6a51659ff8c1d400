//! One CPU slot of the batcher ([`Krc`]): its try-lock and, under it, the open blocks of its
//! channels, the list of blocks handed over and not collected, its page cache and its unspent
//! budget reservation; with the bounds the producers and collectors keep it within.
//!
//! # Implementation
//!
//! Everything in a slot is accessed under its lock ([`Krc::locked`]); the algorithm that runs
//! under it, the invariants (the `krc` module's Invariants 1 to 6) and the orderings of the lock
//! are in the `krc` module docs. No code here allocates or waits for a grace period.

use super::*;

/// Channels (distinct free functions) open at once per CPU slot.
pub(crate) const NCHAN: usize = 4;

/// One open block of a channel.
#[derive(Clone, Copy)]
pub(super) struct Chan {
    /// The open block, or null.
    pub(super) block: *mut Block,
    /// When it was opened (`now_ms` clock), for the drain delay.
    pub(super) opened_ms: u64,
}

pub(super) const NO_CHAN: Chan = Chan {
    block: core::ptr::null_mut(),
    opened_ms: 0,
};

/// State of one CPU slot, guarded by [`Krc::lock`] (Invariant 1).
pub(super) struct KrcInner {
    pub(super) chans: [Chan; NCHAN],
    /// Blocks handed over and not yet collected, oldest first (FIFO linked through `hdr.next`).
    pub(super) handed: *mut Block,
    /// Newest handed block (tail of `handed`), or null.
    pub(super) handed_tail: *mut Block,
    /// Length of `handed`.
    pub(super) nhanded: usize,
    /// Handed blocks that are not `inline_free` (the ones a front's ready-first reclaim frees
    /// below [`BULK_FREE_BACKLOG`]).
    pub(super) nhanded_plain: usize,
    /// Empty pages kept for emergencies (linked through `hdr.next`).
    pub(super) cache: *mut Block,
    pub(super) ncache: usize,
    /// Unspent budget reserved by this slot.
    pub(super) reserve_left: usize,
}

impl KrcInner {
    /// Appends `b` (stamped) to the handed FIFO.
    pub(super) fn push_handed(&mut self, b: *mut Block) {
        // SAFETY: the slot owns `b` and its handed blocks; the caller holds the lock.
        unsafe {
            (*b).hdr.next = core::ptr::null_mut();
            match NonNull::new(self.handed_tail) {
                Some(t) => (*t.as_ptr()).hdr.next = b,
                None => self.handed = b,
            }
        }
        self.handed_tail = b;
        self.nhanded += 1;
        // SAFETY: as above.
        self.nhanded_plain += usize::from(!unsafe { (*b).hdr.inline_free });
    }

    /// Accounts for `b` leaving `handed`.
    pub(super) fn count_removed(&mut self, b: *mut Block) {
        self.nhanded -= 1;
        // SAFETY: the caller just unlinked `b`, which the slot owned.
        self.nhanded_plain -= usize::from(!unsafe { (*b).hdr.inline_free });
    }

    /// Removes the oldest handed block.
    pub(super) fn pop_handed(&mut self) -> Option<*mut Block> {
        let b = NonNull::new(self.handed)?.as_ptr();
        // SAFETY: as in `push_handed`.
        self.handed = unsafe { (*b).hdr.next };
        if self.handed.is_null() {
            self.handed_tail = core::ptr::null_mut();
        }
        self.count_removed(b);
        Some(b)
    }

    /// The oldest handed block's snapshot and hand-over time.
    pub(super) fn oldest_handed(&self) -> Option<(GpSeq, u64)> {
        let b = NonNull::new(self.handed)?;
        // SAFETY: as in `push_handed`.
        let h = unsafe { &(*b.as_ptr()).hdr };
        Some((GpSeq::from_raw(h.snap), h.handed_ms))
    }

    /// Detaches the oldest handed block whose grace period is over (snapshots grow along the
    /// FIFO, so those form a prefix) and that satisfies `pred`.
    pub(super) fn take_ready_where(
        &mut self,
        cur: GpSeq,
        mut pred: impl FnMut(&BlockHeader) -> bool,
    ) -> Option<*mut Block> {
        let (mut prev, mut b) = (core::ptr::null_mut::<Block>(), self.handed);
        // SAFETY: handed blocks belong to the slot; the caller holds its lock.
        unsafe {
            while !b.is_null() && cur.done(GpSeq::from_raw((*b).hdr.snap)) {
                if pred(&(*b).hdr) {
                    let next = (*b).hdr.next;
                    match NonNull::new(prev) {
                        Some(p) => (*p.as_ptr()).hdr.next = next,
                        None => self.handed = next,
                    }
                    if self.handed_tail == b {
                        self.handed_tail = prev;
                    }
                    self.count_removed(b);
                    return Some(b);
                }
                prev = b;
                b = (*b).hdr.next;
            }
        }
        None
    }

    /// The snapshot of the oldest handed block that satisfies `pred`.
    pub(super) fn oldest_snap_where(
        &self,
        mut pred: impl FnMut(&BlockHeader) -> bool,
    ) -> Option<GpSeq> {
        let mut b = self.handed;
        // SAFETY: handed blocks belong to the slot; the caller holds its lock.
        unsafe {
            while !b.is_null() {
                if pred(&(*b).hdr) {
                    return Some(GpSeq::from_raw((*b).hdr.snap));
                }
                b = (*b).hdr.next;
            }
        }
        None
    }

    /// The newest handed block's snapshot.
    pub(super) fn newest_handed(&self) -> Option<GpSeq> {
        let b = NonNull::new(self.handed_tail)?;
        // SAFETY: as in `push_handed`.
        Some(GpSeq::from_raw(unsafe { (*b.as_ptr()).hdr.snap }))
    }
}

/// Handed blocks a slot keeps for its producers' ready-first reclaim before the worker takes the
/// surplus.
pub(crate) const MAX_KEEP_HANDED: usize = 64;
/// Ready blocks a producer frees inline per hand-over (one keeps up with one hand-over each; the
/// rest catch up after a grace period ends).
pub(crate) const RECLAIM_PER_HANDOVER: usize = 4;
/// A channel as a front keys it: the free function's address and its context.
pub(crate) type ChanKey = (usize, *const ());

/// Handed blocks beyond which a producer that recycles ready `inline_free` blocks one object per
/// retire also frees ready ones in bulk at hand-over (it fell behind; see `local.rs`). Above
/// [`EXPEDITE_WAITING`], so that the blocks a producer's own grace period made ready are
/// recycled, not freed in bulk.
pub(crate) const BULK_FREE_BACKLOG: usize = 32;

/// Handed blocks of a slot from which a producer that finds no ready block to recycle runs the
/// grace period itself instead of opening a fresh block (`local.rs`): below it the slot's
/// in-flight blocks are still growing to cover the worker's cadence.
pub(crate) const EXPEDITE_WAITING: usize = 16;

/// How long producers leave grace periods to the worker after one of theirs was blocked by a
/// reader (ms).
pub(super) const EXPEDITE_BACKOFF_MS: u64 = 2;

/// One CPU slot.
pub(crate) struct Krc {
    pub(super) lock: TryLock,
    pub(super) inner: UnsafeCell<KrcInner>,
    /// Objects queued on this slot (written by the lock holder; Relaxed load+store, no RMW).
    pub(crate) queued: AtomicU64,
    /// Pages in `cache` (mirrors `ncache` for lock-free statistics).
    pub(crate) cached: AtomicUsize,
    /// Pages taken from the cache for new blocks (emergency pages used).
    pub(crate) cache_used: AtomicU64,
    /// Blocks on `handed` (mirror for lock-free statistics).
    pub(crate) handed_n: AtomicUsize,
}

// SAFETY: `inner` is only accessed with `lock` held (Invariant 1); the raw block pointers it holds
// are owned by the slot, and the objects behind them are `Send` (checked by the public API).
unsafe impl Sync for Krc {}
// SAFETY: as above.
unsafe impl Send for Krc {}

impl core::fmt::Debug for Krc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Krc")
            .field("queued", &self.queued)
            .field("cached", &self.cached)
            .finish()
    }
}

impl Krc {
    pub(super) fn new() -> Krc {
        Krc {
            lock: TryLock::new(),
            inner: UnsafeCell::new(KrcInner {
                chans: [NO_CHAN; NCHAN],
                handed: core::ptr::null_mut(),
                handed_tail: core::ptr::null_mut(),
                nhanded: 0,
                nhanded_plain: 0,
                cache: core::ptr::null_mut(),
                ncache: 0,
                reserve_left: 0,
            }),
            queued: AtomicU64::new(0),
            cached: AtomicUsize::new(0),
            cache_used: AtomicU64::new(0),
            handed_n: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the slot state; the lock must be held.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut KrcInner) -> R) -> R {
        // SAFETY: the caller holds `lock` (Invariant 1), so this is the only reference.
        self.inner.with_mut(|p| f(unsafe { &mut *p }))
    }

    pub(super) fn locked<R>(&self, f: impl FnOnce(&mut KrcInner) -> R) -> R {
        self.lock.lock();
        let r = self.with(f);
        self.lock.unlock();
        r
    }
}
