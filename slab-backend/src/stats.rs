//! Cache statistics and the `/proc/slabinfo`-style dump of every live cache.

use core::fmt::Write as _;

use crate::sheaf::{BARN_MAX, SHEAF_CAPACITY};

/// A snapshot of one cache's counters, from [`crate::KmemCache::stats`] or [`all_cache_stats`].
/// Counts read without stopping the cache are approximate while it is in use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Cache name.
    pub name: String,
    /// Requested object size.
    pub object_size: usize,
    /// Bytes between objects (size plus alignment padding).
    pub object_stride: usize,
    /// Objects per slab.
    pub objects_per_slab: usize,
    /// Pages per slab.
    pub pages_per_slab: usize,
    /// Objects handed out and not freed (allocations minus frees).
    pub active_objects: usize,
    /// Object slots in all slabs on the node lists.
    pub total_objects: usize,
    /// Slabs on the node lists.
    pub slabs: usize,
    /// Slabs with some objects free.
    pub partial_slabs: usize,
    /// Slabs with no object free.
    pub full_slabs: usize,
    /// Slabs with every object free (kept for reuse until shrink).
    pub empty_slabs: usize,
    /// Free objects cached in per-thread caches, per-CPU sheaves and the barn.
    pub cpu_cached_objects: usize,
    /// Of `cpu_cached_objects`, those in per-thread caches (of live and exited threads).
    pub thread_cached_objects: usize,
    /// Slabs detached and waiting for a grace period before their pages go back (typesafe; at
    /// most 4 MiB of slabs or 4 slabs, except while the cache is destroyed).
    pub rcu_pending_slabs: usize,
    /// Slabs ever created.
    pub slabs_created: u64,
    /// Slabs whose pages went back to the page layer.
    pub slabs_freed: u64,
    /// Allocations served.
    pub allocs: u64,
    /// Frees taken.
    pub frees: u64,
    /// Allocations that returned nothing.
    pub alloc_failures: u64,
    /// Whether the cache is `SLAB_TYPESAFE_BY_RCU`.
    pub typesafe_by_rcu: bool,
}

/// Statistics of every live cache (user caches and kmalloc classes), in creation order.
pub fn all_cache_stats() -> Vec<CacheStats> {
    let caches: Vec<_> = crate::cache::registry().clone();
    caches.iter().map(|c| c.stats()).collect()
}

/// Renders every live cache like `/proc/slabinfo` (version 2.1 columns; the tunables columns show
/// the sheaf capacity and the barn size; slabdata adds slabs waiting for a grace period).
pub fn slabinfo() -> String {
    let mut s = String::from("slabinfo - version: 2.1 (rcu-kit)\n");
    let _ = writeln!(
        s,
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <sheaf> <barn> <flags> : slabdata <active_slabs> <num_slabs> <rcu_pending>"
    );
    for c in all_cache_stats() {
        let _ = writeln!(
            s,
            "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
            c.name,
            c.active_objects,
            c.total_objects,
            c.object_stride,
            c.objects_per_slab,
            c.pages_per_slab,
            SHEAF_CAPACITY,
            BARN_MAX,
            if c.typesafe_by_rcu { "rcu" } else { "-" },
            c.partial_slabs + c.full_slabs,
            c.slabs,
            c.rcu_pending_slabs,
        );
    }
    s
}
