//! The slab layer never waits for a grace period while it holds a lock that readers may need.
//!
//! `call_rcu` waits for a grace period inline when it cannot queue a callback (its list is
//! full or memory is short). If the slab shrinker waited so for the RCU release of a typesafe
//! slab while holding the cache registry lock, a reader that needs the registry (here
//! `slabinfo`; equally a cache creation or a page allocation that runs the shrinker) would block
//! the grace period the shrinker waits for: a deadlock. The case fills this CPU's callback list
//! while a reader blocks grace periods, so that the shrinker cannot queue the release: it keeps
//! the empty slabs instead of waiting (a later shrink releases them). It runs in a child process
//! with a deadline.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use slab_backend::{shrink_all, slabinfo, KmemCache};
use test_support::{child_case, run_child, stderr};

#[allow(dead_code)] // the payload only gives objects a size
struct Obj {
    v: [u64; 8],
}

/// Pins the calling thread to CPU 0 (so that `call_rcu` always starts at list 0).
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity(0 = this
    // thread) only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "sched_setaffinity");
    }
}

fn case_shrinker_fallback() {
    pin_to_cpu0();
    let c = KmemCache::<Obj>::builder("gp-wait-typesafe")
        .typesafe_by_rcu(true)
        .ctor(|| Obj { v: [0; 8] })
        .build()
        .unwrap();
    let ps: Vec<_> = (0..2000).filter_map(|_| c.alloc()).collect();
    assert_eq!(ps.len(), 2000);
    // SAFETY: live objects of `c`, freed once; many stay cached until the shrinker runs.
    unsafe { c.free_bulk(&ps) };
    rcu_core::rcu_barrier();

    // A reader that blocks grace periods until it has read slabinfo (registry lock).
    let (in_tx, in_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let g = rcu_core::rcu_read_lock();
        in_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        // Give the main thread time to be inside the shrinker.
        std::thread::sleep(Duration::from_millis(300));
        let s = slabinfo();
        drop(g);
        assert!(s.contains("gp-wait-typesafe"));
    });
    in_rx.recv().unwrap();

    // Fill list 0 until `call_rcu` falls back to waiting inline (the worker is stuck in the
    // grace period the reader blocks). The filler's last call blocks until the reader leaves.
    let queued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let filler = {
        let (queued, stop) = (queued.clone(), stop.clone());
        std::thread::spawn(move || {
            pin_to_cpu0();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 4 << 20 {
                rcu_core::call_rcu(|| {});
                n += 1;
                queued.store(n, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let mut last = 0;
    let mut stable_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = queued.load(Ordering::Relaxed);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if now > 0 && stable_since.elapsed() > Duration::from_millis(300) {
            break; // the filler is blocked in the fallback: list 0 is full
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the callback list never filled"
        );
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!("callback list full after {last} call_rcu calls");

    let fallbacks = rcu_core::stats().callbacks_inline_fallback;
    go_tx.send(()).unwrap();
    // The slab shrinker cannot queue the release of the typesafe cache's empty slabs (the list
    // is full): it keeps them rather than wait for the reader's grace period.
    shrink_all();
    reader.join().unwrap();
    filler.join().unwrap();
    assert_eq!(
        rcu_core::stats().callbacks_inline_fallback,
        fallbacks + 1,
        "only the filler waited; the shrinker must not"
    );
    rcu_core::rcu_barrier();
    assert!(
        c.shrink() > 0,
        "the kept empty slabs are released by a later shrink"
    );
    rcu_core::rcu_barrier();
    c.destroy().unwrap();
}

/// Fills list 0 from a helper thread until its `call_rcu` blocks in the inline fallback (a
/// reader blocks grace periods meanwhile); returns the helper, which finishes once the reader
/// is gone.
fn fill_callback_list() -> std::thread::JoinHandle<()> {
    let queued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let filler = {
        let (queued, stop) = (queued.clone(), stop.clone());
        std::thread::spawn(move || {
            pin_to_cpu0();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 4 << 20 {
                rcu_core::call_rcu(|| {});
                n += 1;
                queued.store(n, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let mut last = 0;
    let mut stable_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = queued.load(Ordering::Relaxed);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if now > 0 && stable_since.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the callback list never filled"
        );
    }
    stop.store(true, Ordering::Relaxed);
    filler
}

/// The shrinker runs inside a read-side critical section (as it does when a reader's page
/// allocation reclaims) while `call_rcu` cannot queue: the typesafe cache's empty slabs must be
/// kept rather than queued (the fallback cannot wait inside a reader; it panics).
fn case_shrinker_in_reader() {
    pin_to_cpu0();
    let c = KmemCache::<Obj>::builder("gp-wait-reader")
        .typesafe_by_rcu(true)
        .ctor(|| Obj { v: [0; 8] })
        .build()
        .unwrap();
    let ps: Vec<_> = (0..2000).filter_map(|_| c.alloc()).collect();
    assert_eq!(ps.len(), 2000);
    // SAFETY: live objects of `c`, freed once; many stay cached until the shrinker runs.
    unsafe { c.free_bulk(&ps) };
    rcu_core::rcu_barrier();
    let g = rcu_core::rcu_read_lock();
    let filler = fill_callback_list();
    shrink_all();
    // Frees inside the reader that empty slabs take the same path.
    let ps: Vec<_> = (0..2000).filter_map(|_| c.alloc()).collect();
    // SAFETY: live objects of `c`, freed once.
    unsafe { c.free_bulk(&ps) };
    shrink_all();
    drop(g);
    filler.join().unwrap();
    rcu_core::rcu_barrier();
    assert!(
        c.shrink() > 0,
        "the kept empty slabs are released outside the reader"
    );
    c.destroy().unwrap();
}

#[test]
fn gp_wait_child() {
    match child_case().as_deref() {
        Some("shrinker") => case_shrinker_fallback(),
        Some("reader") => case_shrinker_in_reader(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn shrinker_never_waits_for_a_grace_period_under_the_registry_lock() {
    let out = run_child("gp_wait_child", "shrinker", &[], Duration::from_secs(60));
    assert!(out.status.success(), "child failed:\n{}", stderr(&out));
}

#[test]
fn shrinker_inside_a_reader_keeps_typesafe_slabs_when_call_rcu_cannot_queue() {
    let out = run_child("gp_wait_child", "reader", &[], Duration::from_secs(60));
    assert!(out.status.success(), "child failed:\n{}", stderr(&out));
}
