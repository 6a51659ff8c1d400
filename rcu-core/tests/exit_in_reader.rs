//! A thread that exits inside a read-side critical section: its section lasts until its guard
//! is dropped, which may be never (a leaked guard) or later in the thread's teardown (a guard
//! stored in a thread-local whose destructor runs after the engine's exit hook).
//!
//! Every case runs in a child process: a section that never ends blocks every later grace
//! period of the process (which is the behaviour under test), so the cases would hang other
//! tests (and the callback worker) in a shared process.
#![cfg(not(rcu_loom))]

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcu_core::*;
use test_support::{child_case, run_child, stderr};

static REPORTS: Mutex<Vec<StallReport>> = Mutex::new(Vec::new());
fn record_report(r: &StallReport) {
    REPORTS.lock().unwrap().push(r.clone());
}
fn reports_of(kind: StallKind) -> Vec<StallReport> {
    REPORTS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.kind == kind)
        .cloned()
        .collect()
}

/// Polls `cond` every millisecond for at most `limit`; returns whether it became true.
fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// How long a grace period is given to (wrongly) complete before the case decides it waits.
const BLOCKED_FOR: Duration = Duration::from_millis(300);

/// Starts `synchronize_rcu` on a thread; the flag turns true when it returns.
fn synchronize_in_background() -> &'static AtomicBool {
    let done: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    std::thread::spawn(move || {
        synchronize_rcu();
        done.store(true, Ordering::SeqCst);
    });
    done
}

// ---- a guard dropped by a thread-local destructor after the exit hook ---------------------

/// Steps of the late-drop case (the thread-local destructor and the test thread hand over).
static STEP: AtomicUsize = AtomicUsize::new(0);
const IN_LATE_DTOR: usize = 1;
const OTHER_IN_SECTION: usize = 2;
const LATE_DROPPED: usize = 3;
static EXIT_REPORTED_BEFORE_DTOR: AtomicBool = AtomicBool::new(false);

/// Holds a guard in a thread-local; its destructor drops the guard only when the test says so.
struct LateGuard(Option<RcuReadGuard>);
impl Drop for LateGuard {
    fn drop(&mut self) {
        if self.0.is_none() {
            return;
        }
        EXIT_REPORTED_BEFORE_DTOR.store(
            !reports_of(StallKind::ExitedInCriticalSection).is_empty(),
            Ordering::SeqCst,
        );
        STEP.store(IN_LATE_DTOR, Ordering::SeqCst);
        let _ = wait_until(Duration::from_secs(20), || {
            STEP.load(Ordering::SeqCst) == OTHER_IN_SECTION
        });
        drop(self.0.take());
        STEP.store(LATE_DROPPED, Ordering::SeqCst);
    }
}

thread_local! {
    static LATE: RefCell<LateGuard> = const { RefCell::new(LateGuard(None)) };
}

fn child_late_drop() {
    set_stall_hook(Some(record_report));
    let t = std::thread::Builder::new()
        .name("late-drop".into())
        .spawn(|| {
            // Touched before the first guard: its destructor is registered before the engine's
            // exit hook, so it runs after it.
            LATE.with(|_| ());
            let g = rcu_read_lock();
            LATE.with(|l| l.borrow_mut().0 = Some(g));
        })
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || STEP.load(Ordering::SeqCst)
            == IN_LATE_DTOR),
        "the thread-local destructor did not run"
    );
    assert!(
        EXIT_REPORTED_BEFORE_DTOR.load(Ordering::SeqCst),
        "the exit hook did not run before the thread-local destructor (case set up wrongly)"
    );
    // Another thread enters a section while the exited thread's guard is still alive.
    let other_in = &*Box::leak(Box::new(AtomicBool::new(false)));
    let other_release = &*Box::leak(Box::new(AtomicBool::new(false)));
    let other = std::thread::spawn(move || {
        let g = rcu_read_lock();
        other_in.store(true, Ordering::SeqCst);
        let _ = wait_until(Duration::from_secs(20), || {
            other_release.load(Ordering::SeqCst)
        });
        drop(g);
    });
    assert!(wait_until(Duration::from_secs(20), || other_in.load(Ordering::SeqCst)));
    // Now the late guard is dropped.
    STEP.store(OTHER_IN_SECTION, Ordering::SeqCst);
    t.join().unwrap();
    assert_eq!(STEP.load(Ordering::SeqCst), LATE_DROPPED);
    let done = synchronize_in_background();
    std::thread::sleep(BLOCKED_FOR);
    assert!(
        !done.load(Ordering::SeqCst),
        "synchronize_rcu returned while another thread was inside its read-side critical \
         section (a guard dropped after its thread's exit hook ended that thread's section)"
    );
    other_release.store(true, Ordering::SeqCst);
    other.join().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || done.load(Ordering::SeqCst)),
        "synchronize_rcu still waits after every guard was dropped (the late drop did not end \
         the exited thread's section)"
    );
    // Grace periods go on afterwards: nothing is left in a section.
    synchronize_rcu();
    assert_eq!(reports_of(StallKind::ExitedInCriticalSection).len(), 1);
}

