//! `SLAB_TYPESAFE_BY_RCU`: slab pages of typesafe caches go back only after a grace period.
//!
//! # Implementation
//!
//! A typesafe cache reuses freed objects at once (sheaves and slab bitmaps do not care), and its
//! free-list lives out of line (the slab bitmap), so a freed object keeps the bytes of a valid `T`
//! (the ctor made it one when the slab was created, and users free objects in a valid state). The
//! only way its memory could stop being a `T` is the slab being discarded: the `T`s dropped and
//! the pages unmapped. This module delays exactly that:
//!
//! 0. [`reserve_discard`] reserves one of the cache's [`discard_cap`] pending-discard places
//!    (`rcu_pending`, a CAS that never passes the cap); without a place the slab is not
//!    detached but stays on the node's empty list, where it is reused before any new slab is
//!    mapped (it is a slab of this cache, so reusing its objects is what typesafe permits);
//! 1. the node detaches the empty slab (no further allocation can come from it);
//! 2. [`defer_discard`] takes a GP snapshot and queues the release with `try_call_rcu` (the place
//!    reserved in step 0 counts it). With no memory for the callback the slab is not queued but
//!    filed back as an empty slab (giving its place back), so that a free or a shrink never
//!    waits for a grace period: the caller may hold a lock a reader waits for, or be inside a
//!    read-side critical section itself (a reader's free, or reclaim run by a reader's page
//!    allocation), where the slab is always filed back. Only destroy, which may block and must
//!    release every slab, queues with `call_rcu`, whose fallback waits. It is never called with
//!    a slab lock held (the cache module stashes slabs detached under its registry or flush
//!    lock until they are released);
//! 3. after a full grace period the callback asserts (debug) that the snapshot's GP completed,
//!    drops the objects, unmaps the pages and gives the place back — a drop guard gives it back
//!    also when a user `Drop` panics there (the slab's pages then leak).
//!
//! Invariant 1: outside destroy, at most [`discard_cap`] slabs of a cache are detached and not
//! yet unmapped. So while grace periods are slow (a long reader, a starved callback thread), a
//! churn that empties and refills slabs costs at most [`PENDING_DISCARD_BYTES`] (or
//! [`MIN_PENDING_DISCARDS`] slabs) on top of the slabs it really uses, instead of a new slab for
//! every one emptied. Destroy detaches every empty slab past the cap
//! ([`force_reserve_discard`]) and waits for them all.
//!
//! Any reader that could have obtained a pointer into the slab did so before step 1 (after it no
//! object of the slab is reachable: all were free, and allocation no longer sees the slab), so it
//! was inside a read-side critical section that began before the grace period of step 2 and has
//! ended before step 3.
//!
//! The snapshot is the detaching thread's, not the threads' that freed the objects, so it covers
//! a reader only because every object's unpublish happens-before it (rcu-core `gp.rs`,
//! "Covering another thread's retire"): a user unpublishes an object, then frees it (program
//! order); the free reaches the slab's bitmap through the thread cache (window end Release,
//! then the owner's own flush or a stealer's Acquire load of `busy`: `cache/tcache.rs`), a
//! sheaf (slot lock) or the node directly, and every bitmap change and the detach of step 1 hold
//! the node lock; the detaching thread takes the snapshot of step 2 after it. A reader whose
//! section starts after the grace period's start so sees the object unpublished, and one that
//! started before is waited for.
//!
//! `shrink()` never waits for that grace period; destroy waits for every queued discard with
//! `rcu_barrier()` before the cache itself goes (cache Invariant 1), and therefore runs only where
//! `rcu_barrier` may wait: a drop inside a read-side critical section or on a callback thread
//! hands it to a thread of its own, an explicit `destroy()` there panics before it queues
//! anything (cache Invariant 3).
//!
//! ## Memory orderings
//! The grace period orders the readers' accesses before the unmap (rcu-core's guarantee).
//! `rcu_pending` is a budget word: nothing is published through it (the slab travels under the
//! node lock and through `call_rcu`), so its CAS and decrement are Relaxed; the CAS alone keeps
//! it under the cap (Invariant 1).

