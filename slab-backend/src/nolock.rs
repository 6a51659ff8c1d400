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
//!   try-lock failing), push it on this CPU's *deferred list*: a lock-free LIFO linked through
//!   the object's first word (kmalloc objects are at least 8 bytes and 8-aligned, and no reader
//!   inspects free kmalloc memory). The next normal-path `kmalloc`/`kfree`, the slab shrinker, or
//!   [`kfree_nolock_barrier`] drains every CPU's list through the normal free path.
//!
//! Invariants:
//! 1. Only kmalloc objects are pushed on deferred lists (checked: other caches may be typesafe,
//!    whose objects must never be written after free).
//! 2. Deferred heads live for the whole process (created once, never freed).
//!
//! ## Memory orderings
//! A push writes the link, then CASes the head with Release; a drain swaps the head to null with
//! Acquire, which pairs with that Release so the links (and the object contents the freeing code
//! wrote before) are visible to the drainer. `PENDING` is a hint for the fast check (Relaxed); the
//! drain itself relies only on the heads.

use core::ptr::{self, NonNull};
use std::sync::OnceLock;

use crate::cache::sheaf::{Miss, Mode};
use crate::kmalloc::{cache_of, class_index, classes_if_ready};
use crate::primitive::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// One CPU's deferred list head, on its own cache line.
#[derive(Debug)]
#[repr(align(128))]
struct DeferredHead(AtomicPtr<u8>);

/// Deferred list heads, one per possible CPU (Invariant 2).
static HEADS: OnceLock<Box<[DeferredHead]>> = OnceLock::new();
/// Objects currently on deferred lists (hint).
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Statistics.
static DEFERRED_TOTAL: AtomicU64 = AtomicU64::new(0);
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

/// Creates the deferred lists (from kmalloc's class initialisation).
pub(crate) fn init() {
    HEADS.get_or_init(|| {
        (0..rcu_core::cpu::possible_cpus())
            .map(|_| DeferredHead(AtomicPtr::new(ptr::null_mut())))
            .collect()
    });
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
    crate::sanitize::on_free_nolock(cache, p);
    // SAFETY: forwarded contract.
    let r = unsafe { cache.free(p, Mode::Nolock, false) };
    if let Err(p) = r {
        // Addressable again: the deferred list links it through its first word.
        crate::sanitize::on_alloc(cache, p.as_ptr());
        defer(p);
    }
}

/// Pushes `p` (already checked, Invariant 1) on this CPU's deferred list.
fn defer(p: NonNull<u8>) {
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

/// Waits until every free deferred before the call has been given back to its cache (drains
/// the lists in the caller). The analogue of the kernel's `defer_free_barrier()`.
pub fn kfree_nolock_barrier() {
    drain_deferred();
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
