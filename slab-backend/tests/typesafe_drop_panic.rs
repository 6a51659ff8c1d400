//! A `SLAB_TYPESAFE_BY_RCU` cache whose `T::drop` panics while a slab is discarded after its
//! grace period: the callback's panic is contained (rcu-core), and the slab's pending-discard
//! place must come back, or the cache's cap of slabs waiting for a grace period shrinks for
//! good. Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use slab_backend::KmemCache;
use test_support::{child_case, run_child, stderr};

static PANIC_ON_DROP: AtomicBool = AtomicBool::new(false);

struct Touchy {
    _words: [u64; 64],
}
impl Drop for Touchy {
    fn drop(&mut self) {
        if PANIC_ON_DROP.load(Ordering::Relaxed) {
            panic!("Touchy dropped");
        }
    }
}

fn case_drop_panics() {
    let cache = KmemCache::<Touchy>::builder("ts-drop-panic")
        .typesafe_by_rcu(true)
        .ctor(|| Touchy { _words: [3; 64] })
        .build()
        .unwrap();
    let n = cache.stats().objects_per_slab * 4;
    let held: Vec<NonNull<Touchy>> = (0..n)
        .map(|_| cache.alloc().expect("no memory limit is set"))
        .collect();
    PANIC_ON_DROP.store(true, Ordering::Relaxed);
    for p in held {
        // SAFETY: allocated above from `cache`, freed once; nobody else holds it.
        unsafe { cache.free(p) };
    }
    // The caches give their objects back to the slabs, which become empty and wait for a grace
    // period before their objects are dropped (panicking) and their pages unmapped.
    cache.shrink();
    let queued = cache.stats().rcu_pending_slabs;
    println!("pending discards after shrink: {queued}");
    assert!(queued > 0, "no slab was queued for discard");
    rcu_core::rcu_barrier();
    let left = cache.stats().rcu_pending_slabs;
    println!("pending discards after rcu_barrier: {left}");
    PANIC_ON_DROP.store(false, Ordering::Relaxed);
    assert_eq!(
        left, 0,
        "pending-discard places not given back after a panicking drop ({left} of {queued} lost)"
    );
    cache.destroy().expect("nothing leaked");
}

#[test]
fn child() {
    match child_case().as_deref() {
        Some("drop_panics") => case_drop_panics(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn a_panicking_drop_in_a_discard_gives_the_place_back() {
    let out = run_child("child", "drop_panics", &[], Duration::from_secs(60));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case drop_panics failed:\n{all}");
}
