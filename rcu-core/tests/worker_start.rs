//! Starting the callback worker and keeping callbacks across `fork()`: polled grace periods in a
//! fresh process or a fork child, `rcu_barrier` when no thread can be created, callbacks that the
//! parent's invoker or worker held when the process forked, and callback order when an invoker
//! cannot be restarted in the child.
//!
//! Every case runs in a child process with a deadline checked from outside (the bugs these cases
//! cover are hangs or lost callbacks). Thread creation is made to fail with `RLIMIT_NPROC`: as
//! root (exempt from the limit) the child process first switches to an otherwise unused user id.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcu_core::*;
use test_support::{child_case, run_child, stderr};

/// How long a polled grace period may take before a case reports it as never completing.
const POLL_DEADLINE: Duration = Duration::from_secs(10);

/// Writes `msg` to stderr with `write(2)` (a fork child must not take the parent's stderr lock).
fn say(msg: &str) {
    // SAFETY: writing a valid buffer to fd 2.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Lets this process create at most `extra` more threads (or processes): switches to a user id
/// of its own when running as root (root is exempt from `RLIMIT_NPROC`), then sets the soft
/// limit to the threads it has plus `extra`. Checks the mechanism when `extra == 0`.
fn limit_new_threads(extra: u64) {
    let threads: u64 = std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("thread count");
    // SAFETY: plain syscalls on this process.
    unsafe {
        if libc::geteuid() == 0 {
            let uid = 200_000 + libc::getpid() as libc::uid_t;
            assert_eq!(libc::setresgid(uid, uid, uid), 0, "setresgid");
            assert_eq!(libc::setresuid(uid, uid, uid), 0, "setresuid");
        }
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NPROC, &mut lim),
            0,
            "getrlimit"
        );
        lim.rlim_cur = ((threads + extra) as libc::rlim_t).min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NPROC, &lim), 0, "setrlimit");
    }
    if extra == 0 {
        assert!(
            std::thread::Builder::new().spawn(|| ()).is_err(),
            "RLIMIT_NPROC did not stop thread creation"
        );
    }
}

/// Polls `s` until it completes; panics after [`POLL_DEADLINE`].
fn poll_until_done(s: GpState, what: &str) {
    let deadline = Instant::now() + POLL_DEADLINE;
    while !poll_state_synchronize_rcu(s) {
        assert!(
            Instant::now() < deadline,
            "polled grace period never completed ({what})"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Forks; the child runs `f` and exits with its code; the parent waits (with a deadline) and
/// panics unless the child exited with 0.
fn in_fork_child(what: &str, f: impl FnOnce() -> i32) {
    // SAFETY: fork in a test child process; the forked child only uses the kit, async-signal-safe
    // calls and memory it owns, and exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: _exit skips the test harness's exit handlers.
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
        if start.elapsed() > Duration::from_secs(30) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("fork child ({what}) hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fork child ({what}) failed: status {status:#x}"
    );
}

/// A fresh process that never queued a callback: the polled grace period completes by itself.
fn child_fresh_start_poll() {
    let s = start_poll_synchronize_rcu();
    poll_until_done(s, "fresh process");
}

/// A fork child of a process whose worker runs: the polled grace period completes by itself.
fn child_fork_start_poll() {
    call_rcu(|| ());
    rcu_barrier(); // the parent's worker runs
    in_fork_child("start_poll", || {
        let s = start_poll_synchronize_rcu();
        poll_until_done(s, "fork child");
        0
    });
}

/// No thread can be created: polled grace periods still complete (polling drives them), and
/// `cond_synchronize_rcu` waits for its own.
fn child_no_thread_start_poll() {
    limit_new_threads(0);
    let s = start_poll_synchronize_rcu();
    poll_until_done(s, "no thread can be created");
    let s = start_poll_synchronize_rcu();
    cond_synchronize_rcu(s);
    assert!(poll_state_synchronize_rcu(s));
}

/// No thread can be created: `rcu_barrier` runs the grace periods and callbacks itself.
fn child_no_thread_barrier() {
    static RAN: AtomicUsize = AtomicUsize::new(0);
    limit_new_threads(0);
    for _ in 0..100 {
        call_rcu(|| {
            RAN.fetch_add(1, Ordering::Relaxed);
        });
    }
    rcu_barrier();
    assert_eq!(
        RAN.load(Ordering::Relaxed),
        100,
        "callbacks run by rcu_barrier"
    );
    // And again, with the engine already initialised.
    call_rcu(|| {
        RAN.fetch_add(1, Ordering::Relaxed);
    });
    rcu_barrier();
    assert_eq!(RAN.load(Ordering::Relaxed), 101);
}

/// No thread can be created and every allocation of `rcu_barrier` fails (the `barrier` fault
/// point at 100%): the barrier cannot entrain, and nobody else runs the callbacks, so it must run
/// them itself rather than wait for a worker that never comes.
fn child_no_thread_barrier_no_memory() {
    static RAN: AtomicUsize = AtomicUsize::new(0);
    limit_new_threads(0);
    for _ in 0..100 {
        call_rcu(|| {
            RAN.fetch_add(1, Ordering::Relaxed);
        });
    }
    fault::arm(fault::Point::Barrier, fault::FaultAttr::always(-1));
    rcu_barrier();
    assert_eq!(
        RAN.load(Ordering::Relaxed),
        100,
        "callbacks run by rcu_barrier"
    );
    assert!(fault::injected(fault::Point::Barrier) > 0, "never failed");
}

/// The parent had threads waiting for a grace period's leader when it forked: the child has no
/// such callers and must not count them.
fn child_fork_resets_waiters() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    rx.recv().unwrap();
    // A leader blocked on the holder, and followers waiting for it.
    let waiters: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(synchronize_rcu))
        .collect();
    let dom = raw::global_domain();
    let deadline = Instant::now() + POLL_DEADLINE;
    while dom.waiting_callers() == 0 {
        assert!(Instant::now() < deadline, "no caller waited for the leader");
        std::thread::sleep(Duration::from_millis(1));
    }
    in_fork_child("waiters", || {
        let n = raw::global_domain().waiting_callers();
        if n != 0 {
            say(&format!(
                "fork child counts {n} waiting callers of the parent\n"
            ));
            return 3;
        }
        synchronize_rcu();
        0
    });
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    for w in waiters {
        w.join().unwrap();
    }
}

/// Order log written by callbacks (no lock: a fork child must be able to read it).
static LOG: [AtomicU32; 64] = [const { AtomicU32::new(0) }; 64];
static LOG_LEN: AtomicUsize = AtomicUsize::new(0);
/// Set once the blocking callback runs; it returns once `RELEASE` is set.
static BLOCKING: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);

