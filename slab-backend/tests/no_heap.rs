//! The slab layer's paths that may run when the heap is exhausted must fail softly or not
//! allocate at all, never abort with "memory allocation of N bytes failed": frees that need a
//! new empty sheaf, a thread's first use of a cache's thread cache, the first `kmalloc`, and a
//! typesafe cache dropped inside a reader (its destroy thread cannot start). Each case runs in a
//! child process: it sets `RLIMIT_AS` just above the current use (so no thread stack can be
//! mapped), takes every block `malloc` still hands out, then runs the path.
#![cfg(not(rcu_loom))]

use std::time::Duration;

use slab_backend::KmemCache;
use test_support::{child_case, exhaust_heap, run_child, set_rlimit_as, stderr, vm_size};

fn limit_address_space() {
    set_rlimit_as(vm_size() + (1 << 20)).expect("setrlimit");
}

fn check(test: &str, case: &str, expect: &str) {
    if cfg!(rcu_sanitize) {
        // AddressSanitizer's own allocator needs address space RLIMIT_AS takes away (it aborts in
        // its InternalMmapVector); the cases run in the plain and no-membarrier test jobs.
        eprintln!("skipped under AddressSanitizer: RLIMIT_AS starves the sanitizer runtime");
        return;
    }
    let out = run_child(test, case, &[], Duration::from_secs(60));
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "child '{case}' failed ({:?}):\n{err}\nstdout:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !err.contains("memory allocation of"),
        "child '{case}' ran out of memory:\n{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{case}: done")),
        "child '{case}' did not finish:\n{err}"
    );
    assert!(
        err.contains(expect),
        "child '{case}' did not report '{expect}':\n{err}"
    );
}

#[derive(Default)]
struct Obj {
    _v: [u64; 8],
}

/// Frees of many objects with no heap: the per-CPU layer needs empty sheaves it cannot allocate.
fn case_free_many() {
    let c = KmemCache::<Obj>::builder("noheap-free").build().unwrap();
    let n = 20_000;
    let mut objs = Vec::with_capacity(n);
    for _ in 0..n {
        objs.push(c.alloc().expect("alloc"));
    }
    limit_address_space();
    let heap = exhaust_heap();
    for p in objs.drain(..) {
        // SAFETY: a live object of `c`, freed once.
        unsafe { c.free(p) };
    }
    heap.release();
    assert_eq!(c.stats().active_objects, 0);
    println!("free_many: done");
}

/// A thread's first allocation from a cache with no heap: no thread cache, still an object.
fn case_first_use_on_thread() {
    let c = KmemCache::<Obj>::builder("noheap-first").build().unwrap();
    let p = c.alloc().expect("alloc");
    // SAFETY: live object of `c`, freed once.
    unsafe { c.free(p) };
    let c = std::sync::Arc::new(c);
    let c2 = c.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<bool>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // Running: std's start-up of the thread (its signal stack, mapped) is done.
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let heap = exhaust_heap();
        let p = c2.alloc();
        let ok = p.is_some();
        if let Some(p) = p {
            // SAFETY: live object of `c2`, freed once.
            unsafe { c2.free(p) };
        }
        heap.release();
        done_tx.send(ok).unwrap();
    });
    // The limit only after the thread runs: starting a thread maps its signal stack, which the
    // limit would refuse (std then aborts: not the path under test).
    ready_rx.recv().unwrap();
    limit_address_space();
    go_tx.send(()).unwrap();
    let ok = done_rx.recv().unwrap();
    t.join().unwrap();
    assert!(ok, "no object: the cache has free objects in its slabs");
    println!("first_use_on_thread: done");
}

/// The first `kmalloc` of the process with no heap: `None`, no abort.
fn case_first_kmalloc() {
    limit_address_space();
    let heap = exhaust_heap();
    let p = slab_backend::kmalloc(64);
    heap.release();
    if let Some(p) = p {
        // SAFETY: from kmalloc, freed once.
        unsafe { slab_backend::kfree(p) };
    }
    let p = slab_backend::kmalloc(64).expect("kmalloc with heap back");
    // SAFETY: from kmalloc, freed once.
    unsafe { slab_backend::kfree(p) };
    eprintln!("first_kmalloc: survived");
    println!("first_kmalloc: done");
}

/// The shrinkers run with no heap, with full sheaves in a cache's barn (they run exactly when
/// memory is short).
fn case_shrink() {
    let c = KmemCache::<Obj>::builder("noheap-shrink").build().unwrap();
    let n = 5_000;
    let mut objs = Vec::with_capacity(n);
    for _ in 0..n {
        objs.push(c.alloc().expect("alloc"));
    }
    for p in objs.drain(..) {
        // SAFETY: a live object of `c`, freed once.
        unsafe { c.free(p) };
    }
    limit_address_space();
    let heap = exhaust_heap();
    slab_backend::shrink_all();
    c.shrink();
    heap.release();
    assert_eq!(c.stats().active_objects, 0);
    println!("shrink: done");
}

fn ctor() -> Obj {
    Obj::default()
}

/// A typesafe cache dropped inside a reader with no heap and no room for a thread: its destroy
/// thread cannot start; the cache is leaked and that is reported.
fn case_drop_in_reader() {
    let c = KmemCache::<Obj>::builder("noheap-drop")
        .typesafe_by_rcu(true)
        .ctor(ctor)
        .build()
        .unwrap();
    let p = c.alloc().unwrap();
    // SAFETY: live object of `c`, freed once.
    unsafe { c.free(p) };
    limit_address_space();
    {
        let _g = rcu_core::rcu_read_lock();
        let heap = exhaust_heap();
        drop(c);
        heap.release();
    }
    println!("drop_in_reader: done");
}

#[test]
fn free_many_without_heap() {
    match child_case().as_deref() {
        Some("free_many") => case_free_many(),
        Some(_) => {}
        None => check("free_many_without_heap", "free_many", ""),
    }
}

#[test]
fn first_use_on_thread_without_heap() {
    match child_case().as_deref() {
        Some("first_use_on_thread") => case_first_use_on_thread(),
        Some(_) => {}
        None => check(
            "first_use_on_thread_without_heap",
            "first_use_on_thread",
            "",
        ),
    }
}

#[test]
fn first_kmalloc_without_heap() {
    match child_case().as_deref() {
        Some("first_kmalloc") => case_first_kmalloc(),
        Some(_) => {}
        None => check(
            "first_kmalloc_without_heap",
            "first_kmalloc",
            "first_kmalloc: survived",
        ),
    }
}

#[test]
fn drop_in_reader_without_heap() {
    match child_case().as_deref() {
        Some("drop_in_reader") => case_drop_in_reader(),
        Some(_) => {}
        None => check(
            "drop_in_reader_without_heap",
            "drop_in_reader",
            "slab cache noheap-drop: dropped inside an RCU read-side critical section",
        ),
    }
}

#[test]
fn shrink_without_heap() {
    match child_case().as_deref() {
        Some("shrink") => case_shrink(),
        Some(_) => {}
        None => check("shrink_without_heap", "shrink", ""),
    }
}
