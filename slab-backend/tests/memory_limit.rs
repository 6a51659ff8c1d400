//! The page layer under a memory budget and under a real `RLIMIT_AS`: allocations return `None`
//! after the shrinkers ran, nothing aborts, and memory works again once freed. Only this binary
//! changes the process-wide limit, and only one test here does.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use slab_backend::{
    kfree, kmalloc, memory_stats, register_shrinker, set_memory_limit, unregister_shrinker,
    KmemCache, PAGE_SIZE,
};

/// Pages a test shrinker holds and gives back under pressure.
static BALLAST: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static SCANS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn limit_reached_returns_none_and_runs_shrinkers() {
    // Fill the ballast first (no limit yet).
    for _ in 0..8 {
        let p = slab_backend::page::alloc_pages(1).unwrap();
        BALLAST.lock().unwrap().push(p.as_ptr() as usize);
    }
    let id = register_shrinker(
        "test-ballast",
        || BALLAST.lock().unwrap().len(),
        |n| {
            SCANS.fetch_add(1, Ordering::Relaxed);
            let mut b = BALLAST.lock().unwrap();
            let k = n.min(b.len());
            for p in b.drain(..k) {
                // SAFETY: pages we allocated above with one page each.
                unsafe { slab_backend::page::free_pages(NonNull::new(p as *mut u8).unwrap(), 1) };
            }
            k
        },
    );
    let before = memory_stats();
    set_memory_limit(Some(before.bytes_in_use + 512 * 1024));
    let cache = KmemCache::<[u8; 256]>::builder("ml-cache").build().unwrap();
    let mut held = Vec::new();
    let mut failed = false;
    for _ in 0..1_000_000 {
        match cache.alloc() {
            Some(p) => held.push(p),
            None => {
                failed = true;
                break;
            }
        }
    }
    let s = memory_stats();
    assert!(failed, "the limit must make alloc return None");
    assert!(s.bytes_in_use <= s.limit.unwrap());
    assert!(s.alloc_failures > before.alloc_failures);
    assert!(s.budget_refusals > before.budget_refusals);
    assert!(s.shrinker_runs > before.shrinker_runs, "shrinkers ran");
    assert!(SCANS.load(Ordering::Relaxed) > 0, "our shrinker was asked");
    assert!(
        BALLAST.lock().unwrap().is_empty(),
        "and gave its pages back"
    );
    // The ballast's 8 pages went to the cache before it failed.
    assert!(held.len() * 256 >= 8 * PAGE_SIZE);
    // kmalloc fails the same way for a class with no objects at hand.
    let mut k = Vec::new();
    while let Some(p) = kmalloc(4096) {
        k.push(p);
        assert!(k.len() < 100_000);
    }
    assert_eq!(cache.stats().active_objects, held.len());

    // Free everything: allocation works again, even before the limit is lifted.
    // SAFETY: live objects of `cache` / kmalloc.
    unsafe {
        cache.free_bulk(&held);
        for p in k {
            kfree(p);
        }
    }
    cache.shrink();
    let p = cache.alloc().expect("allocation works again after freeing");
    // SAFETY: a live object of `cache`.
    unsafe { cache.free(p) };
    set_memory_limit(None);
    unregister_shrinker(id);
}

/// In a child process (the test binary re-run by `test_support::run_child`, case `rlimit`): set `RLIMIT_AS` a
/// little above the current address-space size and allocate until the OS refuses.
fn rlimit_child() {
    let mut held: Vec<NonNull<[u8; 1024]>> = Vec::with_capacity(1 << 20);
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let vm_pages: usize = statm.split_whitespace().next().unwrap().parse().unwrap();
    let limit = (vm_pages * PAGE_SIZE + (48 << 20)) as libc::rlim_t;
    let cache = KmemCache::<[u8; 1024]>::builder("ml-rlimit")
        .build()
        .unwrap();
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit with a valid struct; lowering our own limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    let mut refused = false;
    for _ in 0..(1 << 20) {
        match cache.alloc() {
            Some(p) => held.push(p),
            None => {
                refused = true;
                break;
            }
        }
    }
    let s = memory_stats();
    assert!(refused, "RLIMIT_AS must make alloc return None");
    assert!(s.os_refusals > 0, "{s:?}");
    assert!(s.shrinker_runs > 0, "{s:?}");
    // SAFETY: live objects of `cache`.
    unsafe { cache.free_bulk(&held) };
    cache.shrink();
    assert!(cache.alloc().is_some(), "memory works again after freeing");
    println!(
        "RLIMIT-CHILD-OK objects={} os_refusals={}",
        held.len(),
        s.os_refusals
    );
}

#[test]
fn rlimit_as_refusal_in_child_process() {
    if test_support::child_case().as_deref() == Some("rlimit") {
        rlimit_child();
        return;
    }
    // Bounded from outside: a child that hangs is killed and reported.
    let out = test_support::run_child(
        "rlimit_as_refusal_in_child_process",
        "rlimit",
        &[],
        std::time::Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("RLIMIT-CHILD-OK"), "stdout:\n{stdout}");
}
