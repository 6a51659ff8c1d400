//! Deferred frees: the objects `kfree_nolock` could not place without blocking, kept on per-CPU
//! lock-free lists until a normal path gives them back to their caches.
//!
//! # Implementation
//!
//! A list is a lock-free LIFO linked through the object's first word (kmalloc objects are at
//! least 8 bytes and 8-aligned, and no reader inspects free kmalloc memory). `kfree_nolock`
//! pushes on the current CPU's list ([`defer`]); the next normal-path `kmalloc`/`kfree`
//! ([`drain_if_pending`]), the slab shrinker, or `kfree_nolock_barrier` drains every CPU's list
//! through the normal free path ([`drain_deferred`]). The lists are created by the kmalloc
//! classes' initialisation ([`init`]), never from a signal handler.
//!
//! This module sits in the cache layer, below kmalloc and the nolock API, so that the cache's
//! shrinker and kmalloc's normal paths drain it without calling up into either.
//!
//! Invariants:
//! 1. Only kmalloc objects are pushed on deferred lists (checked by `kfree_nolock`: other caches
//!    may be typesafe, whose objects must never be written after free).
//! 2. Deferred heads live for the whole process (created once, never freed).
//!
//! ## Memory orderings
//! A push writes the link, then CASes the head with Release; a drain swaps the head to null with
//! Acquire, which pairs with that Release so the links (and the object contents the freeing code
//! wrote before) are visible to the drainer. `PENDING` is a hint for the fast check (Relaxed); the
//! drain itself relies only on the heads.

use core::ptr::{self, NonNull};
use std::sync::OnceLock;

use super::slab::cache_of;
use crate::primitive::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crate::sheaf::Mode;

/// One CPU's deferred list head, on its own cache line.
#[derive(Debug)]
#[repr(align(128))]
struct DeferredHead(AtomicPtr<u8>);

/// Deferred list heads, one per possible CPU (Invariant 2).
static HEADS: OnceLock<Box<[DeferredHead]>> = OnceLock::new();
/// Objects currently on deferred lists (hint).
pub(crate) static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Frees deferred since start (statistics).
pub(crate) static DEFERRED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Creates the deferred lists (from kmalloc's class initialisation).
pub(crate) fn init() {
    HEADS.get_or_init(|| {
        (0..rcu_core::cpu::possible_cpus())
            .map(|_| DeferredHead(AtomicPtr::new(ptr::null_mut())))
            .collect()
    });
}

/// Pushes `p` (already checked, Invariant 1) on this CPU's deferred list.
pub(crate) fn defer(p: NonNull<u8>) {
    let Some(heads) = HEADS.get() else {
        unreachable!("kmalloc objects exist only after init")
    };
    let head = &heads[rcu_core::cpu::current_cpu() % heads.len()].0;
    let link = p.as_ptr().cast::<*mut u8>();
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        // SAFETY: `p` is a free kmalloc object of at least 8 bytes, 8-aligned (Invariant 1),
        // owned by this list from now on; nobody reads free kmalloc memory.
        unsafe { link.write(cur) };
        // Release: pairs with the Acquire swap in `drain_deferred` (publishes the link).
        match head.compare_exchange_weak(cur, p.as_ptr(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(c) => cur = c,
        }
    }
    PENDING.fetch_add(1, Ordering::Relaxed);
    DEFERRED_TOTAL.fetch_add(1, Ordering::Relaxed);
}

/// Drains the deferred lists if the hint says something is pending (normal paths only).
#[inline]
pub(crate) fn drain_if_pending() {
    if PENDING.load(Ordering::Relaxed) != 0 {
        drain_deferred();
    }
}

/// Frees every deferred object through the normal path. Never from a signal handler.
#[cold]
pub(crate) fn drain_deferred() -> usize {
    let Some(heads) = HEADS.get() else { return 0 };
    let mut n = 0;
    for h in heads.iter() {
        // Acquire: pairs with the Release CAS in `defer`.
        let mut p = h.0.swap(ptr::null_mut(), Ordering::Acquire);
        while let Some(obj) = NonNull::new(p) {
            // SAFETY: list members are free kmalloc objects whose first word is the link.
            p = unsafe { obj.as_ptr().cast::<*mut u8>().read() };
            // SAFETY: the object was checked by kfree_nolock (Invariant 1) and is owned by this
            // drain now; `checked = true` skips the debug double-free check done then.
            unsafe {
                let _ = cache_of(obj).free(obj, Mode::Normal, true);
            }
            PENDING.fetch_sub(1, Ordering::Relaxed);
            n += 1;
        }
    }
    n
}
