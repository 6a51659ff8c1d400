//! Deliberately wrong programs, each in a child process, that AddressSanitizer must report: a
//! read through a pointer kept past its guard after `kfree_rcu` freed the object (the system
//! allocator's memory, which ASan tracks itself), and the same with `kfree_rcu_cache` (a slab
//! object, poisoned by the slab under `--cfg rcu_sanitize`). The batcher's own pages (blocks,
//! park arrays) stay addressable while it uses them, so a correct program is not reported. In
//! builds without the sanitizer the test only says it skipped.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use kfree_batch::{kfree_rcu, kfree_rcu_cache, kvfree_rcu_barrier};
use rcu_core::rcu_read_lock;
use slab_backend::{sanitize, KmemCache};
use test_support::{child_case, run_child, stderr};

fn read(p: *const u64) -> u64 {
    // SAFETY: none in the wrong programs, deliberately (ASan must report the read); volatile,
    // so the access stays.
    unsafe { core::ptr::read_volatile(p) }
}

/// Retires a box inside a reader, keeps its address past the guard, reads it after the free.
fn case_box(wrong: bool) {
    let b = Box::new([5u64; 4]);
    let p = b.as_ptr();
    {
        let _g = rcu_read_lock();
        kfree_rcu(b);
        assert_eq!(read(p), 5, "legal: inside the reader");
    }
    kvfree_rcu_barrier();
    if wrong {
        println!("read past the guard after the free: {}", read(p));
    } else {
        println!("legal reads not reported");
    }
}

fn case_cache() {
    let c = Arc::new(
        KmemCache::<[u64; 4]>::builder("asan_kfree")
            .build()
            .unwrap(),
    );
    let p: NonNull<[u64; 4]> = c.alloc().unwrap();
    // SAFETY: a fresh object.
    unsafe { p.as_ptr().write([6; 4]) };
    {
        let _g = rcu_read_lock();
        // SAFETY: allocated from `c`, retired once.
        unsafe { kfree_rcu_cache(&c, p) };
        assert_eq!(read(p.as_ptr().cast()), 6, "legal: inside the reader");
    }
    kvfree_rcu_barrier();
    println!(
        "read past the guard after kfree_rcu_cache: {}",
        read(p.as_ptr().cast())
    );
}

#[test]
fn wrong_programs_are_reported() {
    match child_case().as_deref() {
        Some("legal") => return case_box(false),
        Some("box") => return case_box(true),
        Some("cache") => return case_cache(),
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
    let o = run("legal");
    assert!(
        o.status.success(),
        "a legal program was reported:\n{}",
        stderr(&o)
    );
    for (case, kind) in [
        ("box", "heap-use-after-free"),
        ("cache", "use-after-poison"),
    ] {
        let o = run(case);
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains(&format!("ERROR: AddressSanitizer: {kind}")),
            "case {case}: no AddressSanitizer {kind} report (status {}):\n{err}",
            o.status
        );
        assert!(
            err.contains("case_box") || err.contains("case_cache"),
            "{err}"
        );
    }
}
