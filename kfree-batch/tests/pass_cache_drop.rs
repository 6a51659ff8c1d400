//! A typesafe slab cache owned by an object the batcher frees: its drop runs in a collection
//! pass, which holds the collection lock, while a `call_rcu` callback queued before may be
//! waiting in `kvfree_rcu_barrier()` for that lock. Destroying the cache inline would wait with
//! `rcu_barrier()` for that callback: neither side could go on. So `rcu_core::may_block()` says
//! no there and the drop moves the destroy to a thread of its own; an explicit `rcu_barrier`
//! there panics. Child processes with a deadline (a hang is the failure).
#![cfg(not(rcu_loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
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
    // The drop moved the destroy to a thread of its own, which finishes once the callback ran.
    let start = Instant::now();
    while slab_backend::all_cache_stats()
        .iter()
        .any(|s| s.name == "pass-owned")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the typesafe cache dropped in the pass was never destroyed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("case done");
}

static BARRIER_OUTCOME: Mutex<String> = Mutex::new(String::new());

/// Calls `rcu_barrier` (and then `synchronize_rcu`) in its destructor.
struct Barrier;
impl Drop for Barrier {
    fn drop(&mut self) {
        OWNER_DROPPING.store(true, Ordering::SeqCst);
        let r = catch_unwind(rcu_core::rcu_barrier);
        let msg = match &r {
            Ok(()) => "returned".to_string(),
            Err(e) => e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        // Waiting for a grace period stays allowed here.
        rcu_core::synchronize_rcu();
        *BARRIER_OUTCOME.lock().unwrap() = msg;
    }
}

fn case_rcu_barrier_in_pass() {
    kfree_rcu(Box::new(Barrier));
    rcu_core::call_rcu(|| {
        let start = Instant::now();
        while !OWNER_DROPPING.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = catch_unwind(AssertUnwindSafe(kvfree_rcu_barrier));
        eprintln!("callback: kvfree_rcu_barrier panicked: {}", r.is_err());
        CALLBACK_DONE.store(true, Ordering::SeqCst);
    });
    kvfree_rcu_barrier();
    rcu_core::rcu_barrier();
    assert!(CALLBACK_DONE.load(Ordering::SeqCst));
    let msg = BARRIER_OUTCOME.lock().unwrap().clone();
    eprintln!("destructor: rcu_barrier: {msg}");
    assert!(
        msg.contains(
            "rcu_barrier() called from the destructor of an object kfree-batch is freeing"
        ),
        "{msg}"
    );
    println!("case done");
}

#[test]
fn pass_cache_drop_child() {
    match child_case().as_deref() {
        Some("cache_drop_in_pass") => case_cache_drop_in_pass(),
        Some("rcu_barrier_in_pass") => case_rcu_barrier_in_pass(),
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

/// `rcu_barrier` in the destructor of an object a pass frees, while a callback waits in
/// `kvfree_rcu_barrier` for that pass: a panic naming the misuse, never a hang.
#[test]
fn rcu_barrier_in_a_pass_destructor_panics() {
    let out = run_child(
        "pass_cache_drop_child",
        "rcu_barrier_in_pass",
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
