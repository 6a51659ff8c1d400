//! A destructor that panics while the batcher frees a head-linked object (retired with
//! `kfree_rcu_head` when no page could be had). Block frees contain such a panic (the rest of
//! the batch is still freed, the collector goes on); a head-linked free must not leave the batcher
//! wedged either: later barriers return and later retires are freed.
//!
//! Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfree_batch::{impl_has_rcu_head, kfree_rcu, kfree_rcu_head, kvfree_rcu_barrier, RcuHead};
use test_support::{child_case, run_child, stderr};

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Panicky {
    _v: [u64; 4],
    head: RcuHead,
}
impl_has_rcu_head!(Panicky, head);
impl Drop for Panicky {
    fn drop(&mut self) {
        panic!("Panicky dropped");
    }
}

struct Counted(#[allow(dead_code)] [u64; 4]);
impl Drop for Counted {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn case_head_drop_panics() {
    kfree_rcu(Box::new(Counted([0; 4])));
    kvfree_rcu_barrier();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    kfree_rcu_head(Box::new(Panicky {
        _v: [1; 4],
        head: RcuHead::new(),
    }));
    slab_backend::set_memory_limit(None);
    // Whoever frees it (this barrier's pass or the worker's), the panic is the destructor's.
    let first = std::panic::catch_unwind(kvfree_rcu_barrier);
    println!(
        "first barrier: {}",
        if first.is_ok() {
            "returned"
        } else {
            "panicked"
        }
    );
    // Let the worker run into it if it took the object.
    std::thread::sleep(Duration::from_millis(200));
    let base = DROPPED.load(Ordering::Relaxed);
    kfree_rcu(Box::new(Counted([2; 4])));
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            kvfree_rcu_barrier();
            done.store(true, Ordering::Release);
        });
    }
    let t0 = Instant::now();
    while !done.load(Ordering::Acquire) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "kvfree_rcu_barrier hangs after a head-linked object's destructor panicked \
             (dropped since: {})",
            DROPPED.load(Ordering::Relaxed) - base
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        DROPPED.load(Ordering::Relaxed) - base,
        1,
        "later retire not freed"
    );
}

#[test]
fn child() {
    match child_case().as_deref() {
        Some("head_drop_panics") => case_head_drop_panics(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn a_panicking_head_linked_destructor_does_not_wedge_the_batcher() {
    let out = run_child("child", "head_drop_panics", &[], Duration::from_secs(60));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case head_drop_panics failed:\n{all}");
}
