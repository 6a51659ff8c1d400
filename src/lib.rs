//! # rcu-kit
//!
//! The Linux kernel's RCU memory-reclamation machinery in userspace: the grace-period engine
//! ([`rcu_core`]), a slab allocator with `SLAB_TYPESAFE_BY_RCU` semantics ([`slab_backend`]) and
//! the `kfree_rcu()` batcher ([`kfree_batch`]). This facade re-exports all three, and adds safe
//! building blocks for concurrent data structures: guard-bound pointers ([`Atomic`],
//! [`Shared`], [`Retired`]), owning RCU pointers whose writers retire through `kfree_rcu`
//! ([`RcuCell`], [`RcuBox`]), a kernel-style list ([`RcuList`]), a concurrent hash map
//! ([`map::RcuHashMap`]) and a [`guide`].
//!
//! ## Concepts
//!
//! **Read-copy update** splits access to shared data in two. *Readers* run inside a
//! **read-side critical section** — from [`rcu_read_lock`] until the returned [`RcuReadGuard`]
//! drops — and follow pointers with no lock, no atomic read-modify-write and no store to shared
//! memory. *Writers* never change what a reader may be looking at: they build a new version,
//! publish it with one pointer store, and only then deal with the old version.
//!
//! The old version may still be in use by readers that loaded the pointer before the store. A
//! **grace period** is any span of time at the end of which every critical section that was
//! running at its start has ended; once one has passed after the unpublish, nobody can hold the
//! old version any more, and it can be freed. Guards are cheap (a thread-local store and a
//! compiler fence; the writer side pays with `membarrier`), so readers scale with cores.
//!
//! There are four ways to retire an old version, from simplest to most specialised:
//!
//! * **[`synchronize_rcu`]**: block the writer until a grace period has passed, then drop the
//!   value in place. Simple and memory-exact, but milliseconds per call, and forbidden inside a
//!   critical section.
//! * **[`call_rcu`]**: queue a closure that runs after a grace period on a thread bound to the
//!   caller's CPU. Never blocks; one callback per object.
//! * **[`kfree_rcu`]**: queue a `Box` for freeing after a grace period. Costs 8 bytes per object
//!   in per-CPU page-sized blocks, keeps pending memory under a hard cap, and has a defined
//!   fallback when memory runs out. The default choice for freeing memory.
//! * **A typesafe cache** ([`KmemCache`] with `typesafe_by_rcu(true)`): objects are freed back to
//!   the cache at once and may be reused immediately, but their memory stays a valid `T` of the
//!   cache while any reader could see it. Readers must revalidate identity after taking a
//!   reference; in return there is no waiting at all and reuse stays cache-hot. **WARNING**: such
//!   an object can be freed and reused while a reader holds a pointer to it, and a stale reader
//!   may read fields while the new owner writes them; [`TypesafeCache`] (module
//!   [`typesafe`]) enforces the rule that follows — only `&T` of a `Sync` `T`, never `&mut T` —
//!   and provides the revalidating lookup ([`TsAtomic::get`]).
//!
//! The [`guide`] explains how to choose between them, how to size the memory bound, which misuse
//! is caught, and how to move from crossbeam-epoch or liburcu.
//!
//! ## The API by task
//!
//! | I want to ...                                   | use                                                       |
//! |-------------------------------------------------|-----------------------------------------------------------|
//! | read shared data                                | [`rcu_read_lock`], [`RcuCell::read`], [`rcu_read_lock_held`] |
//! | publish a single owned value                    | [`RcuCell`] (nullable), [`RcuBox`] (always set): `replace`, `update`, `compare_exchange` retire with `kfree_rcu`; `*_call_rcu`, `*_sync`, `*_with` |
//! | link nodes of my own structure                  | [`Atomic`]: `load(&guard)` gives a [`Shared`]; `swap` / `compare_exchange` hand back a [`Retired`] |
//! | keep a list                                     | [`RcuList`]: `push_front`/`push_back`/`remove`/`replace`, `iter(&guard)` |
//! | wait for readers                                | [`synchronize_rcu`], [`synchronize_rcu_expedited`]         |
//! | wait without blocking now                       | [`get_state_synchronize_rcu`], [`start_poll_synchronize_rcu`], [`poll_state_synchronize_rcu`], [`cond_synchronize_rcu`] |
//! | run code after a grace period                   | [`call_rcu`], then [`rcu_barrier`] to wait for all of it   |
//! | free boxes after a grace period                 | [`kfree_rcu`], [`kfree_rcu_raw`] (a published raw pointer), [`kfree_rcu_raw_charged`] (one owning a buffer), [`kfree_rcu_head`], [`kvfree_rcu_barrier`], [`kfree_stats`] |
//! | allocate objects that readers may see reused    | [`TypesafeCache`] (safe: [`TsRef`], [`TsAtomic::get`]); raw: [`KmemCache`], [`KmemCacheBuilder`], [`kfree_rcu_cache`], [`slabinfo`], [`CacheStats`] |
//! | bound or inspect memory                         | [`set_memory_limit`], [`slab_backend::memory_stats`], [`kfree_configure`] with a [`Config`], [`kfree_stats`] |
//! | get a concurrent map                            | [`map::RcuHashMap`]; [`map::TypesafeHashMap`] (nodes from a typesafe cache, reused at once; counted lookups) |
//! | be told about stalled readers                   | [`rcu_core::set_stall_hook`], [`rcu_core::set_stall_timeout`] |
//!
//! ```
//! use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuCell};
//!
//! #[derive(Debug)]
//! struct Config {
//!     name: String,
//!     limit: u32,
//! }
//!
//! let current = RcuCell::new(Some(Box::new(Config { name: "a".into(), limit: 1 })));
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         // Reader: no lock; the reference lives as long as the guard.
//!         let g = rcu_read_lock();
//!         if let Some(c) = current.read(&g) {
//!             assert!(c.limit >= 1);
//!         }
//!     });
//!     // Writer: copy, modify, publish; the old Config is freed after a grace period.
//!     current.update(|old| {
//!         let old = old.expect("set above");
//!         Some(Box::new(Config { name: old.name.clone(), limit: old.limit + 1 }))
//!     });
//! });
//! assert_eq!(current.read(&rcu_read_lock()).map(|c| c.limit), Some(2));
//! kvfree_rcu_barrier();
//! ```
//!
//! ## Errors
//!
//! Fallible calls return typed errors that implement [`std::error::Error`]: [`SlabError`]
//! (cache creation and destruction), [`ConfigError`] (batcher configuration),
//! [`CompareExchangeError`] ([`RcuCell::compare_exchange`]), [`CompareExchangeFailure`]
//! ([`Atomic::compare_exchange`]). Allocation failure is `None`, never
//! an abort. Misuse that could only hang or free early (blocking for a grace period inside a
//! critical section) panics with a message that says "read-side critical section".

