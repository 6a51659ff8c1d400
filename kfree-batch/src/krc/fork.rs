//! `fork()` support of the batcher: the handlers take every slot lock in slot order (prepare),
//! release them (parent), and in the child reset the locks and recount what the child holds.
//!
//! # Implementation
//!
//! *fork()* in the `krc` module docs: the child copies every slot between two critical
//! sections, so a hand-over in flight is wholly in its front or wholly in its slot
//! (Invariant 6). No allocation in any of these.

use super::*;

impl<'d, P: Pages> Batcher<'d, P> {
    /// Runs `f` holding slot `cpu`'s lock (white-box tests).
    pub(crate) fn with_slot_locked<R>(&self, cpu: usize, f: impl FnOnce() -> R) -> R {
        self.krcs[cpu % self.krcs.len()].locked(|_| f())
    }

    /// `fork()` prepare handler: takes every slot lock, in slot order (no path nests two slot
    /// locks, and no slot critical section waits for anything, so this cannot deadlock). A
    /// hand-over in flight is then wholly in its front or wholly in its slot (Invariant 6), and
    /// the child copies every slot between two critical sections.
    #[cfg(not(rcu_loom))]
    pub(crate) fn fork_lock_slots(&self) {
        for k in self.krcs.iter() {
            k.lock.lock();
        }
    }

    /// `fork()` parent handler: releases the slot locks [`Batcher::fork_lock_slots`] took.
    #[cfg(not(rcu_loom))]
    pub(crate) fn fork_unlock_slots(&self) {
        for k in self.krcs.iter().rev() {
            k.lock.unlock();
        }
    }

    /// Resets the slot locks and the barrier's counts in a `fork()` child: the threads that held
    /// blocks or ran a barrier do not exist there (their blocks leak in the child), except the
    /// forking thread, which still holds `held` blocks and runs `barriers` barriers (a
    /// destructor that one of our frees runs forked).
    #[cfg(not(rcu_loom))]
    pub(crate) fn reset_locks_after_fork(&self, held: usize, barriers: usize) {
        for k in self.krcs.iter() {
            k.lock.reset_after_fork();
        }
        self.gate.held.store(held, Ordering::Relaxed);
        self.gate.barriers.store(barriers, Ordering::Relaxed);
    }

    /// In a `fork()` child, after [`Batcher::reset_locks_after_fork`]: the budget bytes the
    /// slots hold — reservations, open and handed blocks (page and objects), cached pages
    /// (Invariant 4) — which is what their later frees and spends will release.
    #[cfg(not(rcu_loom))]
    pub(crate) fn slot_charges_after_fork(&self) -> usize {
        let mut bytes = 0;
        for k in self.krcs.iter() {
            bytes += k.locked(|inner| {
                let mut n = inner.reserve_left + inner.ncache * PAGE_SIZE;
                for c in inner.chans.iter().filter(|c| !c.block.is_null()) {
                    // SAFETY: the slot owns its open blocks (Invariant 2); we hold its lock.
                    n += PAGE_SIZE + unsafe { (*c.block).hdr.bytes };
                }
                let mut b = inner.handed;
                while !b.is_null() {
                    // SAFETY: as above, for the handed list.
                    unsafe {
                        n += PAGE_SIZE + (*b).hdr.bytes;
                        b = (*b).hdr.next;
                    }
                }
                n
            });
        }
        bytes
    }
}
