//! Shrinkers: callbacks that give memory back under pressure.
//!
//! Other parts of the kit (the slab caches here, the kfree batcher's page cache) register a
//! shrinker with a `count` function (how many objects could be freed now) and a `scan` function
//! (free up to `n`, return how many were freed). The page layer runs every shrinker once when an
//! allocation fails or the limit is near; [`shrink_all`] runs them on demand.
//!
//! # Implementation
//!
//! The registry is a `Locked<Vec<Arc<Shrinker>>>`. A reclaim pass clones the list under the lock
//! and calls the shrinkers *after* dropping it, so a shrinker may register or unregister shrinkers
//! and may allocate (its own page allocations do not recurse into reclaim: the page layer's
//! per-thread `IN_RECLAIM` flag is set for the whole pass).
//!
//! Lock order: the registry lock is a leaf (nothing is called while it is held). Shrinkers
//! themselves take the locks of their subsystem; for slab caches that is
//! registry → flush → per-node lists (see `cache/mod.rs`). Page allocations are never made while
//! one of those locks is held, which is what makes running shrinkers from inside an allocation
//! deadlock-free.
//!
//! The `fork()` prepare handler takes the registry lock last (after the slab locks) and the
//! parent and child handlers release it (the crate's `fork` module).
//!
//! After [`unregister_shrinker`] returns, a pass that already cloned the list may still call the
//! shrinker once; its closures must stay valid for that (they are `'static`).

use std::sync::Arc;

use crate::lock::{Locked, LockedGuard};
use crate::primitive::sync::atomic::{AtomicU64, Ordering};

/// Identifies a registered shrinker, for [`unregister_shrinker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShrinkerId(u64);

type CountFn = dyn Fn() -> usize + Send + Sync;
type ScanFn = dyn Fn(usize) -> usize + Send + Sync;

struct Shrinker {
    id: u64,
    name: &'static str,
    count: Box<CountFn>,
    scan: Box<ScanFn>,
}

static REGISTRY: Locked<Vec<Arc<Shrinker>>> = Locked::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Reclaim passes run (statistics only, Relaxed).
static RUNS: AtomicU64 = AtomicU64::new(0);

fn registry() -> LockedGuard<'static, Vec<Arc<Shrinker>>> {
    REGISTRY.lock()
}

/// The registry lock, for the `fork()` handlers (last in their order: it is a leaf).
pub(crate) fn registry_lock() -> &'static crate::lock::RawLock {
    REGISTRY.raw()
}

/// Registers a shrinker. `count()` returns how many objects it could free now; `scan(n)` frees
/// up to `n` of them and returns how many it freed. Both may be called from any thread, at any
/// page allocation; they must not hold a lock that a page allocation could be made under.
pub fn register_shrinker(
    name: &'static str,
    count: impl Fn() -> usize + Send + Sync + 'static,
    scan: impl Fn(usize) -> usize + Send + Sync + 'static,
) -> ShrinkerId {
    crate::fork::install();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().push(Arc::new(Shrinker {
        id,
        name,
        count: Box::new(count),
        scan: Box::new(scan),
    }));
    ShrinkerId(id)
}

/// Removes a shrinker; returns whether it was registered.
pub fn unregister_shrinker(id: ShrinkerId) -> bool {
    let mut r = registry();
    let before = r.len();
    r.retain(|s| s.id != id.0);
    r.len() != before
}

/// Names of the registered shrinkers (diagnostics).
pub fn shrinker_names() -> Vec<&'static str> {
    registry().iter().map(|s| s.name).collect()
}

/// Runs every shrinker over everything it can free; returns the total it reported freed.
pub fn shrink_all() -> usize {
    run_pass()
}

/// One reclaim pass, called by the page layer on failure or near the limit.
pub(crate) fn reclaim() -> usize {
    run_pass()
}

/// Reclaim passes so far.
pub(crate) fn runs() -> u64 {
    RUNS.load(Ordering::Relaxed)
}

/// Runs each shrinker registered before the pass once, in id order, without holding the
/// registry while it runs (a shrinker may register others) and without allocating (the pass
/// runs when memory is short: no copy of the list, one `Arc` reference at a time).
fn run_pass() -> usize {
    // Relaxed: ids only order shrinkers; the registry's lock publishes them.
    let end = NEXT_ID.load(Ordering::Relaxed);
    RUNS.fetch_add(1, Ordering::Relaxed);
    let _g = crate::page::ReclaimGuard::enter();
    let mut freed = 0;
    let mut last = 0;
    loop {
        let next = registry()
            .iter()
            .filter(|s| s.id > last && s.id < end)
            .min_by_key(|s| s.id)
            .cloned();
        let Some(s) = next else { break };
        last = s.id;
        let n = (s.count)();
        if n > 0 {
            freed += (s.scan)(n);
        }
    }
    freed
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn register_run_unregister() {
        static SCANNED: AtomicUsize = AtomicUsize::new(0);
        let id = register_shrinker(
            "test-shrinker",
            || 7,
            |n| {
                SCANNED.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                n
            },
        );
        assert!(shrinker_names().contains(&"test-shrinker"));
        let before = runs();
        assert!(shrink_all() >= 7);
        assert!(runs() > before);
        assert!(SCANNED.load(std::sync::atomic::Ordering::Relaxed) >= 7);
        assert!(unregister_shrinker(id));
        assert!(!unregister_shrinker(id));
    }

    #[test]
    fn shrinker_may_register_and_allocate() {
        let id = register_shrinker(
            "nested",
            || 1,
            |_| {
                let inner = register_shrinker("inner", || 0, |_| 0);
                unregister_shrinker(inner);
                if let Some(p) = crate::page::alloc_pages(1) {
                    // SAFETY: fresh page of ours.
                    unsafe { crate::page::free_pages(p, 1) };
                }
                1
            },
        );
        shrink_all();
        unregister_shrinker(id);
    }
}
