//! A destructor run by the worker thread forks: in the child that thread goes on as the worker
//! (it finishes its pass and keeps looping), so the child must not start a second one.
//!
//! The case runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use test_support::{child_case, in_fork_child, run_child, stderr};

/// -1 until the fork child ran; then 1 if it passed its check, 0 if not.
static IN_CHILD: AtomicI32 = AtomicI32::new(-1);

/// Threads of this process named `rcu-kfree`.
fn workers() -> i32 {
    let mut n = 0;
    for e in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let comm =
            std::fs::read_to_string(e.expect("task").path().join("comm")).unwrap_or_default();
        if comm.trim() == "rcu-kfree" {
            n += 1;
        }
    }
    n
}

struct ForkOnDrop;
impl Drop for ForkOnDrop {
    fn drop(&mut self) {
        if std::thread::current().name() != Some("rcu-kfree") {
            return; // only a free by the worker forks
        }
        let ok = std::panic::catch_unwind(|| {
            in_fork_child(
                "retire after a fork from the worker's destructor",
                Duration::from_secs(10),
                || {
                    // Kicks the worker from the child: from a thread of its own (a new front), and
                    // enough objects to hand blocks over.
                    std::thread::spawn(|| {
                        for i in 0..20_000u64 {
                            kfree_batch::kfree_rcu(Box::new(i));
                        }
                    })
                    .join()
                    .expect("retiring thread");
                    std::thread::sleep(Duration::from_millis(100));
                    let n = workers();
                    let msg = format!("worker threads in the fork child: {n}\n");
                    // SAFETY: writing a valid buffer to fd 2.
                    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                    if n == 1 {
                        0
                    } else {
                        3
                    }
                },
            );
        })
        .is_ok();
        IN_CHILD.store(i32::from(ok), Ordering::Relaxed);
    }
}

fn child_worker_destructor_forks() {
    kfree_batch::kfree_rcu(Box::new(ForkOnDrop));
    // The worker frees it after a grace period and the drain delay.
    let t0 = Instant::now();
    while IN_CHILD.load(Ordering::Relaxed) < 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the worker never freed the object"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        IN_CHILD.load(Ordering::Relaxed),
        1,
        "the fork child did not find exactly one worker"
    );
    println!("CASE-OK");
}

#[test]
fn fork_from_worker_destructor_keeps_one_worker() {
    match child_case().as_deref() {
        Some("worker_destructor_forks") => return child_worker_destructor_forks(),
        Some(_) => return,
        None => {}
    }
    let out = run_child(
        "fork_from_worker_destructor_keeps_one_worker",
        "worker_destructor_forks",
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("CASE-OK"),
        "child failed:\n{err}"
    );
}
