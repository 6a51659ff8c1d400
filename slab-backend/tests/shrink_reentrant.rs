//! An object's destructor run by the slab shrinker (a ctor cache drops its constructed `T`s when
//! it releases a slab's pages) that drops a slab cache it owns. `shrink_all` is public and safe,
//! and the page layer runs the same pass on its own when memory runs short; the destructor
//! must not deadlock. Runs in a child process with a deadline (a hang is the failure).
#![cfg(not(rcu_loom))]

use std::time::Duration;

use slab_backend::{all_cache_stats, shrink_all, KmemCache};
use test_support::{child_case, run_child, stderr};

/// A constructed object that may own another cache (dropped with it).
struct Holder(Option<KmemCache<u64>>);

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

#[test]
fn shrink_reentrant_child() {
    match child_case().as_deref() {
        Some("drop_owned_cache_in_shrink") => case_drop_owned_cache_in_shrink(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

/// A `T` released by the shrinker drops a cache it owns.
#[test]
fn object_released_by_the_shrinker_drops_a_cache() {
    let out = run_child(
        "shrink_reentrant_child",
        "drop_owned_cache_in_shrink",
        &[],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("case done"),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}