// ---- a leaked guard ------------------------------------------------------------------------

const ALIVE: u64 = 0x0123_4567_89AB_CDEF;
static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Tracked(u64);
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0 = 0;
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

fn cell() -> &'static RcuCell<Tracked> {
    static CELL: OnceLock<RcuCell<Tracked>> = OnceLock::new();
    CELL.get_or_init(|| RcuCell::new(None))
}

/// A thread leaks a guard and hands out a `&'static` reference read under it, then exits.
fn leak_from_exiting_thread() -> &'static Tracked {
    cell().replace_with(Some(Box::new(Tracked(ALIVE))), RetireBySync);
    std::thread::Builder::new()
        .name("leaker".into())
        .spawn(|| {
            let g: &'static RcuReadGuard = Box::leak(Box::new(rcu_read_lock()));
            cell().read(g).unwrap()
        })
        .unwrap()
        .join()
        .unwrap()
}

fn child_leaked() {
    set_stall_timeout(Duration::from_millis(100));
    set_stall_hook(Some(record_report));
    let v = leak_from_exiting_thread();
    let exits = reports_of(StallKind::ExitedInCriticalSection);
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0].thread_name, "leaker");
    assert_eq!(exits[0].nesting, 1);
    // Retire the value the escaped reference points to, by waiting for a grace period.
    let done: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    std::thread::spawn(move || {
        cell().replace_with(Some(Box::new(Tracked(1))), RetireBySync);
        done.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(BLOCKED_FOR);
    assert_eq!(
        DROPPED.load(Ordering::SeqCst),
        0,
        "the value read under a leaked guard was freed after its thread exited"
    );
    assert!(
        !done.load(Ordering::SeqCst),
        "a grace period ended a leaked guard's section"
    );
    assert_eq!(v.0, ALIVE, "the escaped reference reads a dead value");
    // The stall reporter names the exited thread that holds the grace period up.
    assert!(
        wait_until(Duration::from_secs(20), || reports_of(
            StallKind::ReaderStall
        )
        .iter()
        .any(|r| r.thread_name == "leaker")),
        "no stall report for the leaked section"
    );
    assert_eq!(
        reports_of(StallKind::ExitedInCriticalSection).len(),
        1,
        "the exit is reported once"
    );
    // Other threads keep reading (the new value) and come and go; none of them gets the
    // leaked record.
    for _ in 0..8 {
        std::thread::spawn(|| {
            let g = rcu_read_lock();
            assert_eq!(cell().read(&g).map(|t| t.0), Some(1));
        })
        .join()
        .unwrap();
    }
    assert_eq!(v.0, ALIVE);
    assert_eq!(DROPPED.load(Ordering::SeqCst), 0);
    eprintln!("leaked guard: grace periods wait, value alive");
}

fn child_leaked_fork() {
    set_stall_hook(Some(record_report));
    let v = leak_from_exiting_thread();
    // SAFETY: fork in a test child; the forked child uses the kit and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The leaked section is still open in the child: the reference is valid there too.
        let done = synchronize_in_background();
        std::thread::sleep(BLOCKED_FOR);
        let code = if done.load(Ordering::SeqCst) {
            3 // a grace period ended the leaked section
        } else if v.0 != ALIVE {
            4
        } else {
            0
        };
        // SAFETY: _exit skips the test harness's exit handlers; async-signal-safe.
        unsafe { libc::_exit(code) };
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("fork child hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(libc::WIFEXITED(status), "fork child died: status {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "fork child: a grace period ended the section of a thread that exited with a leaked guard"
    );
    assert_eq!(v.0, ALIVE);
}

#[test]
fn exit_in_reader_child() {
    match child_case().as_deref() {
        Some("late_drop") => child_late_drop(),
        Some("leaked") => child_leaked(),
        Some("leaked_fork") => child_leaked_fork(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn expect_ok(case: &str) {
    // A leaked guard's value is never freed, by design: no leak report in sanitizer builds.
    let out = run_child(
        "exit_in_reader_child",
        case,
        &[("ASAN_OPTIONS", "detect_leaks=0")],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "child case {case} failed:\n{}",
        stderr(&out)
    );
}

#[test]
fn guard_dropped_after_the_exit_hook_ends_only_its_own_section() {
    expect_ok("late_drop");
}

#[test]
fn leaked_guard_section_never_ends_and_is_reported_once() {
    expect_ok("leaked");
}

#[test]
fn leaked_guard_section_stays_open_in_a_fork_child() {
    expect_ok("leaked_fork");
}
