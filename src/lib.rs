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
