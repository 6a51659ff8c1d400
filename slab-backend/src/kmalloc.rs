//! kmalloc: general-purpose allocation in size classes from 8 B to 8 KiB over `RawCache`s.
//!
//! # Implementation
//!
//! Thirteen classes, as in the kernel: 8, 16, 32, 64, 96, 128, 192, 256, 512, 1 KiB, 2 KiB,
//! 4 KiB, 8 KiB. A request goes to the smallest class that fits; objects are aligned to the
//! largest power of two dividing the class size (capped at the page size), so power-of-two
//! classes are naturally aligned and every object is at least 8-byte aligned. The classes are
//! created on first use and live for the rest of the process (never destroyed, so the lock-free
//! `*_nolock` paths can always reach them). Creating them allocates on the heap (the caches'
//! per-CPU slots and sheaves, names, registry entries), which aborts if it fails: the first use
//! first checks that the calling thread can allocate about that much ([`class_memory`]), and
//! otherwise fails (`kmalloc` returns `None`) and leaves the creation to a later call.
//!
//! [`kfree`] finds the cache from the slab header at `ptr & !(SLAB_ALIGN - 1)`, so it accepts
//! any slab object (kmalloc or `KmemCache`), like the kernel's `kfree`. Before doing its own
//! work, every normal-path call drains the deferred frees that `kfree_nolock` could not place.

use core::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use crate::cache::slab::{self, cache_of, header_checked};
use crate::cache::{RawCache, RawConfig};
use crate::page::PAGE_SIZE;
use crate::sheaf::Mode;

/// The kmalloc size classes.
pub const KMALLOC_SIZES: [usize; 13] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];
/// The largest size kmalloc serves.
pub const KMALLOC_MAX_SIZE: usize = 8192;

static CLASSES: OnceLock<Box<[Arc<RawCache>]>> = OnceLock::new();

/// The class caches, created on first use; `None` while the heap is too short to create them.
#[inline]
pub(crate) fn classes() -> Option<&'static [Arc<RawCache>]> {
    match CLASSES.get() {
        Some(c) => Some(c),
        None => create_classes(),
    }
}

/// Heap the creation of the classes needs, roughly: per class, the per-CPU slots with their two
/// sheaves each, plus a page for the rest (the cache, its name, its nodes and barn).
fn class_memory() -> usize {
    let per_cpu = core::mem::size_of::<crate::sheaf::Sheaf>() * 2 + 256;
    KMALLOC_SIZES.len() * (rcu_core::cpu::possible_cpus().max(1) * per_cpu + PAGE_SIZE)
}

#[cold]
#[inline(never)]
fn create_classes() -> Option<&'static [Arc<RawCache>]> {
    // The creation's allocations are infallible: fail softly instead when the memory is not
    // there (module docs). A heuristic, not a reservation.
    if !rcu_core::lowmem::heap_headroom(class_memory()) {
        return None;
    }
    // Both take the init lock themselves (or fork-handler registration): do them first.
    crate::cache::ensure_shrinker();
    // Under the init lock, so that no fork() child inherits the OnceLock half-initialised.
    let _init = crate::fork::init_lock();
    Some(CLASSES.get_or_init(|| {
        // Warm what the nolock paths read, so a signal handler never runs a lazy initialiser.
        let _ = rcu_core::cpu::possible_cpus();
        let _ = rcu_core::cpu::current_cpu();
        crate::cache::deferred::init();
        KMALLOC_SIZES
            .iter()
            .map(|&size| {
                let align = (1usize << size.trailing_zeros()).min(PAGE_SIZE);
                RawCache::create(RawConfig {
                    name: format!("kmalloc-{size}"),
                    size,
                    align,
                    typesafe: false,
                    debug: cfg!(debug_assertions),
                    kmalloc: true,
                    ctor: None,
                    drop_obj: None,
                })
                .unwrap_or_else(|e| panic!("creating kmalloc classes: {e}"))
            })
            .collect()
    }))
}

/// The class caches if they exist (the nolock paths never create them).
pub(crate) fn classes_if_ready() -> Option<&'static [Arc<RawCache>]> {
    CLASSES.get().map(|b| &**b)
}

/// Creates the kmalloc classes now. Call once before [`crate::kmalloc_nolock`] is used from a
/// signal handler (before that, it returns `None`). With too little heap to create them it
/// does nothing (a later call, or a `kmalloc`, creates them).
pub fn kmalloc_init() {
    let _ = classes();
}

/// Class of sizes up to 192 bytes, by `(size + 7) / 8` (the kernel's `kmalloc_size_index`).
const SMALL_CLASS: [u8; 25] = [
    0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6,
];

/// Index of the smallest class holding `size` bytes.
#[inline]
pub(crate) fn class_index(size: usize) -> Option<usize> {
    if size <= 192 {
        Some(SMALL_CLASS[size.div_ceil(8)] as usize)
    } else if size <= KMALLOC_MAX_SIZE {
        // Power-of-two classes from 256 (index 7): ceil(log2(size)) - 8 + 7.
        Some((usize::BITS - (size - 1).leading_zeros()) as usize - 1)
    } else {
        None
    }
}