// `.ci/run` checks that every public item has an example: rustdoc's lint for it is unstable, so
// it runs only under `--cfg rcu_doc_examples` (with `RUSTC_BOOTSTRAP=1`).
#![cfg_attr(rcu_doc_examples, feature(rustdoc_missing_doc_code_examples))]
#![cfg_attr(rcu_doc_examples, deny(rustdoc::missing_doc_code_examples))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "rcu-kit supports Linux only: its crates need membarrier(2), futex(2), sched_getcpu(3), \
     mmap(2), munmap(2) and mincore(2)"
);

mod cell;
mod cell_ext;
mod link;
pub mod list;
pub mod map;
mod map_typesafe;
mod primitive;
pub mod ptr;
pub mod typesafe;
mod writer_lock;

#[doc = include_str!("../docs/guide.md")]
pub mod guide {}

pub use kfree_batch;
pub use rcu_core;
pub use slab_backend;

pub use cell::{RcuBox, RcuCell};
pub use cell_ext::{RcuCellExt, RetireByKfree};
pub use list::{ListNode, ListWriter, ListWriterToken, RcuList};
pub use ptr::{Atomic, CompareExchangeFailure, Retired, Shared};
pub use typesafe::{TsAtomic, TsRef, TypesafeCache};

/// Example:
///
/// ```
/// let g = rcu_kit::rcu_read_lock();
/// assert!(rcu_kit::rcu_read_lock_held());
/// drop(g);
/// assert!(!rcu_kit::rcu_read_lock_held());
/// ```
pub use rcu_core::rcu_read_lock_held;

/// Example (the writer waits for readers, then frees in place):
///
/// ```
/// let slot = rcu_kit::RcuCell::new(Some(Box::new(1u32)));
/// let old = slot.swap(Some(Box::new(2))).unwrap();
/// rcu_kit::synchronize_rcu(); // every reader that could see 1 has finished
/// let one: Box<u32> = old.synchronize(); // (waits again; shown for the pairing)
/// assert_eq!(*one, 1);
/// ```
pub use rcu_core::synchronize_rcu;

/// Example:
///
/// ```
/// rcu_kit::synchronize_rcu_expedited(); // spins instead of sleeping
/// ```
pub use rcu_core::synchronize_rcu_expedited;

