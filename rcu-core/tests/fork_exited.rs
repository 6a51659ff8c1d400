//! `fork()` while another thread, which exited inside a section whose guard is kept in a
//! thread-local destroyed after the engine's exit hook, has not yet dropped that guard. The
//! section ends in the parent a moment later; no reference read under it can have reached the
//! forking thread (the guard is owned by the exiting thread's thread-local, and references read
//! under it borrow it). The child keeps the record's section open forever, so every grace period
//! of the child waits forever. Child processes with deadlines.
#![cfg(not(rcu_loom))]

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcu_core::*;
use test_support::{child_case, run_child, stderr};

static STEP: AtomicUsize = AtomicUsize::new(0);
const IN_LATE_DTOR: usize = 1;
const FORKED: usize = 2;

struct LateGuard(Option<RcuReadGuard>);
impl Drop for LateGuard {
    fn drop(&mut self) {
        let Some(g) = self.0.take() else { return };
        STEP.store(IN_LATE_DTOR, Ordering::SeqCst);
        let end = Instant::now() + Duration::from_secs(20);
        while STEP.load(Ordering::SeqCst) != FORKED && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(g);
    }
}

thread_local! {
    static LATE: RefCell<LateGuard> = const { RefCell::new(LateGuard(None)) };
}

fn child_fork_during_late_drop() {
    set_stall_hook(Some(|_| {}));
    let t = std::thread::spawn(|| {
        LATE.with(|_| ());
        let g = rcu_read_lock();
        LATE.with(|l| l.borrow_mut().0 = Some(g));
    });
    let end = Instant::now() + Duration::from_secs(20);
    while STEP.load(Ordering::SeqCst) != IN_LATE_DTOR {
        assert!(
            Instant::now() < end,
            "the thread-local destructor did not run"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: fork in a test child; the forked child uses the kit and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let done: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        std::thread::spawn(move || {
            synchronize_rcu();
            done.store(1, Ordering::SeqCst);
        });
        let end = Instant::now() + Duration::from_secs(5);
        while done.load(Ordering::SeqCst) == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: _exit skips the harness's exit handlers; async-signal-safe.
        unsafe {
            libc::_exit(if done.load(Ordering::SeqCst) == 1 {
                0
            } else {
                3
            })
        };
    }
    STEP.store(FORKED, Ordering::SeqCst);
    t.join().unwrap();
    // In the parent the section is over.
    synchronize_rcu();
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "fork child died: {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "fork child: synchronize_rcu did not return within 5 s (the section of a thread that was \
         dropping its guard at the fork stays open in the child forever)"
    );
    println!("case done");
}

#[test]
fn fork_exited_child() {
    match child_case().as_deref() {
        Some("fork_during_late_drop") => child_fork_during_late_drop(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn fork_child_of_a_late_guard_drop_completes_grace_periods() {
    let out = run_child(
        "fork_exited_child",
        "fork_during_late_drop",
        &[],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("case done"),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}
