//! Hooks that hold internal locks from a test thread, to put the allocator in the states that
//! other threads can leave it in when the process calls `fork()` (`tests/fork.rs`). Not a stable
//! API. The closures must not use the slab allocator (they run with its internals held).

use crate::sheaf::Mode;
use crate::KmemCache;

/// Runs `f` holding the cache registry lock.
pub fn hold_registry<R>(f: impl FnOnce() -> R) -> R {
    let _r = crate::cache::registry();
    f()
}

/// Runs `f` holding `cache`'s node (slab list) lock.
pub fn hold_node_lock<T: Send + 'static, R>(cache: &KmemCache<T>, f: impl FnOnce() -> R) -> R {
    let _g = cache.raw().node().lock(Mode::Normal);
    f()
}

/// Runs `f` inside an owner window of the calling thread's cache of `cache` (its `busy` flag
/// set), as a thread preempted in the middle of an allocation would be.
pub fn hold_tcache_window<T: Send + 'static, R>(cache: &KmemCache<T>, f: impl FnOnce() -> R) -> R {
    crate::cache::tcache::hold_window(cache.raw(), f)
}

/// Runs `f` holding the slot of the calling thread's CPU in the kmalloc class of `size`.
pub fn hold_kmalloc_slot<R>(size: usize, f: impl FnOnce() -> R) -> R {
    let c = &crate::kmalloc::classes().expect("kmalloc classes")
        [crate::kmalloc::class_index(size).expect("kmalloc size")];
    c.cpu.with_slot_held(rcu_core::cpu::current_cpu(), f)
}
