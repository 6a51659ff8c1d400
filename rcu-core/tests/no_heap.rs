//! The engine's paths that may run when the heap is exhausted (starting its background threads,
//! reporting a failure or a stall, `rcu_barrier`) must not abort the process with "memory
//! allocation of N bytes failed". Each case runs in a child process: it sets `RLIMIT_AS` just
//! above the current use (so no thread stack can be mapped either), takes every block `malloc`
//! still hands out, then runs the path. The parent checks that the child exited normally.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcu_core::*;
use test_support::{child_case, exhaust_heap, run_child, set_rlimit_as, stderr, vm_size};

/// Leaves about 1 MiB of address space: less than a thread stack.
fn limit_address_space() {
    set_rlimit_as(vm_size() + (1 << 20)).expect("setrlimit");
}

/// Runs `case` in a child; it must finish normally and its stderr must contain `expect`.
fn check(test: &str, case: &str, expect: &str) {
    if cfg!(rcu_sanitize) {
        // AddressSanitizer's own allocator needs address space RLIMIT_AS takes away; the cases
        // run in the plain and no-membarrier test jobs.
        eprintln!("skipped under AddressSanitizer: RLIMIT_AS starves the sanitizer runtime");
        return;
    }
    let out = run_child(test, case, &[], Duration::from_secs(60));
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "child '{case}' failed ({:?}):\n{err}\nstdout:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !err.contains("memory allocation of"),
        "child '{case}' ran out of memory:\n{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{case}: done")),
        "child '{case}' did not finish:\n{err}"
    );
    assert!(
        err.contains(expect),
        "child '{case}' did not report '{expect}':\n{err}"
    );
}

/// The first `start_poll_synchronize_rcu` starts the callback worker; with no heap and no room
/// for a stack the start fails softly, and the polled grace period still completes when polled.
fn case_worker_start() {
    synchronize_rcu(); // registers this thread, initialises the engine
    limit_address_space();
    let heap = exhaust_heap();
    let s = start_poll_synchronize_rcu();
    // A retry after the back-off, still without memory.
    std::thread::sleep(Duration::from_millis(20));
    let s2 = start_poll_synchronize_rcu();
    synchronize_rcu();
    assert!(poll_state_synchronize_rcu(s) && poll_state_synchronize_rcu(s2));
    heap.release();
    println!("worker_start: done");
}

/// A stall report while the heap is exhausted: the default hook prints it without allocating.
fn case_stall_report() {
    set_stall_timeout(Duration::from_millis(30));
    drop(rcu_read_lock()); // registers this thread
    let _ = stall_timeout();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::Builder::new()
        .name("stalling-reader".into())
        .spawn(move || {
            let _g = rcu_read_lock();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        })
        .unwrap();
    rx.recv().unwrap();
    limit_address_space();
    let heap = exhaust_heap();
    synchronize_rcu(); // waits for the reader: reports a stall
    heap.release();
    reader.join().unwrap();
    println!("stall_report: done");
}

static RAN: AtomicU64 = AtomicU64::new(0);

/// `rcu_barrier` with a callback queued and the heap exhausted (the worker runs).
fn case_barrier() {
    call_rcu(|| {
        RAN.fetch_add(1, Ordering::Relaxed);
    });
    rcu_barrier(); // the worker runs now
    call_rcu(|| {
        RAN.fetch_add(1, Ordering::Relaxed);
    });
    limit_address_space();
    let heap = exhaust_heap();
    rcu_barrier();
    let ran = RAN.load(Ordering::Relaxed);
    heap.release();
    assert_eq!(ran, 2);
    println!("barrier: done");
}

/// `call_rcu` of a closure too large to store inline, with the heap exhausted: it cannot be
/// boxed, so the caller waits for a grace period and runs it.
fn case_large_closure() {
    rcu_barrier();
    synchronize_rcu();
    limit_address_space();
    let heap = exhaust_heap();
    let big = [3u64; 8];
    call_rcu(move || {
        RAN.fetch_add(big.iter().sum::<u64>(), Ordering::Relaxed);
    });
    let ran = RAN.load(Ordering::Relaxed);
    heap.release();
    assert_eq!(ran, 24, "the callback did not run in the caller");
    println!("large_closure: done");
}

#[test]
fn large_closure_without_heap() {
    match child_case().as_deref() {
        Some("large_closure") => case_large_closure(),
        Some(_) => {}
        None => check("large_closure_without_heap", "large_closure", ""),
    }
}

#[test]
fn worker_start_without_heap() {
    match child_case().as_deref() {
        Some("worker_start") => case_worker_start(),
        Some(_) => {}
        None => check(
            "worker_start_without_heap",
            "worker_start",
            "cannot start the call_rcu worker thread (out of memory)",
        ),
    }
}

#[test]
fn stall_report_without_heap() {
    match child_case().as_deref() {
        Some("stall_report") => case_stall_report(),
        Some(_) => {}
        None => check(
            "stall_report_without_heap",
            "stall_report",
            "rcu stall: thread 'stalling-reader' (tid",
        ),
    }
}

#[test]
fn barrier_without_heap() {
    match child_case().as_deref() {
        Some("barrier") => case_barrier(),
        Some(_) => {}
        None => check("barrier_without_heap", "barrier", ""),
    }
}

/// A thread's first guard (its registration) with the heap exhausted: it gets a record all the
/// same, its sections are waited for, and once it has exited grace periods do not wait for it.
fn case_first_guard() {
    synchronize_rcu(); // registers this thread, initialises the engine
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (unlock_tx, unlock_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::Builder::new()
        .name("late-reader".into())
        .spawn(move || {
            locked_tx.send(()).unwrap(); // started (its stacks are mapped)
            go_rx.recv().unwrap();
            let heap = exhaust_heap();
            let g = rcu_read_lock();
            let held = rcu_read_lock_held();
            let nested = rcu_read_lock();
            drop(nested);
            heap.release();
            assert!(held);
            locked_tx.send(()).unwrap();
            unlock_rx.recv().unwrap();
            drop(g);
        })
        .unwrap();
    locked_rx.recv().unwrap();
    limit_address_space();
    go_tx.send(()).unwrap();
    locked_rx.recv().unwrap();
    let s = start_poll_synchronize_rcu();
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !poll_state_synchronize_rcu(s),
        "a grace period ended under the new reader's section"
    );
    unlock_tx.send(()).unwrap();
    t.join().unwrap();
    synchronize_rcu();
    assert!(poll_state_synchronize_rcu(s));
    println!("first_guard: done");
}

#[test]
fn first_guard_without_heap() {
    match child_case().as_deref() {
        Some("first_guard") => case_first_guard(),
        Some(_) => {}
        None => check("first_guard_without_heap", "first_guard", ""),
    }
}
