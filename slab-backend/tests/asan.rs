//! Deliberately wrong programs, each in a child process, that AddressSanitizer must report when
//! the slab poisons freed memory (`--cfg rcu_sanitize` with `-Zsanitizer=address`): a use of a
//! freed `KmemCache` object, of a freed `kmalloc` object, of a typesafe object after its slab was
//! released, and of a typesafe object after the grace period of its deferred free in the RCU
//! debug mode. A legal read of a typesafe object after its free (inside a reader) must not be
//! reported. In other builds the test only says it skipped (nothing is poisoned there).
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::time::Duration;

use slab_backend::{kfree, kmalloc, sanitize, KmemCache};
use test_support::{child_case, run_child, stderr};

fn read(p: NonNull<u64>) -> u64 {
    // SAFETY: none in the wrong programs, deliberately (ASan must report the read); volatile,
    // so the access stays.
    unsafe { core::ptr::read_volatile(p.as_ptr()) }
}

fn case_cache_uaf() {
    let c = KmemCache::<[u64; 8]>::builder("asan_plain")
        .build()
        .unwrap();
    let p = c.alloc().unwrap().cast::<u64>();
    // SAFETY: a fresh object.
    unsafe { p.as_ptr().write(1) };
    // SAFETY: freed once.
    unsafe { c.free(p.cast()) };
    println!("read after free: {}", read(p));
}

fn case_kmalloc_uaf() {
    let p = kmalloc(48).unwrap().cast::<u64>();
    // SAFETY: from kmalloc, freed once.
    unsafe { kfree(p.cast()) };
    println!("read after kfree: {}", read(p));
}

fn typesafe_cache(name: &str) -> KmemCache<u64> {
    KmemCache::<u64>::builder(name)
        .typesafe_by_rcu(true)
        .ctor(|| 7)
        .build()
        .unwrap()
}

/// Legal: a typesafe object read after its free, inside a reader. Then the slab is released
/// (after a grace period) and read again: wrong.
fn case_typesafe_after_release(wrong: bool) {
    let c = typesafe_cache("asan_typesafe");
    let p = c.alloc().unwrap();
    {
        let _g = rcu_core::rcu_read_lock();
        // SAFETY: freed once; readers may still look at it (typesafe).
        unsafe { c.free(p) };
        assert_eq!(read(p), 7, "typesafe read after free");
    }
    if !wrong {
        println!("legal read not reported");
        return;
    }
    c.shrink(); // the empty slab is released after a grace period
    rcu_core::rcu_barrier();
    println!("read after slab release: {}", read(p));
}

fn case_typesafe_rcu_debug() {
    sanitize::set_rcu_debug(true);
    let c = typesafe_cache("asan_typesafe_debug");
    let keep = c.alloc().unwrap(); // keeps the slab alive: only the object's poisoning counts
    let p = c.alloc().unwrap();
    // SAFETY: freed once.
    unsafe { c.free(p) };
    assert_eq!(read(p), 7, "read before the grace period is legal");
    rcu_core::rcu_barrier(); // the deferred free ran
    println!("read a grace period after free: {}", read(p));
    // SAFETY: freed once.
    unsafe { c.free(keep) };
}