/// Example:
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// let ran = Arc::new(AtomicBool::new(false));
/// let r = ran.clone();
/// rcu_kit::call_rcu(move || r.store(true, Ordering::Relaxed));
/// rcu_kit::rcu_barrier();
/// assert!(ran.load(Ordering::Relaxed));
/// ```
pub use rcu_core::call_rcu;

/// Example:
///
/// ```
/// rcu_kit::call_rcu(|| ());
/// rcu_kit::rcu_barrier(); // the callback above has run
/// ```
pub use rcu_core::rcu_barrier;

/// Example (note the state now, free later once it has passed):
///
/// ```
/// let state = rcu_kit::get_state_synchronize_rcu();
/// rcu_kit::cond_synchronize_rcu(state); // waits only if no grace period passed since
/// assert!(rcu_kit::poll_state_synchronize_rcu(state));
/// ```
pub use rcu_core::get_state_synchronize_rcu;

/// Example:
///
/// ```
/// let state = rcu_kit::start_poll_synchronize_rcu(); // and make one start
/// while !rcu_kit::poll_state_synchronize_rcu(state) {
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// }
/// ```
pub use rcu_core::start_poll_synchronize_rcu;

/// Example:
///
/// ```
/// let state = rcu_kit::get_state_synchronize_rcu();
/// rcu_kit::synchronize_rcu();
/// assert!(rcu_kit::poll_state_synchronize_rcu(state));
/// ```
pub use rcu_core::poll_state_synchronize_rcu;

/// Example:
///
/// ```
/// let state = rcu_kit::start_poll_synchronize_rcu();
/// rcu_kit::cond_synchronize_rcu(state);
/// assert!(rcu_kit::poll_state_synchronize_rcu(state));
/// ```
pub use rcu_core::cond_synchronize_rcu;

/// Example:
///
/// ```
/// let s: rcu_kit::GpState = rcu_kit::get_state_synchronize_rcu();
/// rcu_kit::synchronize_rcu();
/// assert!(rcu_kit::poll_state_synchronize_rcu(s));
/// ```
pub use rcu_core::GpState;

/// Example:
///
/// ```
/// let guard: rcu_kit::RcuReadGuard = rcu_kit::rcu_read_lock();
/// let cell = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
/// assert_eq!(cell.read(&guard), Some(&1));
/// ```
pub use rcu_core::RcuReadGuard;

/// Example:
///
/// ```
/// let g = rcu_kit::rcu_read_lock();
/// assert!(rcu_kit::rcu_read_lock_held());
/// drop(g);
/// ```
pub use rcu_core::rcu_read_lock;

/// Example:
///
/// ```
/// let cell = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
/// let g = rcu_kit::rcu_read_lock();
/// let e: rcu_kit::CompareExchangeError<'_, u8> =
///     cell.compare_exchange(None, Some(Box::new(2)), &g).unwrap_err();
/// assert_eq!((e.current, e.new.as_deref()), (Some(&1), Some(&2)));
/// ```
pub use rcu_core::CompareExchangeError;

/// Example (a strategy is passed to the `*_with` writers):
///
/// ```
/// use rcu_kit::{RcuCell, Retire, RetireByCallRcu};
/// fn replace_using<R: Retire<u8>>(c: &RcuCell<u8>, how: R) {
///     c.replace_with(Some(Box::new(2)), how);
/// }
/// replace_using(&RcuCell::new(Some(Box::new(1))), RetireByCallRcu);
/// rcu_kit::rcu_barrier();
/// ```
pub use rcu_core::Retire;

/// Example:
///
/// ```
/// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
/// c.replace_with(None, rcu_kit::RetireByCallRcu);
/// rcu_kit::rcu_barrier();
/// ```
pub use rcu_core::RetireByCallRcu;

/// Example:
///
/// ```
/// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
/// c.replace_with(None, rcu_kit::RetireBySync); // waits, then drops 1
/// ```
pub use rcu_core::RetireBySync;

/// Example:
///
/// ```
/// let p = rcu_kit::kmalloc(100).expect("memory");
/// // SAFETY (doc): from kmalloc, freed once, not used after.
/// unsafe { rcu_kit::kfree(p) };
/// ```
pub use slab_backend::kmalloc;

/// Example:
///
/// ```
/// let p = rcu_kit::kmalloc(8).expect("memory");
/// // SAFETY (doc): from kmalloc, freed once, not used after.
/// unsafe { rcu_kit::kfree(p) };
/// ```
pub use slab_backend::kfree;