use core::ptr::NonNull;

use crate::cache::slab::{self, SlabHeader};
use crate::cache::RawCache;
use crate::page::PAGE_SIZE;
use crate::primitive::sync::atomic::Ordering;

/// Bytes of slabs one typesafe cache may have waiting for a grace period at once.
pub(crate) const PENDING_DISCARD_BYTES: usize = 4 << 20;
/// Slabs one typesafe cache may have waiting at once, whatever their size.
pub(crate) const MIN_PENDING_DISCARDS: usize = 4;

/// How many slabs of `cache` may wait for a grace period at once (Invariant 1).
pub(crate) fn discard_cap(cache: &RawCache) -> usize {
    (PENDING_DISCARD_BYTES / (cache.layout.pages * PAGE_SIZE)).max(MIN_PENDING_DISCARDS)
}

/// Grants the discard of one empty slab: always for an ordinary cache (discarded at once); for
/// a typesafe one, reserves a pending-discard place, or refuses when all [`discard_cap`] are
/// taken (step 0). Called under the node lock; a granted place is given back by the callback
/// of [`defer_discard`].
pub(crate) fn reserve_discard(cache: &RawCache) -> bool {
    if !cache.typesafe {
        return true;
    }
    let cap = discard_cap(cache);
    // Relaxed: a budget word (module docs); the CAS never lets it pass `cap`.
    cache
        .rcu_pending
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            (p < cap).then_some(p + 1)
        })
        .is_ok()
}

/// [`reserve_discard`] without the cap, for destroy (every empty slab must go).
pub(crate) fn force_reserve_discard(cache: &RawCache) -> bool {
    if cache.typesafe {
        // Relaxed: a budget word (module docs); destroy may pass the cap (Invariant 1).
        cache.rcu_pending.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// A slab address that may travel to the RCU callback thread.
struct SlabAddr(usize);

/// Queues the discard of a detached, empty slab of a typesafe cache after a grace period. Its
/// pending-discard place was reserved before the detach ([`reserve_discard`]). With `wait`
/// (destroy, which may block), no memory for the callback makes it wait for a grace period
/// (`call_rcu`'s fallback); without, it returns `false` and queues nothing (the caller files
/// the slab back).
pub(crate) fn defer_discard(cache: &RawCache, slab: NonNull<SlabHeader>, wait: bool) -> bool {
    debug_assert!(cache.typesafe);
    let snap = rcu_core::get_state_synchronize_rcu();
    let addr = SlabAddr(slab.as_ptr() as usize);
    let release = move || {
        let addr = addr;
        debug_assert!(
            rcu_core::poll_state_synchronize_rcu(snap),
            "typesafe slab released before its grace period completed"
        );
        let slab = NonNull::new(addr.0 as *mut SlabHeader).expect("slab address");
        // SAFETY: the slab is still mapped (we unmap it below) and its cache outlives every queued
        // discard (destroy runs rcu_barrier first: cache Invariant 1).
        let cache = unsafe { &*slab.as_ref().cache };
        // Gives the place back (step 3) when the discard ends, also when a user `Drop` in it
        // panics (rcu-core contains the callback's panic; the slab's pages then leak): without
        // it the cache's cap of pending discards would shrink for good.
        let _place = GiveBack(cache);
        // SAFETY: detached with every object free (node::put / detach_empty), and a grace period
        // has elapsed since, so no reader can still hold a pointer into it (module docs).
        unsafe { slab::discard_now(slab) };
    };
    if wait {
        rcu_core::call_rcu(release);
        true
    } else {
        rcu_core::try_call_rcu(release).is_ok()
    }
}

/// Gives a pending-discard place of its cache back when dropped.
struct GiveBack<'a>(&'a RawCache);

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        // Relaxed: a budget word (module docs).
        self.0.rcu_pending.fetch_sub(1, Ordering::Relaxed);
    }
}
