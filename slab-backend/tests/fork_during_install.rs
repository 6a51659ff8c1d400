//! A `fork()` while another thread registers the slab layer's fork handlers (whose first step is
//! rcu-core's initialisation): the child must not wait for a thread it does not have. The
//! registering thread is held inside rcu-core's initialisation by this binary's allocator (the
//! callback lists are allocated there), the main thread forks, and the fork child allocates.
//!
//! The case runs in a child process (a fresh engine) with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::time::Duration;

use test_support::pausing_alloc::{self, PausingAlloc};
use test_support::{child_case, in_fork_child, run_child, stderr};

#[global_allocator]
static ALLOC: PausingAlloc = PausingAlloc;

fn child_fork_during_install() {
    let t = pausing_alloc::hold_in_first_allocation("the registration", || {
        // The slab layer's first use: it initialises rcu-core inside its registration, which
        // allocates the callback lists, where the pausing allocator holds this thread.
        slab_backend::install_fork_handlers();
    });
    in_fork_child(
        "kmalloc after a fork during the slab layer's registration",
        Duration::from_secs(10),
        || {
            let p = slab_backend::kmalloc(64).expect("kmalloc in the fork child");
            // SAFETY: allocated just above, freed once.
            unsafe { slab_backend::kfree(p) };
            0
        },
    );
    pausing_alloc::release();
    t.join().expect("registering thread");
    let p = slab_backend::kmalloc(64).expect("kmalloc");
    // SAFETY: allocated just above, freed once.
    unsafe { slab_backend::kfree(p) };
    println!("CASE-OK");
}

#[test]
fn fork_during_install_child_allocates() {
    match child_case().as_deref() {
        Some("fork_during_install") => return child_fork_during_install(),
        Some(_) => return,
        None => {}
    }
    let out = run_child(
        "fork_during_install_child_allocates",
        "fork_during_install",
        &[],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("CASE-OK"),
        "child failed: {}",
        stderr(&out)
    );
}
