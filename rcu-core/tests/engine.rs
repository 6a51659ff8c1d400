//! Engine behaviour: polled grace periods, call_rcu/rcu_barrier, stall reports, fork() children
//! and readers in signal handlers (a thread that exits inside a critical section:
//! `exit_in_reader.rs`). Cases that change process-wide settings or fork run in a child process
//! with a deadline.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcu_core::*;
use test_support::{child_case, run_child, stderr};

#[test]
fn state_before_synchronize_polls_true_after() {
    for _ in 0..100 {
        let s = get_state_synchronize_rcu();
        synchronize_rcu();
        assert!(poll_state_synchronize_rcu(s));
        let s = get_state_synchronize_rcu();
        synchronize_rcu_expedited();
        assert!(poll_state_synchronize_rcu(s));
    }
}

#[test]
fn start_poll_completes_without_waiters() {
    let s = start_poll_synchronize_rcu();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !poll_state_synchronize_rcu(s) {
        assert!(
            Instant::now() < deadline,
            "polled grace period never completed"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let s2 = get_state_synchronize_rcu();
    cond_synchronize_rcu(s2);
    assert!(poll_state_synchronize_rcu(s2));
}

#[test]
fn poll_is_false_while_a_reader_blocks() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    rx.recv().unwrap();
    let s = start_poll_synchronize_rcu();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !poll_state_synchronize_rcu(s),
        "grace period ended while a pre-existing reader ran"
    );
    go_tx.send(()).unwrap();
    t.join().unwrap();
    cond_synchronize_rcu(s);
    assert!(poll_state_synchronize_rcu(s));
}

#[test]
fn call_rcu_runs_every_callback_before_barrier_returns() {
    let n = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let n = n.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    let n = n.clone();
                    let big = [i; 8]; // too big for inline storage: the boxed path
                    if i % 2 == 0 {
                        call_rcu(move || {
                            n.fetch_add(1, Ordering::Relaxed);
                        });
                    } else {
                        call_rcu(move || {
                            std::hint::black_box(big);
                            n.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rcu_barrier();
    assert_eq!(n.load(Ordering::Relaxed), 40_000);
    let st = stats();
    assert!(st.callbacks_invoked >= 40_000, "{st:?}");
}

/// Binds the calling thread to `cpu` if allowed; returns whether it did.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: plain-data cpu_set_t; CPU_SET within bounds (cpu < 64); the call reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[test]
fn callbacks_run_in_order_on_the_invoker_of_the_callers_cpu() {
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    for cpu in 0..cpus {
        let seen = Arc::new(Mutex::new(Vec::<(u64, usize, String)>::new()));
        let h = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                if !pin_to(cpu) {
                    return false;
                }
                for i in 0..3000u64 {
                    let seen = seen.clone();
                    call_rcu(move || {
                        let name = std::thread::current().name().unwrap_or("").to_owned();
                        seen.lock()
                            .unwrap()
                            .push((i, rcu_core::cpu::current_cpu(), name));
                    });
                }
                true
            })
        };
        if !h.join().unwrap() {
            continue; // not allowed to run there (cpuset)
        }
        rcu_barrier();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3000);
        // A caller that finds its CPU's list locked (the worker harvesting it) uses another
        // CPU's list: those callbacks run on that list's invoker. Within one list, queue order.
        let mut names: Vec<&str> = seen.iter().map(|s| s.2.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            assert!(name.starts_with("rcu-cb-inv/"), "a callback ran on {name}");
            let order: Vec<u64> = seen.iter().filter(|s| s.2 == name).map(|s| s.0).collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "callbacks of one list ran out of order on {name}"
            );
        }
        let want = format!("rcu-cb-inv/{cpu}");
        let home = seen.iter().filter(|s| s.2 == want).count();
        assert!(
            home * 10 >= seen.len() * 9,
            "only {home} of 3000 ran on {want}"
        );
        for (_, ran_on, name) in seen.iter() {
            let bound: usize = name["rcu-cb-inv/".len()..].parse().unwrap();
            assert_eq!(*ran_on, bound, "invoker {name} ran on CPU {ran_on}");
        }
    }
}

