//! `kmalloc_nolock` / `kfree_nolock`: allocation from any context, including a signal handler
//! that interrupted the same thread inside the allocator.
//!
//! # Implementation
//!
//! Both run the per-CPU layer in [`Mode::Nolock`]: only the *current* CPU's slot is tried, once;
//! the barn and node locks are only try-locked; nothing is allocated or freed with the global
//! allocator, no slab is created, no shrinker runs, no lazy initialiser runs (the kmalloc classes,
//! the CPU-number lookup and the deferred lists are created by [`crate::kmalloc_init`] or the
//! first `kmalloc`; before that `kmalloc_nolock` returns `None`).
//!
//! * **alloc**: if this CPU's slot of the size class is held (the interrupted code may hold it),
//!   try the next size class once (the kernel's `-EBUSY` retry with `size = object_size + 1`);
//!   otherwise `None`.
//! * **free**: if the object cannot be placed (slot held, sheaves full and the barn or node
//!   try-lock failing), push it on this CPU's *deferred list* (`cache::deferred`, which has the
//!   lists' invariants and orderings), after checking that it is a kmalloc object (the lists'
//!   Invariant 1). The next normal-path `kmalloc`/`kfree`, the slab shrinker, or
//!   [`kfree_nolock_barrier`] drains every CPU's list through the normal free path.
//!
//! This module is the top of the allocation stack: it uses kmalloc's classes and the cache
//! layer, and nothing below uses it.

use core::ptr::NonNull;

use crate::cache::deferred::{self, defer, DEFERRED_TOTAL, PENDING};
use crate::cache::slab::cache_of;
use crate::kmalloc::{class_index, classes_if_ready};
use crate::primitive::sync::atomic::{AtomicU64, Ordering};
use crate::sheaf::{Miss, Mode};

static NEXT_CLASS_RETRIES: AtomicU64 = AtomicU64::new(0);

/// Counters of the nolock paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NolockStats {
    /// Frees that went to a deferred list since start.
    pub deferred_frees: u64,
    /// Objects on deferred lists now.
    pub deferred_pending: usize,
    /// Allocations that found their class's slot busy and tried the next class.
    pub next_class_retries: u64,
}

/// The nolock counters.
pub fn nolock_stats() -> NolockStats {
    NolockStats {
        deferred_frees: DEFERRED_TOTAL.load(Ordering::Relaxed),
        deferred_pending: PENDING.load(Ordering::Relaxed),
        next_class_retries: NEXT_CLASS_RETRIES.load(Ordering::Relaxed),
    }
}

