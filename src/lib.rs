//! # rcu-kit
//!
//! The Linux kernel's RCU memory-reclamation machinery in userspace: the grace-period engine
//! ([`rcu_core`]), a slab allocator with `SLAB_TYPESAFE_BY_RCU` semantics ([`slab_backend`]) and
//! the `kfree_rcu()` batcher ([`kfree_batch`]). This facade re-exports all three.

pub use kfree_batch;
pub use rcu_core;
pub use slab_backend;

pub use rcu_core::{
    call_rcu, cond_synchronize_rcu, get_state_synchronize_rcu, poll_state_synchronize_rcu,
    rcu_barrier, rcu_read_lock, rcu_read_lock_held, start_poll_synchronize_rcu, synchronize_rcu,
    synchronize_rcu_expedited, GpState, RcuCell, RcuReadGuard,
};

pub use slab_backend::{
    kfree, kfree_nolock, kmalloc, kmalloc_nolock, set_memory_limit, slabinfo, KmemCache, SlabError,
};

pub use kfree_batch::{
    impl_has_rcu_head, kfree_rcu, kfree_rcu_cache, kfree_rcu_head, kfree_rcu_kmalloc,
    kvfree_rcu_barrier, HasRcuHead, KfreeStats, RcuHead,
};

/// `kfree_batch::stats` under a name that does not clash with the other crates' statistics.
pub use kfree_batch::stats as kfree_stats;
/// `rcu_core::stats` under a name that does not clash with the other crates' statistics.
pub use rcu_core::stats as gp_stats;