#[test]
fn barrier_waits_for_callbacks_queued_inside_readers() {
    let done = Arc::new(AtomicBool::new(false));
    {
        let _g = rcu_read_lock();
        let d = done.clone();
        call_rcu(move || d.store(true, Ordering::Relaxed)); // allowed inside a reader
        assert!(
            !done.load(Ordering::Relaxed),
            "callback ran inside the caller's critical section"
        );
    }
    rcu_barrier();
    assert!(done.load(Ordering::Relaxed));
}

#[test]
fn callback_panic_does_not_stop_the_worker() {
    call_rcu(|| panic!("deliberate callback panic (test)"));
    let ok = Arc::new(AtomicBool::new(false));
    let o = ok.clone();
    call_rcu(move || o.store(true, Ordering::Relaxed));
    rcu_barrier();
    assert!(ok.load(Ordering::Relaxed));
}

#[test]
fn rcu_barrier_idle_returns() {
    call_rcu(|| ());
    rcu_barrier();
    let t = Instant::now();
    for _ in 0..100 {
        rcu_barrier();
    }
    // Not a timing assertion: a hang would show here; the figure is in the benchmarks.
    eprintln!("100 idle rcu_barrier calls: {:?}", t.elapsed());
}

#[test]
fn stats_and_mode() {
    synchronize_rcu();
    let st = stats();
    assert!(st.grace_periods >= 1);
    assert!(st.heavy_barriers >= st.grace_periods, "{st:?}");
    let want = if std::env::var_os("RCU_KIT_NO_MEMBARRIER").is_some_and(|v| v == "1") {
        Mode::Fences
    } else {
        Mode::Membarrier
    };
    assert_eq!(st.mode, want);
}

// ---- child-process cases -------------------------------------------------------------------

static REPORTS: Mutex<Vec<StallReport>> = Mutex::new(Vec::new());
fn record_report(r: &StallReport) {
    REPORTS.lock().unwrap().push(r.clone());
}

fn child_stall() {
    set_stall_timeout(Duration::from_millis(100));
    set_stall_hook(Some(record_report));
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::Builder::new()
        .name("stall-holder".into())
        .spawn(move || {
            let _g = rcu_read_lock();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(600));
        })
        .unwrap();
    rx.recv().unwrap();
    synchronize_rcu(); // returns once the holder leaves, after reporting it
    t.join().unwrap();
    let reports = REPORTS.lock().unwrap();
    let r = reports
        .iter()
        .find(|r| r.kind == StallKind::ReaderStall)
        .expect("a stall report");
    assert_eq!(r.thread_name, "stall-holder");
    assert!(r.duration >= Duration::from_millis(100), "{r:?}");
    assert!(r.tid != 0);
    eprintln!("{r}");
}