/// Example:
///
/// ```
/// if let Some(p) = rcu_kit::kmalloc_nolock(64) {
///     // SAFETY (doc): from kmalloc_nolock, freed once, not used after.
///     unsafe { rcu_kit::kfree_nolock(p) };
/// }
/// ```
pub use slab_backend::kmalloc_nolock;

/// Example:
///
/// ```
/// if let Some(p) = rcu_kit::kmalloc_nolock(16) {
///     // SAFETY (doc): from kmalloc_nolock, freed once, not used after.
///     unsafe { rcu_kit::kfree_nolock(p) };
/// }
/// ```
pub use slab_backend::kfree_nolock;

/// Example:
///
/// ```
/// rcu_kit::set_memory_limit(Some(1 << 30)); // at most 1 GiB of pages
/// rcu_kit::set_memory_limit(None); // no limit
/// ```
pub use slab_backend::set_memory_limit;

/// Example:
///
/// ```
/// let _c = rcu_kit::KmemCache::<u64>::builder("doc-slabinfo").build().unwrap();
/// assert!(rcu_kit::slabinfo().contains("doc-slabinfo"));
/// ```
pub use slab_backend::slabinfo;

/// Example:
///
/// ```
/// let c = rcu_kit::KmemCache::<[u8; 32]>::builder("doc-stats").build().unwrap();
/// let s: rcu_kit::CacheStats = c.stats();
/// assert_eq!((s.object_size, s.active_objects), (32, 0));
/// ```
pub use slab_backend::CacheStats;

/// Example:
///
/// ```
/// let c = rcu_kit::KmemCache::<u32>::builder("doc-cache").ctor(|| 0).build().unwrap();
/// let p = c.alloc().unwrap();
/// // SAFETY (doc): from this cache, a valid u32 (ctor), freed once.
/// unsafe { c.free(p) };
/// ```
pub use slab_backend::KmemCache;

/// Example:
///
/// ```
/// let b: rcu_kit::KmemCacheBuilder<u64> = rcu_kit::KmemCache::builder("doc-builder");
/// let c = b.hwcache_align(true).ctor(|| 7).build().unwrap();
/// assert!(c.stats().object_stride >= 64);
/// ```
pub use slab_backend::KmemCacheBuilder;

/// Example:
///
/// ```
/// let a = rcu_kit::KmemCache::<u8>::builder("doc-dup").build().unwrap();
/// let e: rcu_kit::SlabError = rcu_kit::KmemCache::<u8>::builder("doc-dup").build().unwrap_err();
/// assert!(matches!(e, rcu_kit::SlabError::DuplicateName(_)));
/// drop(a);
/// ```
pub use slab_backend::SlabError;

/// Example:
///
/// ```
/// rcu_kit::kfree_rcu(Box::new([0u64; 8])); // freed after a grace period
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub use kfree_batch::kfree_rcu;

/// Example:
///
/// ```
/// use std::sync::atomic::{AtomicPtr, Ordering};
/// let slot = AtomicPtr::new(Box::into_raw(Box::new(1u64)));
/// let old = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
/// // SAFETY (doc): from Box::into_raw, unpublished, retired once.
/// unsafe { rcu_kit::kfree_rcu_raw(old) };
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub use kfree_batch::kfree_rcu_raw;

/// Example:
///
/// ```
/// let v = Box::into_raw(Box::new(vec![0u8; 4096]));
/// // SAFETY (doc): from Box::into_raw, never published, retired once.
/// unsafe { rcu_kit::kfree_rcu_raw_charged(v, 4096) };
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub use kfree_batch::kfree_rcu_raw_charged;

/// Example:
///
/// ```
/// use rcu_kit::{impl_has_rcu_head, RcuHead};
/// struct Node { key: u64, head: RcuHead }
/// impl_has_rcu_head!(Node, head);
/// rcu_kit::kfree_rcu_head(Box::new(Node { key: 1, head: RcuHead::new() }));
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub use kfree_batch::kfree_rcu_head;

/// Example:
///
/// ```
/// use rcu_kit::{impl_has_rcu_head, RcuHead};
/// struct Node { key: u64, head: RcuHead }
/// impl_has_rcu_head!(Node, head);
/// let p = Box::into_raw(Box::new(Node { key: 1, head: RcuHead::new() }));
/// // SAFETY (doc): from Box::into_raw, never published, retired once.
/// unsafe { rcu_kit::kfree_rcu_head_raw(p) };
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub use kfree_batch::kfree_rcu_head_raw;

