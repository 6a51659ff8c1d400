//! Injected failures in the slab's page refill (with the per-cache filter) and in its own heap
//! allocations: the cache takes the path of a real failure (reclaim, retry, `None`), other
//! caches are untouched, and the stats count the injected failures. In child processes (fault
//! points and the page layer are process-wide).
#![cfg(not(rcu_loom))]

use std::time::Duration;

use rcu_core::fault::{self, FaultAttr, Point};
use slab_backend::{memory_stats, KmemCache};
use test_support::{child_case, run_child, stderr};

fn case_pages_filtered() {
    let victim = KmemCache::<[u64; 8]>::builder("victim").build().unwrap();
    let other = KmemCache::<[u64; 8]>::builder("other").build().unwrap();
    let before = memory_stats();
    fault::arm(Point::Pages, FaultAttr::always(-1).for_cache("victim"));
    assert!(
        victim.alloc().is_none(),
        "a refused refill still handed out an object"
    );
    let o = other.alloc().expect("another cache is not filtered");
    let after = memory_stats();
    println!("pages: {before:?} -> {after:?}");
    assert!(
        after.injected_failures >= before.injected_failures + 2,
        "first try and retry"
    );
    assert_eq!(after.alloc_failures, before.alloc_failures + 1);
    assert!(
        after.shrinker_runs > before.shrinker_runs,
        "reclaim did not run"
    );
    fault::disarm(Point::Pages);
    let v = victim.alloc().expect("disarmed");
    // SAFETY: both objects came from these caches and are freed once.
    unsafe {
        victim.free(v);
        other.free(o);
    }
}

fn case_heap() {
    let c = KmemCache::<[u64; 8]>::builder("heap").build().unwrap();
    fault::arm(Point::Heap, FaultAttr::always(-1));
    std::thread::spawn(move || {
        let objs: Vec<_> = (0..5_000).map(|_| c.alloc().expect("object")).collect();
        for o in objs {
            // SAFETY: allocated above, freed once.
            unsafe { c.free(o) };
        }
    })
    .join()
    .unwrap();
    println!("heap: injected {}", fault::injected(Point::Heap));
    assert!(fault::injected(Point::Heap) > 0, "no heap failure injected");
}

#[test]
fn fault_cases() {
    match child_case().as_deref() {
        Some("pages") => return case_pages_filtered(),
        Some("heap") => return case_heap(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    for case in ["pages", "heap"] {
        let o = run_child("fault_cases", case, &[], Duration::from_secs(60));
        assert!(o.status.success(), "case {case}: {}", stderr(&o));
        print!("{}", String::from_utf8_lossy(&o.stdout));
    }
}
