//! An object's destructor run by a slab release (a ctor cache drops its constructed `T`s when it
//! releases a slab's pages) that drops a slab cache it owns, creates one, reads the cache list
//! and shrinks a cache. `shrink_all` is public and safe, and the page layer runs the same pass on
//! its own when memory runs short (it holds the registry lock while it shrinks every cache);
//! `KmemCache::shrink` returns cached objects to their slabs under the flush lock. The destructor
//! must not deadlock: it runs after those locks are released. Runs in child processes with a
//! deadline (a hang is the failure).
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slab_backend::{all_cache_stats, shrink_all, KmemCache};
use test_support::{child_case, run_child, stderr};

/// A constructed object that may own another cache (dropped with it). Its destructor also
/// reads `all_cache_stats`, creates and drops a cache and shrinks the owned one, which take the
/// registry and flush locks.
struct Holder(Option<KmemCache<u64>>);

impl Drop for Holder {
    fn drop(&mut self) {
        let Some(inner) = self.0.take() else { return };
        let n = all_cache_stats().len();
        drop(KmemCache::<u64>::builder("shr-tmp").build().unwrap());
        inner.shrink();
        drop(inner);
        eprintln!("holder dropped ({n} caches)");
    }
}

fn case_drop_owned_cache_in_shrink() {
    let outer = KmemCache::<Holder>::builder("shr-outer")
        .ctor(|| Holder(None))
        .build()
        .unwrap();
    let inner = KmemCache::<u64>::builder("shr-inner").build().unwrap();
    let p = outer.alloc().unwrap();
    // SAFETY: `p` is a live object of `outer` holding a valid `Holder` (ctor).
    unsafe { (*p.as_ptr()).0 = Some(inner) };
    // SAFETY: from `outer.alloc`, still a valid `Holder`, not used afterwards.
    unsafe { outer.free(p) };
    eprintln!("shrinking");
    // The slab of `p` is empty: the pass releases it and drops the `Holder`, and with it
    // `shr-inner`.
    shrink_all();
    eprintln!("shrink done");
    assert!(
        !all_cache_stats().iter().any(|s| s.name == "shr-inner"),
        "the owned cache was not destroyed"
    );
    drop(outer);
    println!("case done");
}

/// A large constructed object sharing a cache with others; every drop also takes the registry
/// and flush locks (lists caches, creates one, shrinks the shared one).
struct Big {
    shared: Option<Arc<KmemCache<u64>>>,
    _pad: [u8; 1024],
}

impl Drop for Big {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let _ = all_cache_stats();
        drop(KmemCache::<u64>::builder("shr-tmp").build().unwrap());
        shared.shrink();
        BIG_DROPS.fetch_add(1, Ordering::Relaxed);
    }
}

static BIG_DROPS: AtomicUsize = AtomicUsize::new(0);

fn case_drop_shared_cache_in_cache_shrink() {
    let outer = KmemCache::<Big>::builder("shr-big")
        .ctor(|| Big {
            shared: None,
            _pad: [0; 1024],
        })
        .build()
        .unwrap();
    let shared = Arc::new(KmemCache::<u64>::builder("shr-shared").build().unwrap());
    // More objects than the thread and CPU caches hold: when `shrink` returns the cached ones
    // to their slabs under the flush lock, slabs empty beyond the two kept per node and are
    // released right there.
    let n = 2000;
    let ps: Vec<_> = (0..n).map(|_| outer.alloc().unwrap()).collect();
    for &p in &ps {
        // SAFETY: a live object of `outer`, a valid `Big` (ctor).
        unsafe { (*p.as_ptr()).shared = Some(shared.clone()) };
    }
    drop(shared);
    // SAFETY: live objects of `outer`, valid `Big`s, not used afterwards.
    unsafe { outer.free_bulk(&ps) };
    let before = BIG_DROPS.load(Ordering::Relaxed);
    eprintln!("shrinking ({before} of {n} dropped by the frees)");
    outer.shrink();
    let after = BIG_DROPS.load(Ordering::Relaxed);
    eprintln!("shrink done ({} dropped by it)", after - before);
    assert!(after > before, "the shrink released no slab");
    drop(outer);
    assert!(
        !all_cache_stats().iter().any(|s| s.name == "shr-shared"),
        "the shared cache was not destroyed"
    );
    println!("case done");
}

#[test]
fn shrink_reentrant_child() {
    match child_case().as_deref() {
        Some("drop_owned_cache_in_shrink") => case_drop_owned_cache_in_shrink(),
        Some("drop_shared_cache_in_cache_shrink") => case_drop_shared_cache_in_cache_shrink(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn check(case: &str) {
    let out = run_child("shrink_reentrant_child", case, &[], Duration::from_secs(20));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("case done"),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}

/// A `T` released by the shrinker drops a cache it owns.
#[test]
fn object_released_by_the_shrinker_drops_a_cache() {
    check("drop_owned_cache_in_shrink");
}

/// `T`s released by `KmemCache::shrink` (under the flush lock) shrink, create and finally drop
/// caches.
#[test]
fn objects_released_by_a_cache_shrink_use_the_cache_list() {
    check("drop_shared_cache_in_cache_shrink");
}