/// Example:
///
/// ```
/// use std::sync::Arc;
/// let cache = Arc::new(rcu_kit::KmemCache::<u64>::builder("doc-kfree-cache").ctor(|| 0).build().unwrap());
/// let p = cache.alloc().unwrap();
/// // SAFETY (doc): from this cache, never published, retired once.
/// unsafe { rcu_kit::kfree_rcu_cache(&cache, p) };
/// rcu_kit::kvfree_rcu_barrier(); // back in the cache
/// assert_eq!(cache.stats().active_objects, 0);
/// ```
pub use kfree_batch::kfree_rcu_cache;

/// Example:
///
/// ```
/// let p = rcu_kit::kmalloc(48).unwrap();
/// // SAFETY (doc): from kmalloc, never published, retired once.
/// unsafe { rcu_kit::kfree_rcu_kmalloc(p) };
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub use kfree_batch::kfree_rcu_kmalloc;

/// Example:
///
/// ```
/// rcu_kit::kfree_rcu(Box::new(1u8));
/// rcu_kit::kvfree_rcu_barrier(); // everything retired before is freed
/// assert!(rcu_kit::kfree_stats().freed >= 1);
/// ```
pub use kfree_batch::kvfree_rcu_barrier;

/// Example (a type with an embedded head):
///
/// ```
/// use rcu_kit::{impl_has_rcu_head, HasRcuHead, RcuHead};
/// struct Node { head: RcuHead, v: u32 }
/// impl_has_rcu_head!(Node, head);
/// assert_eq!(<Node as HasRcuHead>::RCU_HEAD_OFFSET % core::mem::align_of::<RcuHead>(), 0);
/// ```
pub use kfree_batch::HasRcuHead;

/// Example:
///
/// ```
/// use rcu_kit::{impl_has_rcu_head, RcuHead};
/// struct Node { v: u32, head: RcuHead }
/// impl_has_rcu_head!(Node, head);
/// rcu_kit::kfree_rcu_head(Box::new(Node { v: 1, head: RcuHead::new() }));
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub use kfree_batch::RcuHead;

/// Example:
///
/// ```
/// use rcu_kit::{impl_has_rcu_head, RcuHead};
/// struct Node { head: RcuHead }
/// impl_has_rcu_head!(Node, head);
/// ```
pub use kfree_batch::impl_has_rcu_head;

/// Example (the batcher's configuration, set before its first use):
///
/// ```
/// let c: rcu_kit::Config = rcu_kit::kfree_batch::config();
/// assert!(c.pending_cap > 0);
/// // Once the batcher runs, only the same configuration is accepted again.
/// rcu_kit::kfree_rcu(Box::new(0u8));
/// assert!(rcu_kit::kfree_configure(rcu_kit::kfree_batch::config()).is_ok());
/// ```
pub use kfree_batch::Config;

/// Example:
///
/// ```
/// let mut c = rcu_kit::kfree_batch::config();
/// c.pending_cap = 1; // far below two pages
/// let e: rcu_kit::ConfigError = rcu_kit::kfree_configure(c).unwrap_err();
/// assert!(e.to_string().len() > 0);
/// ```
pub use kfree_batch::ConfigError;

/// Example:
///
/// ```
/// rcu_kit::kfree_rcu(Box::new(1u8));
/// rcu_kit::kvfree_rcu_barrier();
/// let s: rcu_kit::KfreeStats = rcu_kit::kfree_stats();
/// assert!(s.freed >= 1 && s.queued >= s.freed);
/// ```
pub use kfree_batch::KfreeStats;

/// `kfree_batch::configure` under a name that says which part of the kit it configures.
///
/// Example:
///
/// ```
/// // The configuration in force is always accepted again.
/// rcu_kit::kfree_configure(rcu_kit::kfree_batch::config()).unwrap();
/// ```
pub use kfree_batch::configure as kfree_configure;

/// `kfree_batch::stats` under a name that does not clash with the other crates' statistics.
///
/// Example:
///
/// ```
/// rcu_kit::kfree_rcu(Box::new(1u8));
/// rcu_kit::kvfree_rcu_barrier();
/// assert!(rcu_kit::kfree_stats().freed >= 1);
/// ```
pub use kfree_batch::stats as kfree_stats;

/// `rcu_core::stats` under a name that does not clash with the other crates' statistics.
///
/// Example:
///
/// ```
/// let before = rcu_kit::gp_stats().grace_periods;
/// rcu_kit::synchronize_rcu();
/// assert!(rcu_kit::gp_stats().grace_periods > before);
/// ```
pub use rcu_core::stats as gp_stats;
