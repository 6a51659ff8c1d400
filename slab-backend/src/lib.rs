//! Page layer, slab caches and kmalloc for rcu-kit: the kernel's SLUB in userspace.
//!
//! * **Page layer** ([`page`]): every page the kit uses is mapped here, accounted, and limited by
//!   [`set_memory_limit`]; failures return `None` after the registered shrinkers ([`shrink`]) ran.
//!   Released pages are unmapped, so a premature release faults instead of hiding.
//! * **[`KmemCache<T>`]**: fixed-size object caches with per-thread object caches in front of
//!   per-CPU sheaves, a per-node barn and per-node slab lists, optional ctor (run once per
//!   object when a slab is made),
//!   `HWCACHE_ALIGN`, bulk free, [`KmemCache::shrink`], [`KmemCache::stats`] and [`slabinfo`].
//! * **`SLAB_TYPESAFE_BY_RCU`** ([`KmemCacheBuilder::typesafe_by_rcu`]): freed objects may be
//!   reused at once, but their memory stays a valid `T` of the cache while any reader that could
//!   have seen them is inside a read-side critical section. Slabs waiting for that grace period
//!   are capped per cache (4 MiB, at least 4 slabs); past the cap empty slabs are kept and
//!   reused, so slow grace periods do not grow the cache.
//! * **kmalloc** ([`kmalloc`], [`kfree`], [`ksize`]) in 13 size classes from 8 B to 8 KiB, and the
//!   async-signal-safe [`kmalloc_nolock`] / [`kfree_nolock`].
//!
//! Where it fits: RCU readers hold a read-side critical section (`rcu_core::rcu_read_lock`) while
//! they use objects; writers retire unpublished objects so that they are freed only after a grace
//! period (`rcu_core::synchronize_rcu`, `rcu_core::call_rcu`, `kfree_batch::kfree_rcu`). A
//! typesafe cache is the fourth path: it frees objects at once and delays only the return of its
//! pages, which is cheaper but moves the burden of revalidation to readers (below). Fallible calls
//! return [`SlabError`] (implements `std::error::Error`) or `None` for "no memory".
//!
//! # WARNING: read this (`SLAB_TYPESAFE_BY_RCU`)
//!
//! A typesafe cache delays the release of its *pages*, not of its *objects*. An object you find
//! under `rcu_read_lock()` may have been freed and handed out again — to a different owner, with a
//! different key — between your lookup and your access. The memory is guaranteed to be a valid
//! `T` of this cache (which is why a ctor is required), nothing more. So a reader must:
//!
//! 1. look the object up inside a read-side critical section;
//! 2. take a reference with an *acquire* `inc_not_zero` (a zero count means "free or being
//!    freed": give up or retry);
//! 3. **recheck the identity** (key, owner, …) *after* taking the reference, and drop the
//!    reference and retry if it does not match.
//!
//! Writers must initialise an object fully *before* publishing its refcount with release
//! ordering, and free objects back in a valid state (e.g. refcount 0, lock unlocked).
//!
//! ```
//! use core::ptr::NonNull;
//! use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
//! use slab_backend::KmemCache;
//!
//! struct Obj {
//!     refcnt: AtomicUsize, // 0 = free
//!     key: AtomicU64,
//! }
//! fn ctor() -> Obj {
//!     Obj { refcnt: AtomicUsize::new(0), key: AtomicU64::new(0) }
//! }
//!
//! let cache = KmemCache::<Obj>::builder("doc-warning")
//!     .typesafe_by_rcu(true)
//!     .ctor(ctor)
//!     .build()
//!     .unwrap();
//! let table: AtomicPtr<Obj> = AtomicPtr::new(core::ptr::null_mut()); // a one-slot "hash table"
//!
//! // Writer: initialise, then publish the refcount (release), then the pointer.
//! let p = cache.alloc().unwrap();
//! // SAFETY (doc): with a ctor, `p` is a valid Obj that we own.
//! let o = unsafe { p.as_ref() };
//! o.key.store(42, Ordering::Relaxed);
//! o.refcnt.store(1, Ordering::Release);
//! table.store(p.as_ptr(), Ordering::Release);
//!
//! // Reader: lookup, inc_not_zero (acquire), then recheck the key.
//! let get = |key: u64| -> Option<NonNull<Obj>> {
//!     let _g = rcu_core::rcu_read_lock();
//!     let p = NonNull::new(table.load(Ordering::Acquire))?;
//!     // SAFETY (doc): typesafe cache + read-side critical section: a valid Obj, maybe reused.
//!     let o = unsafe { p.as_ref() };
//!     let mut c = o.refcnt.load(Ordering::Relaxed);
//!     loop {
//!         if c == 0 {
//!             return None; // free or being freed
//!         }
//!         match o.refcnt.compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Relaxed) {
//!             Ok(_) => break,
//!             Err(now) => c = now,
//!         }
//!     }
//!     if o.key.load(Ordering::Relaxed) != key {
//!         o.refcnt.fetch_sub(1, Ordering::Release); // reused for another key: not ours
//!         return None;
//!     }
//!     Some(p)
//! };
//!
//! let r = get(42).expect("found");
//! // SAFETY (doc): we hold a reference.
//! unsafe { r.as_ref() }.refcnt.fetch_sub(1, Ordering::Release);
//! assert!(get(7).is_none(), "identity recheck rejects a different key");
//!
//! // Writer: unpublish, drop the table's reference, free in the ctor state.
//! table.store(core::ptr::null_mut(), Ordering::Release);
//! if o.refcnt.fetch_sub(1, Ordering::Release) == 1 {
//!     std::sync::atomic::fence(Ordering::Acquire);
//!     o.key.store(0, Ordering::Relaxed);
//!     // SAFETY (doc): last reference gone; the object is back in its ctor state.
//!     unsafe { cache.free(p) };
//! }
//! ```
//!
//! # Implementation: modules
//!
//! Bottom to top; a module uses the ones above it in this list, never one below it:
//!
//! 1. `primitive`, `lock`: the loom-aware shim and the locks; `sanitize`: ASan's poisoning
//!    interface and the typesafe RCU debug switch (the cache's hooks are `cache::sanitize`).
//! 2. `sheaf`: the per-CPU sheaves and the barn (generic over its backing; the loom model runs
//!    it alone).
//! 3. `page`: page runs and the memory limit.
//! 4. `fork`: the `pthread_atfork` registration and the init lock; `shrink`: the shrinkers
//!    `page` runs under pressure.
//! 5. `cache`: `RawCache` and `KmemCache` (its own modules: `slab`, `node`, `tcache`,
//!    `deferred`, then `cache` itself, then `sanitize`, `destroy`, `fork`, `typed`).
//! 6. `typesafe`: the RCU-deferred discard of a typesafe cache's slabs; `stats`.
//! 7. `kmalloc`: the size classes over `cache`; it drains the deferred frees of `cache::deferred`
//!    on its normal paths.
//! 8. `nolock`: `kmalloc_nolock` / `kfree_nolock` over `kmalloc`'s classes; it pushes what it
//!    cannot place on `cache::deferred`'s lists, which the normal paths and the cache's shrinker
//!    drain without calling up into it.
//! 9. `test_hooks`, then this file's re-exports.
//!
//! Known exceptions (`tests/layering.rs` checks the order and allows only these): the fork
//! handlers of `fork`, which `shrink` and `cache` register, call into `shrink` and
//! `cache::fork`; `page` runs the shrinkers of `shrink` under pressure; `cache` calls `typesafe`
//! for the discard cap and returns `stats`' `CacheStats`.
//!
//! # Lock order
//!
//! `init → cache registry → flush → barn | per-node lists`; CPU slots are only try-locked (the
//! `fork()` prepare handler waits for them, bounded); no page is allocated and nothing waits for
//! a grace period under any of these locks (see the `cache` module's implementation notes).
//!
//! # fork()
//!
//! `pthread_atfork` handlers take every slab lock before `fork()` and release them after, so a
//! child of a multi-threaded process can allocate, free, shrink, create and destroy caches and
//! use `kmalloc_nolock`. Free objects that another thread was moving at the moment of the fork
//! are lost to the child (a destroy there may report them as [`SlabError::Leaked`]). Crates
//! layered on this one call [`install_fork_handlers`] before registering their own handlers.

