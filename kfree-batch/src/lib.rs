//! # kfree-batch: the `kvfree_rcu` batcher (coming with issue 4)
//!
//! This crate will hold the kernel's `kvfree_rcu()` in userspace: `kfree_rcu(Box<T>)` and a
//! two-argument form for types with an embedded `RcuHead`, per-CPU page-sized blocks of pointers
//! grouped by free function and stamped with grace-period states, an emergency page cache per CPU,
//! the synchronize-and-free fallback when no page can be had, and a hard bound on memory waiting
//! for a grace period. Until then it is empty.
