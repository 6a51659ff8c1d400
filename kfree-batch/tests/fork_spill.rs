//! A `fork()` child of a process holding *spilled* objects (retired inside a read-side critical
//! section with every park slot taken and no page to batch them, while the budget had room, so
//! charged to the budget): the child frees them, and every charge it returns must have been
//! counted by the child's budget recount.
//!
//! The case runs in a child process with a deadline checked from outside, and forks from there;
//! the forked child reports with `write(2)` and its exit code.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier, stats, PARK_SLOTS};
use rcu_core::rcu_read_lock;
use test_support::{child_case, in_fork_child, run_child, say, stderr};

/// How long a fork child may take.
const FORK_DEADLINE: Duration = Duration::from_secs(30);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// 4 KiB with drop glue: a spill of a few hundred of them charges far more than any
/// reservation the child's recount keeps.
struct Big(#[allow(dead_code)] [u64; 512]);
impl Drop for Big {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn case_spilled_at_fork() {
    const SPILL: usize = 300;
    // Creates the batcher, this thread's front and its park slots.
    kfree_rcu(Box::new(Big([0; 512])));
    kvfree_rcu_barrier();
    // A reader elsewhere keeps the spilled objects pending until the fork.
    let (hold, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let stall = {
        let (hold, release) = (hold.clone(), release.clone());
        std::thread::spawn(move || {
            let _g = rcu_read_lock();
            hold.store(true, Ordering::Release);
            let t0 = Instant::now();
            while !release.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    while !hold.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    {
        let _g = rcu_read_lock();
        for i in 0..PARK_SLOTS + SPILL {
            kfree_rcu(Box::new(Big([i as u64; 512])));
        }
    }
    let before = stats();
    println!("spilled-at-fork: parent before fork: {before:?}");
    assert!(
        before.spilled >= SPILL as u64,
        "nothing spilled: {before:?}"
    );
    assert_eq!(
        before.overdraft_bytes, 0,
        "charged to the overdraft: {before:?}"
    );
    in_fork_child("spilled at fork", FORK_DEADLINE, move || {
        slab_backend::set_memory_limit(None);
        let pending_at_start = stats().pending_bytes;
        say(&format!(
            "fork child: pending at start {pending_at_start} B\n"
        ));
        kvfree_rcu_barrier();
        let s = stats();
        if s.parked_now != 0 {
            say(&format!(
                "fork child: {} still parked: {s:?}\n",
                s.parked_now
            ));
            return 1;
        }
        // Nothing pending in the child beyond a few reservations and cached pages.
        let slots = rcu_core::cpu::possible_cpus() as u64;
        let bound = s.pages_cached * 4096 + (16 << 10) + slots * ((64 << 10) + 4096);
        if s.pending_bytes > bound {
            say(&format!(
                "fork child: {} B pending after a barrier (bound {bound} B; underflow?): {s:?}\n",
                s.pending_bytes
            ));
            return 2;
        }
        0
    });
    slab_backend::set_memory_limit(None);
    release.store(true, Ordering::Release);
    stall.join().unwrap();
    kvfree_rcu_barrier();
}

#[test]
fn fork_child() {
    match child_case().as_deref() {
        Some("spilled") => case_spilled_at_fork(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn objects_spilled_at_fork_are_uncharged_within_the_childs_budget() {
    let out = run_child("fork_child", "spilled", &[], Duration::from_secs(120));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case spilled failed:\n{all}");
}
