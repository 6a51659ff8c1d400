//! A `fork()` while another thread registers the slab layer's fork handlers (whose first step is
//! rcu-core's initialisation): the child must not wait for a thread it does not have. The
//! registering thread is held inside rcu-core's initialisation by this binary's allocator (the
//! callback lists are allocated there), the main thread forks, and the fork child allocates.
//!
//! The case runs in a child process (a fresh engine) with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use test_support::{child_case, in_fork_child, run_child, stderr};

/// 0: allocations go through; 1: the next allocation of an armed thread pauses (the value
/// becomes 2 while it waits, until the main thread stores 0).
static PAUSE: AtomicU32 = AtomicU32::new(0);

std::thread_local! {
    /// Whether this thread's allocations may pause (const, no destructor: no allocation).
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

struct Pausing;

// SAFETY: forwards to `System`; the pause only sleeps.
unsafe impl GlobalAlloc for Pausing {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ARMED.try_with(Cell::get).unwrap_or(false)
            && PAUSE
                .compare_exchange(1, 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            while PAUSE.load(Ordering::Relaxed) == 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Pausing = Pausing;

fn child_fork_during_install() {
    PAUSE.store(1, Ordering::Relaxed);
    let t = std::thread::spawn(|| {
        ARMED.with(|a| a.set(true));
        // The slab layer's first use: it initialises rcu-core inside its registration, which
        // allocates the callback lists, where the allocator above holds this thread.
        slab_backend::install_fork_handlers();
        ARMED.with(|a| a.set(false));
    });
    let t0 = Instant::now();
    while PAUSE.load(Ordering::Relaxed) != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the registration never allocated"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
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
    PAUSE.store(0, Ordering::Relaxed);
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
