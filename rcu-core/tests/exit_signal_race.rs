//! A signal handler that takes a guard (documented as allowed on a registered thread) while a
//! thread that exited inside its section drops that section's guard in a late thread-local
//! destructor.
//!
//! The defect this guards: a drop that unlocked (word 0), then loaded an `exited` flag and gave
//! the record back could be interrupted between the two by a handler whose guard, outermost on
//! the quiescent word, saw the flag too and gave the record back first; the interrupted drop then
//! gave it back a second time (in debug builds its `debug_assert` on `LOCAL` fired first: a panic
//! inside thread-local teardown, an abort). The record must be given back exactly once, whatever
//! instruction of the drop the handler interrupts.
//!
//! To land the handler at every instruction of that drop deterministically, the late destructor
//! single-steps it (x86-64 trap flag set from a signal handler): round `n` takes the handler's
//! guard at the `n`-th instruction only.
//!
//! Runs in a child process: the failure is an abort inside thread teardown.
#![cfg(all(not(rcu_loom), target_arch = "x86_64", target_os = "linux"))]

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rcu_core::*;
use test_support::{child_case, run_child, stderr};

thread_local! {
    /// Set by the late destructor around its guard drop. `const` and without drop glue, so it
    /// stays usable during thread-local teardown.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// The instruction (counted from the end of the arming signal) at which the trap handler takes
/// its guard in the current round.
static AT_STEP: AtomicUsize = AtomicUsize::new(0);
/// Instructions stepped in the current round.
static STEPS: AtomicUsize = AtomicUsize::new(0);
/// Whether the handler took its guard in the current round.
static ACTED: AtomicUsize = AtomicUsize::new(0);

const TF: libc::greg_t = 0x100;

/// SIGUSR1: starts single-stepping the interrupted code.
extern "C" fn arm(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
    unsafe {
        (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_EFL as usize] |= TF;
    }
}

/// SIGTRAP after each stepped instruction.
extern "C" fn step(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: as in `arm`.
    let gregs = unsafe { &mut (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    if !ARMED.with(|a| a.get()) {
        gregs[libc::REG_EFL as usize] &= !TF;
        return;
    }
    let n = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
    if n == AT_STEP.load(Ordering::Relaxed) {
        gregs[libc::REG_EFL as usize] &= !TF;
        OUTERMOST.store(!rcu_read_lock_held(), Ordering::Relaxed);
        // A guard in a signal handler of a registered thread.
        let g = rcu_read_lock();
        drop(g);
        ACTED.store(1, Ordering::Relaxed);
        if CLAIM_IN_HANDLER.load(Ordering::Relaxed) {
            // Another thread registers now, before the interrupted drop goes on.
            HELPER.store(HELPER_GO, Ordering::SeqCst);
            while HELPER.load(Ordering::SeqCst) != HELPER_IN {
                std::hint::spin_loop();
            }
        }
    }
}

/// Whether the handler's guard was outermost (the interrupted thread's nesting was 0).
static OUTERMOST: AtomicBool = AtomicBool::new(false);
/// Whether the trap handler makes a helper thread register after its guard.
static CLAIM_IN_HANDLER: AtomicBool = AtomicBool::new(false);
static HELPER: AtomicUsize = AtomicUsize::new(0);
const HELPER_WAIT: usize = 0;
const HELPER_GO: usize = 1;
const HELPER_IN: usize = 2;
const HELPER_LEAVE: usize = 3;
/// Names of the threads reported as exiting inside a section.
static EXIT_REPORTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct LateGuard(Option<RcuReadGuard>);
impl Drop for LateGuard {
    fn drop(&mut self) {
        let Some(g) = self.0.take() else { return };
        ARMED.with(|a| a.set(true));
        // SAFETY: raising a signal whose handler is installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        drop(g);
        ARMED.with(|a| a.set(false));
    }
}

thread_local! {
    static LATE: RefCell<LateGuard> = const { RefCell::new(LateGuard(None)) };
}

fn install(
    sig: libc::c_int,
    f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) {
    // SAFETY: a zeroed sigaction filled with a valid handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = f as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, core::ptr::null_mut()), 0);
    }
}

fn child_signal_during_late_drop() {
    // Quiet: every exit inside a section is reported once.
    set_stall_hook(Some(|_| {}));
    install(libc::SIGUSR1, arm);
    install(libc::SIGTRAP, step);
    let start = Instant::now();
    let mut n = 0;
    let mut total = usize::MAX;
    while n < total.min(5000) && start.elapsed() < Duration::from_secs(40) {
        n += 1;
        AT_STEP.store(n, Ordering::SeqCst);
        STEPS.store(0, Ordering::SeqCst);
        ACTED.store(0, Ordering::SeqCst);
        std::thread::spawn(|| {
            // Registered before the engine's exit hook, so destroyed after it.
            LATE.with(|_| ());
            let g = rcu_read_lock();
            LATE.with(|l| l.borrow_mut().0 = Some(g));
        })
        .join()
        .unwrap();
        if ACTED.load(Ordering::SeqCst) == 0 {
            // Past the last instruction of the armed region.
            total = n;
        }
    }
    // Every exited section ended: a grace period completes.
    synchronize_rcu();
    eprintln!("{n} rounds (armed region: {total} instructions)");
}

/// Release builds (the debug assertion is compiled out): the record is given back twice. A helper
/// that registered in between (inside the handler) owns it, inside a section, while it is marked
/// free; the next threads to register claim it too and share the helper's reader word. Shown by
/// a claimer that never exits inside a section being reported (and treated) as one.
fn child_double_release_shares_a_record() {
    set_stall_hook(Some(|r| {
        if r.kind == StallKind::ExitedInCriticalSection {
            EXIT_REPORTS
                .lock()
                .unwrap()
                .push(r.thread_name.as_str().to_owned());
        }
    }));
    install(libc::SIGUSR1, arm);
    install(libc::SIGTRAP, step);
    CLAIM_IN_HANDLER.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let mut n = 0;
    let mut total = usize::MAX;
    while n < total.min(3000) && start.elapsed() < Duration::from_secs(60) {
        n += 1;
        AT_STEP.store(n, Ordering::SeqCst);
        STEPS.store(0, Ordering::SeqCst);
        ACTED.store(0, Ordering::SeqCst);
        OUTERMOST.store(false, Ordering::SeqCst);
        HELPER.store(HELPER_WAIT, Ordering::SeqCst);
        let helper = std::thread::spawn(|| {
            while HELPER.load(Ordering::SeqCst) != HELPER_GO {
                std::hint::spin_loop();
            }
            let g = rcu_read_lock();
            HELPER.store(HELPER_IN, Ordering::SeqCst);
            while HELPER.load(Ordering::SeqCst) != HELPER_LEAVE {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(g);
        });
        std::thread::Builder::new()
            .name("late".into())
            .spawn(|| {
                LATE.with(|_| ());
                let g = rcu_read_lock();
                LATE.with(|l| l.borrow_mut().0 = Some(g));
            })
            .unwrap()
            .join()
            .unwrap();
        if ACTED.load(Ordering::SeqCst) == 0 {
            total = n;
            HELPER.store(HELPER_GO, Ordering::SeqCst);
            while HELPER.load(Ordering::SeqCst) != HELPER_IN {
                std::hint::spin_loop();
            }
        }
        if OUTERMOST.load(Ordering::SeqCst) {
            // Threads that register while the helper is inside its section, together claiming
            // every free record; each takes a guard and drops it before it exits.
            let claimers = std::sync::Arc::new(std::sync::Barrier::new(65));
            let js: Vec<_> = (0..64)
                .map(|_| {
                    let b = claimers.clone();
                    std::thread::Builder::new()
                        .name("claimer".into())
                        .spawn(move || {
                            let g = rcu_read_lock();
                            b.wait();
                            drop(g);
                        })
                        .unwrap()
                })
                .collect();
            claimers.wait();
            for j in js {
                j.join().unwrap();
            }
        }
        HELPER.store(HELPER_LEAVE, Ordering::SeqCst);
        helper.join().unwrap();
        let wrong: Vec<String> = EXIT_REPORTS
            .lock()
            .unwrap()
            .iter()
            .filter(|name| name.as_str() != "late")
            .cloned()
            .collect();
        assert!(
            wrong.is_empty(),
            "round {n}: threads that dropped every guard before exiting were reported as exiting \
             inside a read-side critical section: {wrong:?} (their record was shared with a \
             thread inside its section: it had been given back twice)"
        );
    }
    synchronize_rcu();
    eprintln!("{n} rounds (armed region: {total} instructions)");
}

#[test]
fn exit_signal_race_child() {
    match child_case().as_deref() {
        Some("double_release") => child_double_release_shares_a_record(),
        Some("signal_during_late_drop") => child_signal_during_late_drop(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

/// A guard taken and dropped by a signal handler at any instruction of an exited thread's late
/// guard drop must not make that section end (and its record be given back) twice.
#[test]
fn signal_guard_during_an_exited_threads_late_drop_releases_its_record_once() {
    let out = run_child(
        "exit_signal_race_child",
        "signal_during_late_drop",
        &[],
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
    eprintln!("{}", stderr(&out));
}

/// Release builds: the double give-back lets two live threads share one record.
#[test]
fn signal_guard_during_an_exited_threads_late_drop_never_shares_a_record() {
    let out = run_child(
        "exit_signal_race_child",
        "double_release",
        &[],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}