/// Allocates `size` bytes (uninitialised, at least 8-byte aligned; `size == 0` gets the smallest
/// class). `None` for sizes above [`KMALLOC_MAX_SIZE`] or when memory cannot be had.
#[inline]
pub fn kmalloc(size: usize) -> Option<NonNull<u8>> {
    crate::cache::deferred::drain_if_pending();
    let c = classes()?.get(class_index(size)?)?;
    c.alloc(Mode::Normal).ok()
}

/// Like [`kmalloc`], zero-filled.
pub fn kzalloc(size: usize) -> Option<NonNull<u8>> {
    let p = kmalloc(size)?;
    // SAFETY: the object has at least `size` bytes and is ours.
    unsafe { p.as_ptr().write_bytes(0, size) };
    Some(p)
}

/// Frees an object from [`kmalloc`] (or any slab object: the cache is found from the slab).
///
/// # Safety
/// `p` is a live slab object owned by the caller and not used afterwards (for `KmemCache`
/// objects, the contract of [`crate::KmemCache::free`] applies).
#[inline]
pub unsafe fn kfree(p: NonNull<u8>) {
    crate::cache::deferred::drain_if_pending();
    // SAFETY: forwarded contract; the header's cache outlives it (slab Invariant 1) and its
    // `tc_id` is the cache's.
    unsafe {
        let h = header_checked(p);
        (*h.cache).free_normal(p, h.tc_id, false);
    }
}

/// Frees a batch of slab objects (any caches).
///
/// # Safety
/// As for [`kfree`], for each pointer; no pointer twice.
pub unsafe fn kfree_bulk(ps: &[NonNull<u8>]) {
    for &p in ps {
        // SAFETY: forwarded contract.
        unsafe { kfree(p) };
    }
}

/// The usable size of a slab object (its class size for kmalloc objects).
///
/// # Safety
/// `p` is a live slab object.
pub unsafe fn ksize(p: NonNull<u8>) -> usize {
    // SAFETY: forwarded contract.
    unsafe { cache_of(p).layout.size }
}

/// Whether `p` points into a live slab (a `mincore` call plus a magic check; for diagnostics
/// and for callers that must route a pointer to `kfree` or elsewhere).
pub fn is_slab_object(p: *const u8) -> bool {
    slab::is_slab_object(p)
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn class_index_picks_smallest_fit() {
        assert_eq!(class_index(0), Some(0));
        assert_eq!(class_index(8), Some(0));
        assert_eq!(class_index(9), Some(1));
        assert_eq!(class_index(65), Some(4));
        assert_eq!(class_index(97), Some(5));
        assert_eq!(class_index(8192), Some(12));
        assert_eq!(class_index(8193), None);
        for size in 0..=KMALLOC_MAX_SIZE + 64 {
            let want = KMALLOC_SIZES.iter().position(|&c| c >= size);
            assert_eq!(class_index(size), want, "size {size}");
        }
    }

    #[test]
    fn every_class_round_trips() {
        for (i, &size) in KMALLOC_SIZES.iter().enumerate() {
            let want = if i == 0 { 1 } else { KMALLOC_SIZES[i - 1] + 1 };
            let p = kmalloc(want).expect("kmalloc");
            // SAFETY: live kmalloc object.
            assert_eq!(unsafe { ksize(p) }, size);
            assert_eq!(p.as_ptr() as usize % 8, 0);
            if size.is_power_of_two() {
                assert_eq!(p.as_ptr() as usize % size.min(PAGE_SIZE), 0);
            }
            // SAFETY: `want` bytes are ours.
            unsafe {
                p.as_ptr().write_bytes(0x5a, want);
                kfree(p);
            }
        }
        assert!(kmalloc(KMALLOC_MAX_SIZE + 1).is_none());
    }

    #[test]
    fn kzalloc_zeroes_reused_memory() {
        let p = kmalloc(64).unwrap();
        // SAFETY: 64 bytes of ours.
        unsafe {
            p.as_ptr().write_bytes(0xff, 64);
            kfree(p);
        }
        let q = kzalloc(64).unwrap();
        // SAFETY: 64 bytes of ours.
        let s = unsafe { core::slice::from_raw_parts(q.as_ptr(), 64) };
        assert!(s.iter().all(|&b| b == 0));
        // SAFETY: live object.
        unsafe { kfree(q) };
    }

    #[test]
    fn is_slab_object_rejects_heap() {
        let b = Box::new([0u8; 64]);
        assert!(!is_slab_object(b.as_ptr()));
        let p = kmalloc(32).unwrap();
        assert!(is_slab_object(p.as_ptr()));
        // SAFETY: live object.
        unsafe { kfree(p) };
    }
}