/// Allocates `size` bytes without ever blocking: async-signal-safe. `None` when the classes do
/// not exist yet, the size is above 8 KiB, or no object is at hand without blocking (this
/// CPU's slot busy in this class and the next, or its sheaves and the slab lists empty or
/// locked). `None` means "no memory now"; callers should not spin on it.
pub fn kmalloc_nolock(size: usize) -> Option<NonNull<u8>> {
    let classes = classes_if_ready()?;
    let idx = class_index(size)?;
    for (attempt, i) in [idx, idx + 1].into_iter().enumerate() {
        let c = classes.get(i)?;
        match c.alloc(Mode::Nolock) {
            Ok(p) => return Some(p),
            Err(Miss::Busy) if attempt == 0 => {
                NEXT_CLASS_RETRIES.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => return None,
        }
    }
    None
}

/// Frees an object from [`kmalloc_nolock`] or [`crate::kmalloc`] without ever blocking:
/// async-signal-safe. If it cannot be placed now, it is deferred to a per-CPU list drained by
/// the next normal-path call.
///
/// # Safety
/// `p` is a live kmalloc object owned by the caller and not used afterwards.
pub unsafe fn kfree_nolock(p: NonNull<u8>) {
    // SAFETY: forwarded contract (a live slab object).
    let cache = unsafe { cache_of(p) };
    assert!(
        cache.kmalloc,
        "kfree_nolock: {p:p} belongs to cache {}, not to a kmalloc class",
        cache.name
    );
    crate::cache::sanitize::on_free_nolock(cache, p);
    // SAFETY: forwarded contract.
    let r = unsafe { cache.free(p, Mode::Nolock, false) };
    if let Err(p) = r {
        // Addressable again: the deferred list links it through its first word.
        crate::cache::sanitize::on_alloc(cache, p.as_ptr());
        defer(p);
    }
}

/// Waits until every free deferred before the call has been given back to its cache (drains
/// the lists in the caller). The analogue of the kernel's `defer_free_barrier()`.
pub fn kfree_nolock_barrier() {
    deferred::drain_deferred();
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;
    use crate::kmalloc::{classes, kfree, kmalloc, ksize};

    #[test]
    fn nolock_round_trip() {
        crate::kmalloc::kmalloc_init();
        // kmalloc_nolock never maps a slab: it only succeeds when this CPU's slot (or the barn
        // or a partial slab) has an object at hand. Concurrent tests and CPU migration can drain
        // it, so warm it with a normal alloc/free and retry (bounded).
        let p = (0..1000)
            .find_map(|_| {
                if let Some(w) = kmalloc(100) {
                    // SAFETY: a live object we own.
                    unsafe { kfree(w) };
                }
                kmalloc_nolock(100)
            })
            .expect("kmalloc_nolock found no object after 1000 warm-ups");
        // SAFETY: live object.
        unsafe {
            assert_eq!(ksize(p), 128);
            kfree_nolock(p);
        }
    }

    #[test]
    fn busy_slot_tries_next_class_once() {
        crate::kmalloc::kmalloc_init();
        // Make sure the 64-byte and 96-byte classes have objects at hand on this CPU.
        let warm: Vec<_> = (0..4).map(|_| kmalloc(64).unwrap()).collect();
        let warm2: Vec<_> = (0..4).map(|_| kmalloc(96).unwrap()).collect();
        for p in warm.into_iter().chain(warm2) {
            // SAFETY: live objects.
            unsafe { kfree(p) };
        }
        let c = &classes().unwrap()[class_index(64).unwrap()];
        // Hold every slot so that whatever CPU we land on, the 64-byte slot is busy.
        let cpus = rcu_core::cpu::possible_cpus();
        fn hold(c: &crate::cache::RawCache, cpu: usize, n: usize, f: &mut dyn FnMut()) {
            if cpu == n {
                f();
            } else {
                c.cpu.with_slot_held(cpu, || hold(c, cpu + 1, n, f));
            }
        }
        let mut got = None;
        let before = nolock_stats().next_class_retries;
        hold(c, 0, cpus, &mut || got = kmalloc_nolock(64));
        let retried = nolock_stats().next_class_retries > before;
        assert!(
            retried,
            "a busy slot must make kmalloc_nolock try the next class"
        );
        if let Some(p) = got {
            // SAFETY: live object.
            unsafe {
                assert_eq!(ksize(p), 96, "the retry uses the next class");
                kfree_nolock(p);
            }
        }
    }

    #[test]
    fn frees_into_busy_slots_are_deferred_and_drained() {
        crate::kmalloc::kmalloc_init();
        let c = &classes().unwrap()[class_index(192).unwrap()];
        let objs: Vec<_> = (0..8).map(|_| kmalloc(192).unwrap()).collect();
        let cpus = rcu_core::cpu::possible_cpus();
        fn hold(c: &crate::cache::RawCache, cpu: usize, n: usize, f: &mut dyn FnMut()) {
            if cpu == n {
                f();
            } else {
                c.cpu.with_slot_held(cpu, || hold(c, cpu + 1, n, f));
            }
        }
        let before = nolock_stats().deferred_frees;
        hold(c, 0, cpus, &mut || {
            for &p in &objs {
                // SAFETY: live objects, freed once.
                unsafe { kfree_nolock(p) };
            }
        });
        assert!(nolock_stats().deferred_frees >= before + 8);
        kfree_nolock_barrier();
        // The objects are back in the cache: allocating works and stats balance.
        let p = kmalloc(192).unwrap();
        // SAFETY: live object.
        unsafe { kfree(p) };
    }
}