fn log(v: u32) {
    let i = LOG_LEN.fetch_add(1, Ordering::Relaxed);
    LOG[i].store(v, Ordering::Relaxed);
}

fn logged() -> Vec<u32> {
    let n = LOG_LEN.load(Ordering::Relaxed);
    LOG[..n].iter().map(|v| v.load(Ordering::Relaxed)).collect()
}

fn queue_logging(v: u32) {
    call_rcu(move || log(v));
}

/// Pins the calling thread to the first CPU it may run on, so that its callbacks share one list.
fn pin_to_first_cpu() {
    // SAFETY: the CPU set is a plain bitmask filled by the kernel; sched_*affinity on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("a CPU");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&one), &one),
            0
        );
    }
}

/// Sets up a parent whose callback thread for one list is inside callback 1 (blocked), holds
/// callbacks 2 and 3 behind it in the same batch, and has callbacks 4 and 5 queued behind them.
/// With `worker_runs_them`, the list's invoker cannot be started, so the worker itself runs the
/// batch and 4 and 5 stay in the list; otherwise the invoker runs it and 4 and 5 are handed over
/// to it (not started). Then the fork child checks that 2..=5 run in order before a new
/// callback 6 and before `rcu_barrier` returns, and that 1 (running at fork) does not run again.
fn child_fork_held_callbacks(threads_in_child: Option<u64>, worker_runs_them: bool) {
    pin_to_first_cpu();
    if worker_runs_them {
        // The worker may start, this list's invoker not (until the fork).
        limit_new_threads(1);
    } else {
        call_rcu(|| ());
        rcu_barrier(); // worker and this list's invoker run
    }
    call_rcu(|| {
        log(1);
        BLOCKING.store(true, Ordering::Relaxed);
        while !RELEASE.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    queue_logging(2);
    queue_logging(3);
    let deadline = Instant::now() + POLL_DEADLINE;
    while !BLOCKING.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "callback 1 never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    if worker_runs_them {
        limit_new_threads(1000);
    }
    queue_logging(4);
    queue_logging(5);
    // Let the worker take 4 and 5 through a grace period and hand them over.
    synchronize_rcu();
    synchronize_rcu();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(logged(), [1], "callbacks ran behind the blocked one");
    in_fork_child("held callbacks", move || {
        if let Some(extra) = threads_in_child {
            limit_new_threads(extra);
        }
        queue_logging(6);
        rcu_barrier();
        let got = logged();
        if got != [1, 2, 3, 4, 5, 6] {
            say(&format!(
                "fork child ran {got:?}, expected [1, 2, 3, 4, 5, 6] (threads allowed: \
                 {threads_in_child:?})\n"
            ));
            return 4;
        }
        0
    });
    RELEASE.store(true, Ordering::Relaxed);
    rcu_barrier();
    assert_eq!(logged(), [1, 2, 3, 4, 5], "parent");
}

static FORKED: AtomicI32 = AtomicI32::new(0);

/// A callback forks: in the child, its thread goes on as the invoker and runs the rest of its
/// batch (2 and 3) once; a new callback 6 queued in the child runs after them.
fn child_callback_forks() {
    pin_to_first_cpu();
    call_rcu(|| ());
    rcu_barrier(); // worker and this list's invoker run
    call_rcu(|| {
        log(1);
        // SAFETY: fork from a callback; the child only uses the kit and exits with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid != 0 {
            FORKED.store(pid, Ordering::Relaxed);
            return;
        }
        // Child: this thread is the invoker here (it finishes its batch after returning); a new
        // thread checks the rest.
        std::thread::spawn(|| {
            queue_logging(6);
            rcu_barrier();
            // Give a second runner of 3 (there must be none) time to show itself.
            std::thread::sleep(Duration::from_millis(500));
            let got = logged();
            let code = if got == [1, 2, 3, 6] {
                0
            } else {
                say(&format!("fork child ran {got:?}, expected [1, 2, 3, 6]\n"));
                4
            };
            // SAFETY: _exit skips the test harness's exit handlers.
            unsafe { libc::_exit(code) };
        });
    });
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    call_rcu(move || {
        log(2);
        // SAFETY: as above.
        if unsafe { libc::getpid() } != parent {
            // In the child, give its new worker time to look at this thread's batch.
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    queue_logging(3);
    let deadline = Instant::now() + POLL_DEADLINE;
    let pid = loop {
        let pid = FORKED.load(Ordering::Relaxed);
        if pid != 0 {
            break pid;
        }
        assert!(Instant::now() < deadline, "the forking callback never ran");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            break;
        }
        if Instant::now() > deadline + Duration::from_secs(20) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("fork child (callback forks) hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fork child (callback forks) failed: status {status:#x}"
    );
    rcu_barrier();
    assert_eq!(logged(), [1, 2, 3], "parent");
}

#[test]
fn worker_child() {
    match child_case().as_deref() {
        Some("fresh_start_poll") => child_fresh_start_poll(),
        Some("fork_start_poll") => child_fork_start_poll(),
        Some("no_thread_start_poll") => child_no_thread_start_poll(),
        Some("no_thread_barrier") => child_no_thread_barrier(),
        Some("no_thread_barrier_no_memory") => child_no_thread_barrier_no_memory(),
        Some("fork_waiters") => child_fork_resets_waiters(),
        Some("callback_forks") => child_callback_forks(),
        Some("fork_held") => child_fork_held_callbacks(None, false),
        Some("fork_worker_held") => child_fork_held_callbacks(None, true),
        // The worker can start in the child, the list's invoker cannot.
        Some("fork_held_no_invoker") => child_fork_held_callbacks(Some(1), false),
        // No thread at all: `rcu_barrier` drives everything.
        Some("fork_held_no_thread") => child_fork_held_callbacks(Some(0), false),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn expect_ok(case: &str) {
    let out = run_child("worker_child", case, &[], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "child case {case} failed:\n{}",
        stderr(&out)
    );
}

#[test]
fn start_poll_completes_in_a_fresh_process() {
    expect_ok("fresh_start_poll");
}

#[test]
fn start_poll_completes_in_a_fork_child() {
    expect_ok("fork_start_poll");
}

#[test]
fn start_poll_completes_when_no_thread_can_be_created() {
    expect_ok("no_thread_start_poll");
}

#[test]
fn rcu_barrier_returns_when_no_thread_can_be_created() {
    expect_ok("no_thread_barrier");
}

#[test]
fn rcu_barrier_returns_when_no_thread_and_no_memory() {
    let out = run_child(
        "worker_child",
        "no_thread_barrier_no_memory",
        &[],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "child case no_thread_barrier_no_memory failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}

#[test]
fn fork_child_does_not_count_the_parents_waiters() {
    expect_ok("fork_waiters");
}

#[test]
fn fork_child_runs_callbacks_the_parents_threads_held() {
    expect_ok("fork_held");
}

#[test]
fn callback_that_forks_keeps_its_invoker_role_in_the_child() {
    let out = run_child(
        "worker_child",
        "callback_forks",
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    // A callback thread that panics in the fork child (its batch taken from under it) would
    // not change the child's exit status: look for it.
    assert!(
        out.status.success() && !err.contains("panicked"),
        "child case callback_forks failed:\n{err}"
    );
}

#[test]
fn fork_child_runs_callbacks_the_parents_worker_held() {
    expect_ok("fork_worker_held");
}

#[test]
fn fork_child_keeps_callback_order_when_an_invoker_cannot_start() {
    expect_ok("fork_held_no_invoker");
}

#[test]
fn fork_child_runs_held_callbacks_when_no_thread_can_be_created() {
    expect_ok("fork_held_no_thread");
}
