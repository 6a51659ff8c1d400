//! The per-CPU emergency page caches: empty block pages a slot keeps for its next blocks.
//!
//! # Implementation
//!
//! A slot's cache is a singly linked list of empty pages (`KrcInner::cache`, linked through the
//! block header's `next`), counted in `ncache` and mirrored in `Krc::cached` for lock-free
//! statistics. Pages enter it two ways: the worker's refill (`refill_caches`, aiming at
//! `pages_per_cpu`, never on a caller's path) and freed blocks (`recycle_page`, keeping up to
//! `max(pages_per_cpu, RECYCLE_KEEP)` so that the next ~505 objects need no munmap/mmap/fault
//! round trip). They leave it when a slot opens a block (`take_cached`, counted as an emergency
//! page used) or go back to the page layer: the shrinker and a caller at the cap empty every
//! cache (`drain_caches`), and while the page source is over its limit every freed page goes
//! back (and a collection pass empties the caches, `worker::pass`).
//!
//! The refill asks the `emergency` fault point of `rcu_core::fault` before each page: an
//! injected refusal stops it like a real one (counted in `KfreeStats::injected_failures`).
//!
//! Invariants (numbered as in `krc`):
//! 1. The list and `ncache` are touched only under the slot's lock; `cached` is written under it.
//! 2. A cached page is one of the places a block can be (its header says it is empty).
//! 4. A cached page stays charged to the budget; `free_page` releases the charge when the page
//!    goes back to the page layer. The refill charges before it allocates, within half the cap.
//!
//! Orderings: the slot lock orders the list; `cached` and `cache_used` are Relaxed statistics
//! (the refill's `cached` read is a hint: a racing slot only makes it add one page too many or
//! stop one early).

use core::ptr::NonNull;

use super::{Batcher, Krc, KrcInner, Pages};
use crate::block::{Block, PAGE_SIZE};
use crate::primitive::sync::atomic::Ordering;

/// Recycled block pages a slot keeps (beyond the emergency target) before unmapping.
const RECYCLE_KEEP: usize = 32;

impl KrcInner {
    /// Puts an empty page on the slot's cache.
    ///
    /// # Safety
    /// `page` is a page of the batcher's page source that nothing else uses.
    pub(super) unsafe fn push_cache(&mut self, k: &Krc, page: NonNull<u8>, origin: usize) {
        // SAFETY: the page is ours; it becomes a cached empty block of this slot.
        let b = unsafe { Block::empty_page(page, origin) };
        // SAFETY: as above.
        unsafe { (*b).hdr.next = self.cache };
        self.cache = b;
        self.ncache += 1;
        k.cached.store(self.ncache, Ordering::Relaxed);
    }
}

impl<P: Pages> Batcher<'_, P> {
    /// A page from the slot's cache (still charged to the budget, Invariant 4).
    pub(super) fn take_cached(&self, k: &Krc, inner: &mut KrcInner) -> Option<NonNull<u8>> {
        let b = NonNull::new(inner.cache)?;
        // SAFETY: cached pages belong to the slot (Invariant 2).
        inner.cache = unsafe { (*b.as_ptr()).hdr.next };
        inner.ncache -= 1;
        k.cached.store(inner.ncache, Ordering::Relaxed);
        k.cache_used
            .store(k.cache_used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Some(b.cast())
    }

    /// Returns a page to slot `origin`'s cache if it holds fewer than
    /// `max(pages_per_cpu, RECYCLE_KEEP)` pages (freed blocks are the next blocks: no
    /// munmap/mmap/page-fault round trip per ~505 objects), else to the page layer. Refills only
    /// aim at `pages_per_cpu`; the shrinker empties the caches. While the page source is over its
    /// limit (lowered below the use) every freed page goes back: the batcher shrinks to the limit
    /// instead of living on recycled pages.
    pub(crate) fn recycle_page(&self, origin: usize, page: NonNull<u8>) {
        if self.pages.over_limit() {
            self.free_page(page);
            return;
        }
        let k = &self.krcs[origin % self.krcs.len()];
        let keep = self.pages_per_cpu.max(RECYCLE_KEEP);
        let kept = k.locked(|inner| {
            if inner.ncache >= keep {
                return false;
            }
            // SAFETY: the page is ours.
            unsafe { inner.push_cache(k, page, origin) };
            true
        });
        if !kept {
            self.free_page(page);
        }
    }

    /// Gives a page (charged, no longer used) back to the page layer and releases its charge.
    fn free_page(&self, page: NonNull<u8>) {
        // SAFETY: the page came from `self.pages` and is no longer used.
        unsafe { self.pages.free(page) };
        self.budget.release(PAGE_SIZE);
    }

    /// Empties the page caches if they hold anything (a caller hit the cap: cached pages are
    /// charged, Invariant 4). Returns whether any page was given back.
    pub(crate) fn release_caches_for_cap(&self) -> bool {
        self.cached_pages() != 0 && self.drain_caches() != 0
    }

    /// Tops every slot's cache up to `pages_per_cpu` (worker only; never on a caller's path).
    /// Returns pages added; stops at the first allocation failure.
    pub(crate) fn refill_caches(&self) -> usize {
        let mut added = 0;
        for (i, k) in self.krcs.iter().enumerate() {
            while k.cached.load(Ordering::Relaxed) < self.pages_per_cpu {
                // Charged like every held page (Invariant 4), within half of the cap.
                if self
                    .budget
                    .reserve(PAGE_SIZE, PAGE_SIZE, self.cap / 2)
                    .is_none()
                {
                    return added;
                }
                // The `emergency` fault point refuses like the page source would.
                let page = if crate::block::inject(rcu_core::fault::Point::Emergency, PAGE_SIZE) {
                    None
                } else {
                    self.pages.alloc()
                };
                let Some(p) = page else {
                    self.budget.release(PAGE_SIZE);
                    return added;
                };
                self.recycle_page(i, p);
                added += 1;
            }
        }
        added
    }

    /// Empties every slot's page cache (shrinker). Returns pages given back.
    pub fn drain_caches(&self) -> usize {
        let mut freed = 0;
        for k in self.krcs.iter() {
            let mut list = k.locked(|inner| {
                inner.ncache = 0;
                k.cached.store(0, Ordering::Relaxed);
                core::mem::replace(&mut inner.cache, core::ptr::null_mut())
            });
            while let Some(b) = NonNull::new(list) {
                // SAFETY: detached cached pages are ours.
                list = unsafe { (*b.as_ptr()).hdr.next };
                self.free_page(b.cast());
                freed += 1;
            }
        }
        freed
    }

    /// Pages cached on every slot (statistics).
    pub(crate) fn cached_pages(&self) -> usize {
        self.krcs
            .iter()
            .map(|k| k.cached.load(Ordering::Relaxed))
            .sum()
    }

    /// Emergency pages taken (statistics).
    pub(crate) fn cache_used(&self) -> u64 {
        self.krcs
            .iter()
            .map(|k| k.cache_used.load(Ordering::Relaxed))
            .sum()
    }
}
