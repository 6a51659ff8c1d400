//! `fork()` while another thread, which exited inside a section whose guard is kept in a
//! thread-local destroyed after the engine's exit hook, has not yet dropped that guard.
//!
//! The section ends in the parent a moment later. The child cannot tell that guard from a leaked
//! one (whose `&'static` references the forking thread may hold), so its documented behaviour is
//! never-early: the section stays open in the child for good, its grace periods keep waiting,
//! and the stall reporter names the exited thread. Checked here, with the parent's section
//! ending normally. Child processes with deadlines.
#![cfg(not(rcu_loom))]

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcu_core::*;
use test_support::{child_case, run_child, stderr};

static STEP: AtomicUsize = AtomicUsize::new(0);
const IN_LATE_DTOR: usize = 1;
const FORKED: usize = 2;

/// The exiting thread's name, as the stall reporter should give it.
const LATE_NAME: &str = "late-dtor";
/// Stall reports that name the exited thread as holding a grace period up (nesting 1).
static NAMED_STALLS: AtomicUsize = AtomicUsize::new(0);

/// Lock-free: runs in the fork child, where only the waiting thread reports.
fn on_stall(r: &StallReport) {
    if r.kind == StallKind::ReaderStall && r.thread_name == LATE_NAME && r.nesting == 1 {
        NAMED_STALLS.fetch_add(1, Ordering::SeqCst);
    }
}

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

/// Exit codes of the fork child.
const OK: i32 = 0;
const SYNC_RETURNED: i32 = 3;
const NOT_NAMED: i32 = 4;
const POLL_DONE: i32 = 5;

fn child_fork_during_late_drop() {
    set_stall_hook(Some(on_stall));
    let t = std::thread::Builder::new()
        .name(LATE_NAME.into())
        .spawn(|| {
            LATE.with(|_| ());
            let g = rcu_read_lock();
            LATE.with(|l| l.borrow_mut().0 = Some(g));
        })
        .unwrap();
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
        set_stall_timeout(Duration::from_millis(100));
        let before = get_state_synchronize_rcu();
        let done: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        std::thread::spawn(move || {
            synchronize_rcu();
            done.store(1, Ordering::SeqCst);
        });
        // The section stays open: the waiter is reported as stalled on the exited thread and
        // is still waiting a second (ten stall timeouts) later.
        let start = Instant::now();
        while NAMED_STALLS.load(Ordering::SeqCst) == 0
            && done.load(Ordering::SeqCst) == 0
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        while done.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let code = if done.load(Ordering::SeqCst) != 0 {
            SYNC_RETURNED
        } else if NAMED_STALLS.load(Ordering::SeqCst) == 0 {
            NOT_NAMED
        } else if poll_state_synchronize_rcu(before) {
            POLL_DONE
        } else {
            OK
        };
        // SAFETY: _exit skips the harness's exit handlers; async-signal-safe.
        unsafe { libc::_exit(code) };
    }
    STEP.store(FORKED, Ordering::SeqCst);
    t.join().unwrap();
    // In the parent the section is over.
    synchronize_rcu();
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "fork child died: {status}");
    match libc::WEXITSTATUS(status) {
        OK => {}
        SYNC_RETURNED => panic!(
            "fork child: synchronize_rcu returned although a thread that exited inside a \
             section had not dropped its guard at the fork (never-early: the child cannot tell \
             it from a leaked guard)"
        ),
        NOT_NAMED => panic!(
            "fork child: no stall report named '{LATE_NAME}' (nesting 1) while a grace period \
             waited for its section"
        ),
        POLL_DONE => panic!(
            "fork child: a cookie from before the fork polled done while the exited thread's \
             section is still open"
        ),
        other => panic!("fork child exited with {other}"),
    }
    assert_eq!(
        NAMED_STALLS.load(Ordering::SeqCst),
        0,
        "the parent's grace period stalled on the exited thread after its section ended"
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

/// Never-early in the child: a section that a thread-local destructor was about to end at the
/// fork stays open in the child (grace periods wait, the stall reporter names the thread), and
/// ends normally in the parent.
#[test]
fn fork_child_keeps_a_late_guard_drops_section_open_and_names_it() {
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
