//! A typesafe slab cache owned by an object the batcher frees: its drop runs in a collection
//! pass, where `rcu_core::may_block()` says yes, so it destroys the cache inline and waits with
//! `rcu_barrier()` while the pass holds the collection lock. A `call_rcu` callback queued before
//! that calls `kvfree_rcu_barrier()` (refused only inside readers and pass destructors) then
//! waits for that lock: neither side can go on. Child process with a deadline (a hang is the
//! failure); the expected outcome is any non-hang (a panic naming the misuse, or both finish).
#![cfg(not(rcu_loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};
use slab_backend::KmemCache;
use test_support::{child_case, run_child, stderr};

static OWNER_DROPPING: AtomicBool = AtomicBool::new(false);
static CALLBACK_DONE: AtomicBool = AtomicBool::new(false);
static DROPS: AtomicUsize = AtomicUsize::new(0);

struct Obj(#[allow(dead_code)] u64);
impl Drop for Obj {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

struct Owner(Option<KmemCache<Obj>>);
impl Drop for Owner {
    fn drop(&mut self) {
        eprintln!("owner dropped, may_block() = {}", rcu_core::may_block());
        OWNER_DROPPING.store(true, Ordering::SeqCst);
        drop(self.0.take());
        eprintln!("cache dropped");
    }
}

fn case_cache_drop_in_pass() {
    let cache = KmemCache::<Obj>::builder("pass-owned")
        .typesafe_by_rcu(true)
        .ctor(|| Obj(1))
        .build()
        .unwrap();
    kfree_rcu(Box::new(Owner(Some(cache))));
    rcu_core::call_rcu(|| {
        let start = Instant::now();
        while !OWNER_DROPPING.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        eprintln!("callback: kvfree_rcu_barrier");
        let r = catch_unwind(AssertUnwindSafe(kvfree_rcu_barrier));
        eprintln!("callback: kvfree_rcu_barrier panicked: {}", r.is_err());
        CALLBACK_DONE.store(true, Ordering::SeqCst);
    });
    kvfree_rcu_barrier();
    rcu_core::rcu_barrier();
    assert!(CALLBACK_DONE.load(Ordering::SeqCst));
    println!("case done");
}

#[test]
fn pass_cache_drop_child() {
    match child_case().as_deref() {
        Some("cache_drop_in_pass") => case_cache_drop_in_pass(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn typesafe_cache_dropped_in_a_pass_while_a_callback_waits_for_the_batcher() {
    let out = run_child(
        "pass_cache_drop_child",
        "cache_drop_in_pass",
        &[],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("case done"),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}