#[test]
fn wrong_programs_are_reported() {
    match child_case().as_deref() {
        Some("cache") => return case_cache_uaf(),
        Some("kmalloc") => return case_kmalloc_uaf(),
        Some("typesafe-legal") => return case_typesafe_after_release(false),
        Some("typesafe-release") => return case_typesafe_after_release(true),
        Some("typesafe-debug") => return case_typesafe_rcu_debug(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    if !sanitize::POISONING {
        eprintln!("skipped: only builds with --cfg rcu_sanitize and AddressSanitizer poison");
        return;
    }
    let run = |case| {
        run_child(
            "wrong_programs_are_reported",
            case,
            &[],
            Duration::from_secs(60),
        )
    };
    let o = run("typesafe-legal");
    assert!(
        o.status.success(),
        "a legal typesafe read was reported:\n{}",
        stderr(&o)
    );
    for (case, frame) in [
        ("cache", "case_cache_uaf"),
        ("kmalloc", "case_kmalloc_uaf"),
        ("typesafe-release", "case_typesafe_after_release"),
        ("typesafe-debug", "case_typesafe_rcu_debug"),
    ] {
        let o = run(case);
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("ERROR: AddressSanitizer") && err.contains(frame),
            "case {case}: no AddressSanitizer report naming {frame} (status {}):\n{err}",
            o.status
        );
        println!(
            "{case}: {}",
            err.lines()
                .find(|l| l.contains("ERROR: AddressSanitizer"))
                .unwrap()
        );
    }
}

/// Legal: in the RCU debug mode, an object freed (its free deferred by a grace period), then the
/// cache dropped inside a reader (destroyed on a thread of its own). The free happened before
/// the destroy: it must not be reported as a leak.
fn case_rcu_debug_drop_in_reader() {
    sanitize::set_rcu_debug(true);
    let c = typesafe_cache("asan_debug_drop");
    let p = c.alloc().unwrap();
    // SAFETY: freed once.
    unsafe { c.free(p) };
    {
        let _g = rcu_core::rcu_read_lock();
        drop(c); // destroyed on another thread, which may wait
        std::thread::sleep(Duration::from_millis(200));
    }
    rcu_core::rcu_barrier();
    std::thread::sleep(Duration::from_millis(500)); // the destroy thread finishes
    println!("dropped");
}

#[test]
fn rcu_debug_drop_in_reader_is_not_a_leak() {
    if child_case().as_deref() == Some("debug-drop") {
        return case_rcu_debug_drop_in_reader();
    }
    if !sanitize::POISONING {
        eprintln!("skipped: only builds with --cfg rcu_sanitize and AddressSanitizer poison");
        return;
    }
    let o = run_child(
        "rcu_debug_drop_in_reader_is_not_a_leak",
        "debug-drop",
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&o);
    assert!(
        o.status.success() && !err.contains("leaked"),
        "a free deferred by the RCU debug mode was reported as a leak (status {}):\n{err}",
        o.status
    );
}

/// Legal: in the RCU debug mode, typesafe objects freed inside a reader while `call_rcu` has no
/// memory (the `call_rcu` fault point fails every allocation). The free must not panic.
fn case_rcu_debug_free_in_reader_no_memory() {
    use rcu_core::fault::{self, FaultAttr, Point};
    sanitize::set_rcu_debug(true);
    let c = typesafe_cache("asan_debug_nomem");
    let objs: Vec<_> = (0..64).map(|_| c.alloc().unwrap()).collect();
    fault::arm(Point::CallRcu, FaultAttr::always(-1));
    {
        let _g = rcu_core::rcu_read_lock();
        for &p in &objs {
            // SAFETY: freed once; typesafe: readers may still read it.
            unsafe { c.free(p) };
            assert_eq!(read(p), 7, "typesafe read after free inside the reader");
        }
    }
    fault::disarm(Point::CallRcu);
    println!("freed");
}

#[test]
fn rcu_debug_free_in_reader_without_memory() {
    if child_case().as_deref() == Some("debug-nomem") {
        return case_rcu_debug_free_in_reader_no_memory();
    }
    if !sanitize::POISONING {
        eprintln!("skipped: only builds with --cfg rcu_sanitize and AddressSanitizer poison");
        return;
    }
    let o = run_child(
        "rcu_debug_free_in_reader_without_memory",
        "debug-nomem",
        &[],
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "a typesafe free inside a reader failed in the RCU debug mode without memory (status \
         {}):\n{}",
        o.status,
        stderr(&o)
    );
}

/// Legal: in the RCU debug mode, a typesafe object freed with a lock held that a reader waits
/// for inside its critical section, while `call_rcu` has no memory. `kmem_cache_free` never
/// waits for a grace period in the normal mode, so it must not in the debug mode either (the
/// reader would never end: a deadlock).
fn case_rcu_debug_free_with_lock_no_memory() {
    use rcu_core::fault::{self, FaultAttr, Point};
    use std::sync::{mpsc, Arc, Mutex};
    sanitize::set_rcu_debug(true);
    let c = typesafe_cache("asan_debug_lock");
    let p = c.alloc().unwrap();
    let m = Arc::new(Mutex::new(()));
    let held = m.lock().unwrap();
    let (started, go) = mpsc::channel();
    let m2 = Arc::clone(&m);
    std::thread::spawn(move || {
        let _g = rcu_core::rcu_read_lock();
        started.send(()).unwrap();
        drop(m2.lock()); // waits for the freeing thread's lock inside the reader
    });
    go.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    fault::arm(Point::CallRcu, FaultAttr::always(-1));
    let (done, freed) = mpsc::channel();
    let addr = p.as_ptr() as usize;
    std::thread::spawn(move || {
        let p = NonNull::new(addr as *mut u64).unwrap();
        // SAFETY: freed once.
        unsafe { c.free(p) };
        done.send(()).unwrap();
        std::mem::forget(c);
    });
    freed
        .recv_timeout(Duration::from_secs(5))
        .expect("kmem_cache_free of a typesafe object waited for a grace period (debug mode)");
    drop(held);
    println!("freed");
}

#[test]
fn rcu_debug_free_with_lock_held_does_not_wait() {
    if child_case().as_deref() == Some("debug-lock") {
        return case_rcu_debug_free_with_lock_no_memory();
    }
    if !sanitize::POISONING {
        eprintln!("skipped: only builds with --cfg rcu_sanitize and AddressSanitizer poison");
        return;
    }
    let o = run_child(
        "rcu_debug_free_with_lock_held_does_not_wait",
        "debug-lock",
        &[],
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "a typesafe free with a lock held deadlocked in the RCU debug mode without memory \
         (status {}):\n{}",
        o.status,
        stderr(&o)
    );
}

/// The RCU debug mode switched off after a free it deferred: destroy must still wait for that
/// free (the object was freed before the destroy; not a leak).
#[test]
fn rcu_debug_switched_off_before_destroy_is_not_a_leak() {
    if !sanitize::POISONING {
        eprintln!("skipped: only builds with --cfg rcu_sanitize and AddressSanitizer poison");
        return;
    }
    if child_case().as_deref() == Some("debug-off") {
        sanitize::set_rcu_debug(true);
        let c = typesafe_cache("asan_debug_off");
        let p = c.alloc().unwrap();
        // SAFETY: freed once.
        unsafe { c.free(p) };
        sanitize::set_rcu_debug(false);
        c.destroy().expect("destroy after a deferred free");
        return;
    }
    let o = run_child(
        "rcu_debug_switched_off_before_destroy_is_not_a_leak",
        "debug-off",
        &[],
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "destroy reported a deferred free as a leak after the debug mode was switched off \
         (status {}):\n{}",
        o.status,
        stderr(&o)
    );
}