#![cfg_attr(rcu_loom, allow(dead_code))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "slab-backend supports Linux only: it maps and checks its pages with mmap(2), munmap(2) \
     and mincore(2), and builds on rcu-core (membarrier(2), futex(2))"
);

mod lock;
mod primitive;
mod sheaf;

#[cfg(not(rcu_loom))]
mod cache;
#[cfg(not(rcu_loom))]
mod fork;
#[cfg(not(rcu_loom))]
mod kmalloc;
#[cfg(not(rcu_loom))]
mod nolock;
#[cfg(not(rcu_loom))]
pub mod page;
#[cfg(not(rcu_loom))]
pub mod sanitize;
#[cfg(not(rcu_loom))]
pub mod shrink;
#[cfg(not(rcu_loom))]
mod stats;
#[cfg(not(rcu_loom))]
mod typesafe;

/// Hooks that hold internal locks, for the `fork()` tests. Not a stable API.
#[cfg(not(rcu_loom))]
#[doc(hidden)]
pub mod test_hooks;

/// The per-CPU sheaf layer, exposed for the loom model (`tests/loom_sheaf.rs`). Not a stable API.
#[doc(hidden)]
pub mod sheaf_model {
    pub use crate::sheaf::*;
}

#[cfg(not(rcu_loom))]
pub use crate::{
    cache::{KmemCache, KmemCacheBuilder, SlabError},
    fork::install_fork_handlers,
    kmalloc::{
        is_slab_object, kfree, kfree_bulk, kmalloc, kmalloc_init, ksize, kzalloc, KMALLOC_MAX_SIZE,
        KMALLOC_SIZES,
    },
    nolock::{kfree_nolock, kfree_nolock_barrier, kmalloc_nolock, nolock_stats, NolockStats},
    page::{memory_limit, memory_stats, set_memory_limit, MemoryStats, PAGE_SIZE},
    shrink::{register_shrinker, shrink_all, unregister_shrinker, ShrinkerId},
    stats::{all_cache_stats, slabinfo, CacheStats},
};