fn child_fork() {
    // A thread of the parent holds a guard across the fork; the child has no such thread and
    // must still complete grace periods, run callbacks (worker restarted) and barriers.
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    rx.recv().unwrap();
    let ran = Arc::new(AtomicU64::new(0));
    let r = ran.clone();
    call_rcu(move || {
        r.fetch_add(1, Ordering::Relaxed);
    });
    // SAFETY: fork in a test child; the forked child only uses the kit and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        synchronize_rcu();
        synchronize_rcu_expedited();
        let r2 = ran.clone();
        call_rcu(move || {
            r2.fetch_add(10, Ordering::Relaxed);
        });
        rcu_barrier();
        let v = ran.load(Ordering::Relaxed);
        // The parent's callback (copied) and ours both ran in the child.
        let code = if v == 11 { 0 } else { 3 };
        // SAFETY: _exit is async-signal-safe and skips atexit handlers of the test harness.
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
            panic!("fork child hung in a grace period");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(libc::WIFEXITED(status), "fork child died: status {status}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "fork child failed its checks");
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    rcu_barrier();
    assert_eq!(
        ran.load(Ordering::Relaxed),
        1,
        "parent ran its callback once"
    );
}

static CELL: std::sync::OnceLock<RcuCell<[u64; 4]>> = std::sync::OnceLock::new();
static HANDLED: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: the read side writes only this thread's record.
    let g = rcu_read_lock();
    if let Some(v) = CELL.get().and_then(|c| c.read(&g)) {
        if v[1] != v[0] * 2 || v[2] != v[0] * 3 || v[3] != v[0] * 4 {
            BAD.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(g);
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

fn child_signal() {
    CELL.set(RcuCell::new(Some(Box::new([1, 2, 3, 4]))))
        .ok()
        .unwrap();
    // SAFETY: installing a handler that only uses async-signal-safe operations.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let _ = rcu_read_lock(); // register outside the handler
                                 // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) {
            let g = rcu_read_lock(); // the handler interrupts inside and outside sections
            if let Some(v) = CELL.get().unwrap().read(&g) {
                n = n.wrapping_add(v[0]);
            }
            drop(g);
        }
        n
    });
    let tid = rx.recv().unwrap() as libc::pthread_t;
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 2u64;
            while !stop.load(Ordering::Relaxed) {
                CELL.get()
                    .unwrap()
                    .replace(Some(Box::new([i, 2 * i, 3 * i, 4 * i])));
                if i % 64 == 0 {
                    synchronize_rcu();
                }
                i += 1;
            }
        })
    };
    for _ in 0..2000 {
        // SAFETY: the reader thread is alive until `stop` is set.
        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_micros(200));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while HANDLED.load(Ordering::Relaxed) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    writer.join().unwrap();
    rcu_barrier();
    let handled = HANDLED.load(Ordering::Relaxed);
    eprintln!("signal handler readers: {handled}");
    assert!(handled >= 100, "signals handled: {handled}");
    assert_eq!(
        BAD.load(Ordering::Relaxed),
        0,
        "handler saw a torn or freed value"
    );
}

/// Address space nearly full and a reader holding grace periods off: `call_rcu` cannot grow its
/// lists, so callers fall back to waiting for a grace period and running the callback
/// themselves; nothing aborts, every callback runs exactly once.
fn child_oom() {
    let ran = Arc::new(AtomicU64::new(0));
    call_rcu(|| ());
    rcu_barrier(); // worker started before the limit
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    });
    rx.recv().unwrap();
    test_support::set_rlimit_as(test_support::vm_size() + (1 << 20)).expect("setrlimit");
    // More callbacks (32 B each) than a glibc thread arena's 64 MiB reservation holds, while no
    // grace period can end: queueing them all needs new mappings, which RLIMIT_AS refuses.
    let n = 4_000_000u64;
    for _ in 0..n {
        let r = ran.clone();
        call_rcu(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
    }
    reader.join().unwrap();
    rcu_barrier();
    let st = stats();
    eprintln!("oom: {st:?}");
    assert_eq!(
        ran.load(Ordering::Relaxed),
        n,
        "callbacks lost or run twice"
    );
    assert!(
        st.callbacks_inline_fallback > 0,
        "no fallback taken: {st:?}"
    );
}

#[test]
fn engine_child() {
    match child_case().as_deref() {
        Some("oom") => child_oom(),
        Some("stall") => child_stall(),
        Some("fork") => child_fork(),
        Some("signal") => child_signal(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn expect_ok(case: &str) {
    let out = run_child("engine_child", case, &[], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "child case {case} failed:\n{}",
        stderr(&out)
    );
}

#[test]
fn stalled_reader_is_reported_with_name_and_duration() {
    expect_ok("stall");
}

#[test]
fn fork_child_keeps_working() {
    expect_ok("fork");
}

#[test]
fn readers_in_signal_handlers() {
    expect_ok("signal");
}

#[test]
fn call_rcu_under_tight_rlimit_as_falls_back_without_abort() {
    if cfg!(rcu_sanitize) {
        // AddressSanitizer's own allocator needs address space RLIMIT_AS takes away (it aborts in
        // its InternalMmapVector); the case runs in the plain and no-membarrier test jobs.
        eprintln!("skipped under AddressSanitizer: RLIMIT_AS starves the sanitizer runtime");
        return;
    }
    expect_ok("oom");
}
