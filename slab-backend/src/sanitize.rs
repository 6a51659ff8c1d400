//! Sanitizer-aware allocation: AddressSanitizer sees the slab's objects and pages.
//!
//! The slab hands out memory from its own `mmap`ed pages, which AddressSanitizer knows nothing
//! about: without help, a use of a freed `KmemCache` or `kmalloc` object is a plain access to
//! mapped memory. Built with `--cfg rcu_sanitize` (together with `-Zsanitizer=address`, which
//! provides the interface), the slab uses ASan's manual poisoning, as the kernel's KASAN does
//! for SLUB:
//!
//! * an object is **unpoisoned when it is allocated** and **poisoned when it is freed**, so an
//!   access to a freed object is reported (`use-after-poison`);
//! * a page run is unpoisoned when the page layer maps it (the address may carry the poison of
//!   an earlier run) and poisoned when it gives it back; the run is then unmapped, so an access
//!   to a released slab or a freed kfree-batch block page faults, and ASan reports the fault
//!   (`SEGV on unknown address`, with the access's stack; its `munmap` interceptor may clear
//!   the shadow);
//! * a **`SLAB_TYPESAFE_BY_RCU`** object may be read after its free until its slab is released
//!   (the point of such a cache), so it is not poisoned at free: only the release of its slab
//!   poisons it;
//! * with [`set_rcu_debug`] (or `RCU_KIT_SLAB_RCU_DEBUG=1`), in the spirit of the kernel's
//!   `CONFIG_SLUB_RCU_DEBUG`, the free of a typesafe object is delayed by a grace period
//!   (`call_rcu`) and the object is poisoned then: any access after that grace period — by
//!   definition outside every reader that could have found it — is reported. When the callback
//!   cannot be queued (no memory) the free is not delayed but a normal typesafe free: it never
//!   waits for a grace period (the caller may be inside a reader, or hold a lock a reader waits
//!   for), as a free in the normal mode never does.
//!
//! kfree-batch's blocks and park arrays are page-layer memory the kit itself reads; they stay
//! unpoisoned while the kit uses them. In normal builds every function here is an empty inline
//! function: the poisoning costs nothing.
//!
//! # Implementation
//!
//! 1. Hooks (in `cache::sanitize`, above the cache; this module sits below the page layer and
//!    knows no cache): `RawCache::alloc` (after an object is taken, before it is returned) calls
//!    `on_alloc`; the frees (`free_normal`; `kfree_nolock`) call `on_free` /
//!    `on_free_nolock` after the debug checks and before the object enters any cache layer
//!    (so no other thread can have it yet); a `Nolock` free that fails unpoisons the object
//!    again before linking it on the deferred list;
//!    the page layer calls `unpoison` after mapping and `poison` before unmapping; a slab's
//!    discard unpoisons the run first, because it drops the `T`s of ctor caches, which reads
//!    free (poisoned) objects.
//! 2. The slab keeps its metadata outside the objects (bitmaps, sheaves, thread-cache entries),
//!    so poisoned objects are never read by the allocator itself.
//! 3. The deferred free holds an `Arc` of the cache in the callback (two words: stored inline,
//!    no allocation), so the cache outlives it; a thread-local flag marks the callback's own
//!    free, which is the real one. Destroying a typesafe cache in this mode waits for the
//!    deferred frees first (`rcu_barrier`, where the destroy may block anyway: `destroy_raw`,
//!    so a destroy deferred to a thread of its own waits too).
//!
//! Orderings: the debug switch is a Relaxed flag (a free racing with the switch takes either
//! path; both are correct).

#[cfg(rcu_sanitize)]
extern "C" {
    fn __asan_poison_memory_region(addr: *const core::ffi::c_void, size: usize);
    fn __asan_unpoison_memory_region(addr: *const core::ffi::c_void, size: usize);
    fn __asan_region_is_poisoned(
        addr: *const core::ffi::c_void,
        size: usize,
    ) -> *const core::ffi::c_void;
}

/// Marks `[p, p + len)` as not addressable (no-op in normal builds).
#[inline(always)]
pub(crate) fn poison(p: *const u8, len: usize) {
    #[cfg(rcu_sanitize)]
    // SAFETY: the ASan interface only writes shadow memory for the range; any address is allowed.
    unsafe {
        __asan_poison_memory_region(p.cast(), len)
    };
    #[cfg(not(rcu_sanitize))]
    let _ = (p, len);
}

/// Marks `[p, p + len)` as addressable again (no-op in normal builds).
#[inline(always)]
pub(crate) fn unpoison(p: *const u8, len: usize) {
    #[cfg(rcu_sanitize)]
    // SAFETY: as in `poison`.
    unsafe {
        __asan_unpoison_memory_region(p.cast(), len)
    };
    #[cfg(not(rcu_sanitize))]
    let _ = (p, len);
}

/// Whether any byte of `[p, p + len)` is poisoned (always `false` in normal builds). For
/// probes of memory that may not be the slab's (`is_slab_object`).
#[inline(always)]
pub(crate) fn is_poisoned(p: *const u8, len: usize) -> bool {
    #[cfg(rcu_sanitize)]
    // SAFETY: the ASan interface only reads shadow memory; any address is allowed.
    return !unsafe { __asan_region_is_poisoned(p.cast(), len) }.is_null();
    #[cfg(not(rcu_sanitize))]
    {
        let _ = (p, len);
        false
    }
}

/// Whether this build poisons (built with `--cfg rcu_sanitize`).
pub const POISONING: bool = cfg!(rcu_sanitize);

#[cfg(rcu_sanitize)]
pub(crate) mod debug {
    use crate::primitive::sync::atomic::{AtomicU8, Ordering};

    /// 0: not read from the environment yet; 1: off; 2: on.
    static RCU_DEBUG: AtomicU8 = AtomicU8::new(0);
    /// Set at the first deferred free: destroy waits for deferred frees from then on, even if
    /// the mode was switched off since.
    pub(crate) static DEFERRED: crate::primitive::sync::atomic::AtomicBool =
        crate::primitive::sync::atomic::AtomicBool::new(false);

    std::thread_local! {
        /// Set while a deferred free's callback performs the real free.
        pub(crate) static REAL_FREE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    }

    pub(super) fn set(on: bool) {
        RCU_DEBUG.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    }

    pub(crate) fn get() -> bool {
        match RCU_DEBUG.load(Ordering::Relaxed) {
            0 => {
                let on = std::env::var_os("RCU_KIT_SLAB_RCU_DEBUG").is_some_and(|v| v == "1");
                let _ = RCU_DEBUG.compare_exchange(
                    0,
                    if on { 2 } else { 1 },
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                RCU_DEBUG.load(Ordering::Relaxed) == 2
            }
            v => v == 2,
        }
    }
}

/// Turns the typesafe RCU debug mode on or off (module docs; only in `rcu_sanitize` builds,
/// a no-op otherwise). Overrides `RCU_KIT_SLAB_RCU_DEBUG`.
pub fn set_rcu_debug(on: bool) {
    #[cfg(rcu_sanitize)]
    debug::set(on);
    #[cfg(not(rcu_sanitize))]
    let _ = on;
}

/// Whether the typesafe RCU debug mode is on (always `false` in normal builds).
pub fn rcu_debug() -> bool {
    #[cfg(rcu_sanitize)]
    return debug::get();
    #[cfg(not(rcu_sanitize))]
    false
}
