//! A `KmemCache` with a constructor whose `T::drop` panics: returning objects to the cache may
//! discard an empty slab, which drops the `T`s in it, so the cache's `free` can panic in the
//! middle of a batch of `kfree_rcu_cache` objects. The panic is contained and reported; every
//! other object of the batch still goes back to the cache, and every strong count the batcher
//! took on the cache is given back (else the cache itself would leak).
//!
//! Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kfree_batch::{kfree_rcu_cache, kvfree_rcu_barrier};
use slab_backend::KmemCache;

static ARMED: AtomicBool = AtomicBool::new(false);
static PANICS: AtomicU64 = AtomicU64::new(0);

struct Bomb {
    _pad: [u64; 8],
}
impl Drop for Bomb {
    fn drop(&mut self) {
        if ARMED.load(Ordering::Relaxed) {
            PANICS.fetch_add(1, Ordering::Relaxed);
            panic!("Bomb dropped");
        }
    }
}

const N: usize = 20_000;

#[test]
fn a_panicking_slab_discard_does_not_leak_the_rest_of_its_batch() {
    test_support::isolated(
        "a_panicking_slab_discard_does_not_leak_the_rest_of_its_batch",
        "cache-bomb",
        Duration::from_secs(60),
        || {
            let cache = Arc::new(
                KmemCache::<Bomb>::builder("kfree-cache-bomb")
                    .ctor(|| Bomb { _pad: [0; 8] })
                    .build()
                    .unwrap(),
            );
            let objs: Vec<NonNull<Bomb>> = (0..N).map(|_| cache.alloc().unwrap()).collect();
            ARMED.store(true, Ordering::Relaxed);
            for p in objs {
                // SAFETY: each object came from `cache`, is retired once and never used again.
                unsafe { kfree_rcu_cache(&cache, p) };
            }
            kvfree_rcu_barrier();
            ARMED.store(false, Ordering::Relaxed);
            let panics = PANICS.load(Ordering::Relaxed);
            let s = cache.stats();
            eprintln!("panics {panics}, cache {s:?}");
            assert!(panics > 0, "no slab was discarded: the test did not test");
            assert_eq!(
                s.active_objects, 0,
                "objects in use: the rest of a batch after a panicking free leaked"
            );
            assert_eq!(
                Arc::strong_count(&cache),
                1,
                "cache strong counts: the batcher's counts after a panicking free leaked"
            );
            let k = kfree_batch::stats();
            assert_eq!(
                k.freed, k.queued,
                "every retired object counted freed: {k:?}"
            );
        },
    );
}

/// The batcher holds the last strong count: the cache is destroyed by the free of its last
/// batch, and its destroy drops `T`s that panic. Nothing hangs or aborts, the batcher goes on
/// with later retires, and the panic is reported for what it is (no batch was leaked).
fn case_cache_dropped_by_the_batcher() {
    std::panic::set_hook(Box::new(|_| {}));
    let cache = Arc::new(
        KmemCache::<Bomb>::builder("kfree-cache-bomb-last")
            .ctor(|| Bomb { _pad: [0; 8] })
            .build()
            .unwrap(),
    );
    let objs: Vec<NonNull<Bomb>> = (0..N).map(|_| cache.alloc().unwrap()).collect();
    ARMED.store(true, Ordering::Relaxed);
    for p in objs {
        // SAFETY: each object came from `cache`, is retired once and never used again.
        unsafe { kfree_rcu_cache(&cache, p) };
    }
    drop(cache);
    kvfree_rcu_barrier();
    ARMED.store(false, Ordering::Relaxed);
    for i in 0..1_000u64 {
        kfree_batch::kfree_rcu(Box::new([i; 4]));
    }
    kvfree_rcu_barrier();
    let k = kfree_batch::stats();
    assert_eq!(
        k.freed, k.queued,
        "every retired object counted freed: {k:?}"
    );
    assert!(
        !slab_backend::all_cache_stats()
            .iter()
            .any(|s| s.name == "kfree-cache-bomb-last"),
        "the cache dropped by the batcher was not destroyed"
    );
}

#[test]
fn a_cache_destroyed_by_the_batcher_with_panicking_drops_does_not_wedge_it() {
    const NAME: &str = "a_cache_destroyed_by_the_batcher_with_panicking_drops_does_not_wedge_it";
    if test_support::child_case().is_some() {
        return case_cache_dropped_by_the_batcher();
    }
    let out = test_support::run_child(NAME, "cache-bomb-last", &[], Duration::from_secs(60));
    let err = test_support::stderr(&out);
    assert!(out.status.success(), "child failed:\n{err}");
    assert!(
        err.contains("destroyed; the panic is contained") && !err.contains("is leaked"),
        "the destroy's panic must be reported as contained, not as a leaked batch:\n{}",
        err.lines()
            .filter(|l| !l.contains("cache object was freed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
