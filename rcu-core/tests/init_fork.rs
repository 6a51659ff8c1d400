//! A `fork()` while another thread runs the engine's one-time initialisation: the child must not
//! wait for a thread it does not have. The initialising thread is held inside the
//! initialisation by this binary's allocator (the callback lists are allocated there), the main
//! thread forks, and the fork child uses the engine.
//!
//! The case runs in a child process (a fresh engine) with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::time::Duration;

use test_support::pausing_alloc::{self, PausingAlloc};
use test_support::{child_case, in_fork_child, run_child, stderr};

#[global_allocator]
static ALLOC: PausingAlloc = PausingAlloc;

fn child_fork_during_init() {
    let t = pausing_alloc::hold_in_first_allocation("the initialisation", || {
        // The engine's first use: its initialisation allocates the callback lists, where the
        // pausing allocator holds this thread.
        rcu_core::synchronize_rcu();
    });
    in_fork_child(
        "engine use after a fork during its initialisation",
        Duration::from_secs(10),
        || {
            rcu_core::synchronize_rcu();
            rcu_core::call_rcu(|| ());
            rcu_core::rcu_barrier();
            0
        },
    );
    pausing_alloc::release();
    t.join().expect("initialising thread");
    rcu_core::call_rcu(|| ());
    rcu_core::rcu_barrier();
    println!("CASE-OK");
}

#[test]
fn fork_during_init_child_uses_engine() {
    match child_case().as_deref() {
        Some("fork_during_init") => return child_fork_during_init(),
        Some(_) => return,
        None => {}
    }
    let out = run_child(
        "fork_during_init_child_uses_engine",
        "fork_during_init",
        &[],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("CASE-OK"),
        "child failed: {}",
        stderr(&out)
    );
}
