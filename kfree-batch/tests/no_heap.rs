//! The batcher's paths that may run when the heap is exhausted (starting its worker thread again,
//! reporting that it cannot, a thread's first retire) must not abort the process with "memory
//! allocation of N bytes failed" (nor make the C library abort). Each case runs in a child
//! process: it sets `RLIMIT_AS` just above the current use (so no thread stack can be mapped),
//! takes every block `malloc` still hands out, then retires.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};
use test_support::{child_case, exhaust_heap, run_child, set_rlimit_as, stderr, vm_size};

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Tracked(#[allow(dead_code)] [u64; 4]);
impl Drop for Tracked {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker cannot start (no room for its stack), then the heap runs out while objects are
/// retired: every retire retries the start, softly.
fn case_worker_retry() {
    let n = 2_000usize;
    let objs: Vec<Box<Tracked>> = (0..n).map(|i| Box::new(Tracked([i as u64; 4]))).collect();
    let mut objs = objs.into_iter();
    drop(rcu_core::rcu_read_lock()); // registers this thread
    set_rlimit_as(vm_size() + (1 << 20)).expect("setrlimit");
    // With heap left: the first start fails for the stack alone.
    for o in objs.by_ref().take(10) {
        kfree_rcu(o);
    }
    let heap = exhaust_heap();
    for o in objs.by_ref() {
        kfree_rcu(o);
    }
    std::thread::sleep(Duration::from_millis(20));
    heap.release();
    kvfree_rcu_barrier();
    assert_eq!(DROPPED.load(Ordering::Relaxed), n as u64, "objects lost");
    println!("worker_retry: done");
}

/// A thread's first `kfree_rcu` with the heap exhausted (no room for the C library's records of
/// its thread-local destructors): the objects take the fallbacks and are all freed, outside and
/// inside a read-side critical section. With `reuse`, a thread that retired and exited first
/// left its front and park array free, so the late thread can have them without allocating;
/// without, it has none (no memory for a front, no page for an array).
fn first_retire(reuse: bool) {
    let n = 40usize;
    for i in 0..4 {
        kfree_rcu(Box::new(Tracked([i; 4]))); // starts the batcher on this thread
    }
    if reuse {
        std::thread::spawn(|| kfree_rcu(Box::new(Tracked([9; 4]))))
            .join()
            .unwrap();
    }
    kvfree_rcu_barrier();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::Builder::new()
        .name("late-retirer".into())
        .spawn(move || {
            let objs: Vec<Box<Tracked>> =
                (0..n).map(|i| Box::new(Tracked([i as u64; 4]))).collect();
            ready_tx.send(()).unwrap(); // started (its stacks are mapped)
            go_rx.recv().unwrap();
            let heap = exhaust_heap();
            let mut objs = objs.into_iter();
            for o in objs.by_ref().take(n / 2) {
                kfree_rcu(o);
            }
            {
                let _g = rcu_core::rcu_read_lock();
                for o in objs.by_ref() {
                    kfree_rcu(o);
                }
            }
            heap.release();
        })
        .unwrap();
    ready_rx.recv().unwrap();
    set_rlimit_as(vm_size() + (1 << 20)).expect("setrlimit");
    go_tx.send(()).unwrap();
    t.join().unwrap();
    kvfree_rcu_barrier();
    let expect = 4 + reuse as u64 + n as u64;
    assert_eq!(DROPPED.load(Ordering::Relaxed), expect, "objects lost");
    println!("first_retire: done");
}

/// Runs `case` in a child; it must finish normally, without running out of memory.
fn check(test: &str, case: &str) {
    if cfg!(rcu_sanitize) {
        // AddressSanitizer's own allocator needs address space RLIMIT_AS takes away (it aborts in
        // its InternalMmapVector); the cases run in the plain and no-membarrier test jobs.
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
        String::from_utf8_lossy(&out.stdout).contains("first_retire: done"),
        "child '{case}' did not finish:\n{err}"
    );
}

#[test]
fn first_retire_without_heap() {
    match child_case().as_deref() {
        Some("first_retire") => first_retire(false),
        Some(_) => {}
        None => check("first_retire_without_heap", "first_retire"),
    }
}

#[test]
fn first_retire_reusing_without_heap() {
    match child_case().as_deref() {
        Some("first_retire_reusing") => first_retire(true),
        Some(_) => {}
        None => check("first_retire_reusing_without_heap", "first_retire_reusing"),
    }
}

#[test]
fn worker_retry_without_heap() {
    match child_case().as_deref() {
        Some("worker_retry") => case_worker_retry(),
        Some(_) => {}
        None if cfg!(rcu_sanitize) => {
            eprintln!("skipped under AddressSanitizer: RLIMIT_AS starves the sanitizer runtime")
        }
        None => {
            let out = run_child(
                "worker_retry_without_heap",
                "worker_retry",
                &[],
                Duration::from_secs(60),
            );
            let err = stderr(&out);
            assert!(
                out.status.success(),
                "child failed ({:?}):\n{err}\nstdout:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(
                !err.contains("memory allocation of"),
                "child ran out of memory:\n{err}"
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("worker_retry: done"));
            assert!(
                err.contains("kfree-batch: cannot start the worker"),
                "the failed start was not reported:\n{err}"
            );
        }
    }
}
