//! A panic that escapes a collection pass other than a destructor's — a stall hook that panics
//! inside the pass's grace-period wait — must not wedge the batcher: the pass's busy lock and
//! barrier count are restored, the worker goes on, later barriers return and later retires are
//! freed.
//!
//! Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};
use test_support::{child_case, run_child, stderr};

static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Stall reports to panic on, left.
static PANICS_LEFT: AtomicU64 = AtomicU64::new(0);

struct Counted(#[allow(dead_code)] [u64; 4]);
impl Drop for Counted {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn panicking_hook(_r: &rcu_core::StallReport) {
    let left = PANICS_LEFT.load(Ordering::Relaxed);
    if left != 0 {
        PANICS_LEFT.store(left - 1, Ordering::Relaxed);
        panic!("stall hook panics");
    }
}

/// Runs `f` on a thread of its own and fails if it does not return within 10 s.
fn within_10s(what: &str, f: impl FnOnce() + Send + 'static) {
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            done.store(true, Ordering::Release);
        });
    }
    let t0 = Instant::now();
    while !done.load(Ordering::Acquire) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what} hangs after a pass panicked (dropped: {})",
            DROPPED.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn case_stall_hook_panics() {
    kfree_rcu(Box::new(Counted([0; 4])));
    kvfree_rcu_barrier();
    rcu_core::set_stall_timeout(Duration::from_millis(20));
    rcu_core::set_stall_hook(Some(panicking_hook));
    PANICS_LEFT.store(4, Ordering::Relaxed);
    // A reader stalls grace periods long enough for the hook to run (and panic) in the waits of
    // the barrier's pass and of the worker's.
    let reader = std::thread::spawn(|| {
        let g = rcu_core::rcu_read_lock();
        std::thread::sleep(Duration::from_millis(500));
        drop(g);
    });
    std::thread::sleep(Duration::from_millis(10));
    kfree_rcu(Box::new(Counted([1; 4])));
    within_10s("the first barrier", kvfree_rcu_barrier);
    reader.join().unwrap();
    PANICS_LEFT.store(0, Ordering::Relaxed);
    rcu_core::set_stall_hook(None);
    rcu_core::set_stall_timeout(Duration::from_secs(20));
    within_10s("kvfree_rcu_barrier", kvfree_rcu_barrier);
    let base = DROPPED.load(Ordering::Relaxed);
    kfree_rcu(Box::new(Counted([2; 4])));
    within_10s("kvfree_rcu_barrier", kvfree_rcu_barrier);
    assert_eq!(
        DROPPED.load(Ordering::Relaxed) - base,
        1,
        "later retire not freed"
    );
    // The worker (started again if the hook's panic ended it) frees without a barrier.
    kfree_rcu(Box::new(Counted([3; 4])));
    let t0 = Instant::now();
    while DROPPED.load(Ordering::Relaxed) - base < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the worker does not free after a pass panicked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn worker_only_hook(_r: &rcu_core::StallReport) {
    if std::thread::current().name() == Some("rcu-kfree") {
        panicking_hook(_r);
    }
}

/// The stall hook panics on the worker only, inside its pass: a later retire must still be
/// freed without a barrier (the worker goes on).
fn case_worker_dies() {
    kfree_rcu(Box::new(Counted([0; 4])));
    kvfree_rcu_barrier();
    rcu_core::set_stall_timeout(Duration::from_millis(20));
    rcu_core::set_stall_hook(Some(worker_only_hook));
    PANICS_LEFT.store(1, Ordering::Relaxed);
    let reader = std::thread::spawn(|| {
        let g = rcu_core::rcu_read_lock();
        std::thread::sleep(Duration::from_millis(500));
        drop(g);
    });
    std::thread::sleep(Duration::from_millis(10));
    let t0 = Instant::now();
    // Retire until the worker's wait reported a stall (and panicked), or the reader is done.
    while PANICS_LEFT.load(Ordering::Relaxed) != 0 && t0.elapsed() < Duration::from_millis(400) {
        kfree_rcu(Box::new(Counted([1; 4])));
        std::thread::sleep(Duration::from_millis(5));
    }
    reader.join().unwrap();
    let hit = PANICS_LEFT.swap(0, Ordering::Relaxed) == 0;
    println!("the worker's stall hook panicked: {hit}");
    rcu_core::set_stall_hook(None);
    rcu_core::set_stall_timeout(Duration::from_secs(20));
    let base = DROPPED.load(Ordering::Relaxed);
    kfree_rcu(Box::new(Counted([3; 4])));
    let t0 = Instant::now();
    while DROPPED.load(Ordering::Relaxed) == base {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nothing is freed without a barrier after the worker's pass panicked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    within_10s("kvfree_rcu_barrier", kvfree_rcu_barrier);
}

#[test]
fn child() {
    match child_case().as_deref() {
        Some("stall_hook_panics") => case_stall_hook_panics(),
        Some("worker_dies") => case_worker_dies(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn a_panic_escaping_a_pass_does_not_wedge_the_batcher() {
    let out = run_child("child", "stall_hook_panics", &[], Duration::from_secs(60));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        out.status.success(),
        "case stall_hook_panics failed:\n{all}"
    );
}

#[test]
fn the_worker_survives_a_panic_escaping_its_pass() {
    let out = run_child("child", "worker_dies", &[], Duration::from_secs(60));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case worker_dies failed:\n{all}");
    assert!(
        all.contains("the worker's stall hook panicked: true"),
        "the case did not make the worker's pass panic:\n{all}"
    );
}
