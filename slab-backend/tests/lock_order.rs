//! Cache create/destroy, shrink, shrink_all (the shrinkers), flushes under memory pressure and
//! slabinfo, all at once for a bounded time: the documented lock order
//! (registry → flush → barn | node; no page allocation under any of them) must not deadlock.
//! A watchdog aborts the process if the run stalls.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab_backend::{
    kfree, kmalloc, memory_stats, set_memory_limit, shrink_all, slabinfo, KmemCache,
};

#[derive(Default)]
#[allow(dead_code)] // the payload only gives objects a size
struct Obj {
    v: [u64; 6],
}

#[test]
fn concurrent_create_destroy_shrink_flush() {
    let run = Duration::from_millis(if cfg!(debug_assertions) { 2000 } else { 3000 });
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    {
        let progress = progress.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            let mut stalled = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let now = progress.load(Ordering::Relaxed);
                if now == last {
                    stalled += 1;
                    if stalled >= 30 {
                        eprintln!("lock_order: no progress for 30 s: deadlock");
                        std::process::abort();
                    }
                } else {
                    stalled = 0;
                }
                last = now;
            }
        });
    }
    let deadline = Instant::now() + run;
    let mut hs = Vec::new();
    // Create / use / destroy caches (registry lock, flush lock with waiting, node locks).
    for t in 0..2 {
        let (stop, progress) = (stop.clone(), progress.clone());
        hs.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) && i < 100_000 {
                let typesafe = i % 3 == 0;
                let b = KmemCache::<Obj>::builder(&format!("lo-{t}-{i}")).ctor(Obj::default);
                let c = b.typesafe_by_rcu(typesafe).build().unwrap();
                let ps: Vec<_> = (0..300).filter_map(|_| c.alloc()).collect();
                // SAFETY: live objects of `c`.
                unsafe { c.free_bulk(&ps) };
                if i % 2 == 0 {
                    c.shrink();
                }
                c.destroy().unwrap();
                progress.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // A long-lived cache hammered with alloc/free, flushing sheaves to the barn and the slabs.
    let shared = Arc::new(
        KmemCache::<Obj>::builder("lo-shared")
            .ctor(Obj::default)
            .build()
            .unwrap(),
    );
    for _ in 0..2 {
        let (stop, progress, shared) = (stop.clone(), progress.clone(), shared.clone());
        hs.push(std::thread::spawn(move || {
            let mut i = 0u64;
            let mut held = Vec::new();
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) && i < 10_000_000 {
                if let Some(p) = shared.alloc() {
                    held.push(p);
                }
                if held.len() > 500 {
                    // SAFETY: live objects of `shared`.
                    unsafe { shared.free_bulk(&held) };
                    held.clear();
                }
                if let Some(k) = kmalloc(128) {
                    // SAFETY: live kmalloc object.
                    unsafe { kfree(k) };
                }
                if i % 1024 == 0 {
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            // SAFETY: live objects of `shared`.
            unsafe { shared.free_bulk(&held) };
        }));
    }
    // Shrinkers, explicit shrink, slabinfo, and memory pressure that runs shrinkers from inside
    // page allocations.
    {
        let (stop, progress, shared) = (stop.clone(), progress.clone(), shared.clone());
        hs.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                shrink_all();
                shared.shrink();
                let _ = slabinfo();
                if i % 8 == 0 {
                    let now = memory_stats().bytes_in_use;
                    set_memory_limit(Some(now + (256 << 10)));
                    std::thread::sleep(Duration::from_millis(2));
                    set_memory_limit(None);
                }
                progress.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    set_memory_limit(None);
    assert!(progress.load(Ordering::Relaxed) > 0);
    eprintln!(
        "progress {}, {:?}",
        progress.load(Ordering::Relaxed),
        memory_stats()
    );
}
