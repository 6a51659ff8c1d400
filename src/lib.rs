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
//!   reference; in return there is no waiting at all and reuse stays cache-hot.
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
//! | allocate objects that readers may see reused    | [`KmemCache`], [`kfree_rcu_cache`], [`slabinfo`]           |
//! | bound or inspect memory                         | [`set_memory_limit`], [`slab_backend::memory_stats`], [`kfree_batch::configure`] |
//! | get a concurrent map                            | [`map::RcuHashMap`]                                        |
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

mod cell;
mod cell_ext;
pub mod list;
pub mod map;
mod primitive;
pub mod ptr;
pub mod typesafe;

#[doc = include_str!("../docs/guide.md")]
pub mod guide {}

pub use kfree_batch;
pub use rcu_core;
pub use slab_backend;

pub use cell::{RcuBox, RcuCell};
pub use cell_ext::{RcuCellExt, RetireByKfree};
pub use list::{ListNode, ListWriter, RcuList};
pub use ptr::{Atomic, CompareExchangeFailure, Retired, Shared};
pub use typesafe::{TsAtomic, TsRef, TypesafeCache};

pub use rcu_core::{
    call_rcu, cond_synchronize_rcu, get_state_synchronize_rcu, poll_state_synchronize_rcu,
    rcu_barrier, rcu_read_lock, rcu_read_lock_held, start_poll_synchronize_rcu, synchronize_rcu,
    synchronize_rcu_expedited, CompareExchangeError, GpState, RcuReadGuard, Retire,
    RetireByCallRcu, RetireBySync,
};

pub use slab_backend::{
    kfree, kfree_nolock, kmalloc, kmalloc_nolock, set_memory_limit, slabinfo, KmemCache, SlabError,
};

pub use kfree_batch::{
    impl_has_rcu_head, kfree_rcu, kfree_rcu_cache, kfree_rcu_head, kfree_rcu_head_raw,
    kfree_rcu_kmalloc, kfree_rcu_raw, kfree_rcu_raw_charged, kvfree_rcu_barrier, ConfigError,
    HasRcuHead, KfreeStats, RcuHead,
};

/// `kfree_batch::stats` under a name that does not clash with the other crates' statistics.
pub use kfree_batch::stats as kfree_stats;
/// `rcu_core::stats` under a name that does not clash with the other crates' statistics.
pub use rcu_core::stats as gp_stats;
