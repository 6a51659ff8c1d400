//! The per-CPU try-lock.
//!
//! # Implementation
//!
//! One `AtomicBool`. `try_lock` is a single CAS (Acquire); `unlock` a plain Release store — no
//! second read-modify-write on the fast path, because nobody sleeps on this lock: callers that
//! find it held move to another CPU's slot, and only the worker, `kvfree_rcu_barrier` and the
//! shrinker wait for it (spinning, then yielding; every critical section is a few dozen
//! instructions with no allocation that can reclaim). The `fork()` prepare handler takes the slot
//! locks (not the busy lock, held across grace periods); the child resets them all.

use crate::primitive::sync::atomic::{AtomicBool, Ordering};

/// A try-lock for per-CPU state.
#[derive(Debug)]
pub(crate) struct TryLock(AtomicBool);

impl TryLock {
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new() -> Self {
        TryLock(AtomicBool::new(false))
    }
    #[cfg(rcu_loom)]
    pub(crate) fn new() -> Self {
        TryLock(AtomicBool::new(false))
    }

    /// Takes the lock if free. Acquire pairs with the Release in `unlock`.
    #[inline(always)]
    pub(crate) fn try_lock(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
            && self
                .0
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes the lock, spinning and then yielding while it is held.
    pub(crate) fn lock(&self) {
        let mut i = 0;
        while !self.try_lock() {
            crate::primitive::spin_wait(i);
            i = i.saturating_add(1);
        }
    }

    /// Releases the lock. Release pairs with the Acquire of the next `try_lock`.
    #[inline(always)]
    pub(crate) fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Forces the lock free in a `fork()` child (the holder does not exist there).
    #[cfg(not(rcu_loom))]
    pub(crate) fn reset_after_fork(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
