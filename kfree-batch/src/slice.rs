//! A thread's slice of the pending budget, and how another thread takes it back.
//!
//! # Implementation
//!
//! A retiring thread reserves budget in slices (`local.rs`) and spends them on its fast path with
//! a plain load and store, no read-modify-write. An idle thread would keep its slice until it
//! exits, so when the budget runs short a *reclaimer* (a thread whose reserve was refused, a
//! barrier, the worker under memory pressure) takes unspent slices back. The owner's load and
//! store are not atomic together, so the reclaimer cannot simply swap the slice to zero: an owner
//! between its load and its store would write back the old value minus what it spent, and the
//! same bytes would be counted as both released and reserved. Read-side critical sections close
//! that window:
//!
//! * **Owner, fast path**, inside one read-side critical section: load `claim` (Acquire); if it
//!   is set, the slice is worth 0 (the put takes a slow path). Otherwise load `left`, and after
//!   the put store `left - n`, still inside the section.
//! * **Owner, slow path** (refill, exit): only read-modify-writes on `left` (`fetch_add`,
//!   `swap`), which a reclaimer's swap cannot lose; while `claim` is set it refills nothing.
//! * **Reclaimer**: claims the slice with a CAS of `claim` from 0 to its ticket (SeqCst, before
//!   the grace period's snapshot, like an unpublish), waits for a grace period that started
//!   after the claim, then swaps `left` to 0 (the bytes it gives back) and clears `claim`
//!   (Release).
//!
//! Invariants:
//! 1. While `claim` is set, `left` changes only by read-modify-writes, except for fast paths
//!    whose critical section began before the claim.
//! 2. The reclaimer swaps `left` only after a grace period that began after its claim, so every
//!    fast-path store into `left` by a section that read `claim == 0` before the claim has
//!    happened-before the swap: the swap sees it, and no such store follows.
//! 3. Each byte of a slice is either spent by the owner (it then belongs to an object's charge),
//!    still in `left`, or returned by exactly one swap.
//!
//! Memory orderings: the claim CAS (SeqCst) precedes the snapshot's read-modify-write, so a
//! section the grace period does not wait for began after it and sees the claim (the RCU
//! guarantee, as for an unpublished pointer); the grace-period wait orders the owner's last
//! store before the swap; the Release clear of `claim` pairs with the owner's Acquire load, so
//! an owner that sees the slice unclaimed again also sees the swap's zero (or later values).

use crate::primitive::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A thread's unspent budget slice.
#[derive(Debug)]
pub struct Slice {
    /// Unspent bytes (owner: plain load + store on the fast path; read-modify-writes elsewhere).
    left: AtomicUsize,
    /// 0, or the ticket of the reclaimer that claimed the slice.
    claim: AtomicU64,
}

impl Default for Slice {
    fn default() -> Self {
        Self::new()
    }
}

impl Slice {
    /// An empty, unclaimed slice.
    pub fn new() -> Self {
        Slice {
            left: AtomicUsize::new(0),
            claim: AtomicU64::new(0),
        }
    }

    /// Owner, inside a read-side critical section: the bytes it may spend (0 while claimed).
    #[inline(always)]
    pub fn left(&self) -> usize {
        // Acquire pairs with the Release clear in `take_claimed`: the reclaimer's swap is seen.
        if self.claim.load(Ordering::Acquire) != 0 {
            return 0;
        }
        // Relaxed: only this owner stores plainly; the reclaimer's swap is ordered by the claim
        // protocol (Invariant 2).
        self.left.load(Ordering::Relaxed)
    }

    /// Owner, inside the same read-side critical section as the [`Slice::left`] that returned
    /// `left >= n`: spends `n` bytes.
    #[inline(always)]
    pub fn spend(&self, left: usize, n: usize) {
        // A plain store (Invariant 1): a reclaimer waits for this section before its swap.
        self.left.store(left - n, Ordering::Relaxed);
    }

    /// Owner, outside its fast path: adds `n` reserved bytes.
    pub fn add(&self, n: usize) {
        // An RMW: a concurrent reclaimer's swap takes these bytes or leaves them, never loses
        // them (Invariant 3). Relaxed: a budget word, nothing published through it.
        self.left.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether a reclaimer holds the slice.
    pub fn is_claimed(&self) -> bool {
        self.claim.load(Ordering::Relaxed) != 0
    }

    /// Owner, outside its fast path: takes its unspent bytes (to give them back).
    pub fn take_own(&self) -> usize {
        // An RMW, atomic with a reclaimer's swap (Invariant 3).
        self.left.swap(0, Ordering::Relaxed)
    }

    /// Reclaimer: claims the slice with `ticket` (non-zero, unique to this reclaim) if it holds
    /// bytes and nobody else claimed it. After a grace period that starts after this call, take
    /// the bytes with [`Slice::take_claimed`].
    pub fn claim(&self, ticket: u64) -> bool {
        debug_assert!(ticket != 0);
        self.left.load(Ordering::Relaxed) != 0
            // SeqCst: before the snapshot of the grace period the reclaimer waits for, so owner
            // sections that period does not wait for see the claim (module docs).
            && self
                .claim
                .compare_exchange(0, ticket, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    /// Reclaimer, after a full grace period that began after its [`Slice::claim`] with `ticket`:
    /// takes the unspent bytes and gives the slice back to its owner. Returns the bytes (0 if
    /// `ticket` does not hold the slice).
    pub fn take_claimed(&self, ticket: u64) -> usize {
        if self.claim.load(Ordering::Relaxed) != ticket {
            return 0;
        }
        // No fast-path store can follow (Invariant 2); the grace period's wait ordered the
        // earlier ones before this swap.
        let n = self.left.swap(0, Ordering::Relaxed);
        // Release pairs with the owner's Acquire load of `claim`: it sees the swap.
        self.claim.store(0, Ordering::Release);
        n
    }

    /// Forgets a claim whose reclaimer no longer exists (a `fork()` child: the threads that
    /// claimed are gone). Its bytes stay with the owner.
    #[cfg(not(rcu_loom))]
    pub(crate) fn reset_after_fork(&self) {
        self.claim.store(0, Ordering::Relaxed);
    }
}
