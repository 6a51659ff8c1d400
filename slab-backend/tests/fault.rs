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

/// A typesafe cache with every page, heap and `call_rcu` allocation refused: frees inside a
/// reader keep the objects readable, allocation reuses freed objects, and shrink and destroy
/// still release every slab (their `call_rcu` falls back to waiting outside readers).
fn case_typesafe_everything_refused() {
    let c = KmemCache::<[u64; 64]>::builder("ts_refused")
        .typesafe_by_rcu(true)
        .ctor(|| [7; 64])
        .build()
        .unwrap();
    let objs: Vec<_> = (0..3_000).map(|_| c.alloc().unwrap()).collect();
    for p in [Point::Pages, Point::Heap, Point::CallRcu] {
        fault::arm(p, FaultAttr::always(-1));
    }
    {
        let _g = rcu_core::rcu_read_lock();
        for &o in &objs {
            // SAFETY: allocated above, freed once.
            unsafe { c.free(o) };
            // SAFETY: typesafe: still a `[u64; 64]` inside the reader.
            let v = unsafe { core::ptr::read_volatile(o.as_ptr()) };
            assert_eq!(v[63], 7);
        }
        let mut again = Vec::new();
        while again.len() < 10_000 {
            match c.alloc() {
                Some(o) => again.push(o),
                None => break,
            }
        }
        // Most of the 3000 come back; the objects left in another CPU's sheaf (the thread
        // migrated between its frees and these allocations) are not reachable from here.
        assert!(
            again.len() >= 2_500,
            "freed objects not reused: {}",
            again.len()
        );
        assert!(
            again.len() < 10_000,
            "refused pages still handed out objects"
        );
        for o in again {
            // SAFETY: allocated just above, freed once.
            unsafe { c.free(o) };
        }
    }
    c.shrink();
    rcu_core::rcu_barrier();
    c.destroy().expect("destroy");
    fault::disarm_all();
    let m = memory_stats();
    println!("typesafe: {m:?}");
    assert_eq!(m.bytes_in_use, 0, "slabs left: {m:?}");
}

/// `shrink` of a typesafe cache never waits for readers (its docs), also when `call_rcu` has no
/// memory for the release callback: here a reader waits, inside its critical section, for a
/// lock the shrinking thread holds, so a wait for a grace period would never end.
fn case_typesafe_shrink_with_lock_held() {
    use std::sync::{mpsc, Arc, Mutex};
    let c = KmemCache::<[u64; 64]>::builder("ts_shrink_lock")
        .typesafe_by_rcu(true)
        .ctor(|| [0; 64])
        .build()
        .unwrap();
    let objs: Vec<_> = (0..3_000).map(|_| c.alloc().unwrap()).collect();
    for o in objs {
        // SAFETY: allocated above, freed once.
        unsafe { c.free(o) };
    }
    let m = Arc::new(Mutex::new(()));
    let held = m.lock().unwrap();
    let (started, go) = mpsc::channel();
    let m2 = Arc::clone(&m);
    std::thread::spawn(move || {
        let _g = rcu_core::rcu_read_lock();
        started.send(()).unwrap();
        drop(m2.lock()); // waits for the shrinking thread's lock inside the reader
    });
    go.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    fault::arm(Point::CallRcu, FaultAttr::always(-1));
    let (done, shrunk) = mpsc::channel();
    std::thread::spawn(move || {
        let n = c.shrink();
        done.send(n).unwrap();
        std::mem::forget(c);
    });
    let n = shrunk
        .recv_timeout(Duration::from_secs(5))
        .expect("shrink of a typesafe cache waited for a grace period (no memory for call_rcu)");
    drop(held);
    fault::disarm_all();
    println!("typesafe shrink with a lock held: {n} slabs");
}

#[test]
fn fault_cases() {
    match child_case().as_deref() {
        Some("pages") => return case_pages_filtered(),
        Some("heap") => return case_heap(),
        Some("typesafe") => return case_typesafe_everything_refused(),
        Some("typesafe_shrink_lock") => return case_typesafe_shrink_with_lock_held(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    for case in ["pages", "heap", "typesafe", "typesafe_shrink_lock"] {
        let o = run_child("fault_cases", case, &[], Duration::from_secs(60));
        assert!(o.status.success(), "case {case}: {}", stderr(&o));
        print!("{}", String::from_utf8_lossy(&o.stdout));
    }
}
