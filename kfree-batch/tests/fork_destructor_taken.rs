//! A `fork()` from a destructor that a thread's own park drain runs (a supported fork point:
//! the child goes on with the drain), while the batcher's worker frees head-linked objects it
//! took off the head stack: the objects the worker had taken are not in the child, and the
//! child's worker must still go idle once everything it has is freed.
//!
//! The case runs in a child process with a deadline checked from outside; the forked child's
//! parent (inside the destructor) waits for it with a deadline as well.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfree_batch::{
    impl_has_rcu_head, kfree_rcu, kfree_rcu_head, kvfree_rcu_barrier, RcuHead, PARK_SLOTS,
};
use test_support::{child_case, run_child, say, stderr, wait_forked, Forked};

/// Set while the worker runs a `Slow` destructor.
static IN_SLOW_DROP: AtomicBool = AtomicBool::new(false);
/// Set in the fork child (by the destructor that forked).
static IN_CHILD: AtomicBool = AtomicBool::new(false);
/// Whether a destructor forked already.
static FORKED: AtomicBool = AtomicBool::new(false);
/// The fork child's fate as seen by its parent: 0 unknown, 1 exited 0, 2 failed, 3 hung.
static CHILD_RESULT: AtomicI32 = AtomicI32::new(0);

/// Head-linked; its destructor (run by the worker) takes 300 ms.
struct Slow {
    _v: [u64; 4],
    head: RcuHead,
}
impl_has_rcu_head!(Slow, head);
impl Drop for Slow {
    fn drop(&mut self) {
        IN_SLOW_DROP.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Parked by thread B; the first one its own drain frees forks.
struct Forker(#[allow(dead_code)] [u64; 4]);
impl Drop for Forker {
    fn drop(&mut self) {
        if FORKED.swap(true, Ordering::Relaxed) {
            return;
        }
        // SAFETY: fork in a test child process; the forked child goes on on this thread and
        // leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            IN_CHILD.store(true, Ordering::Relaxed);
            return;
        }
        let result = match wait_forked(pid, Duration::from_secs(20)) {
            Forked::Ok => 1,
            Forked::Failed(_) => 2,
            Forked::Hung => 3,
        };
        CHILD_RESULT.store(result, Ordering::Relaxed);
    }
}

/// CPU time (user + system) this process used so far.
fn cpu_time() -> Duration {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// In the fork child, outside the drain: the child's worker must go idle.
fn child_goes_idle() -> i32 {
    slab_backend::set_memory_limit(None);
    kfree_rcu(Box::new([1u64; 4]));
    kvfree_rcu_barrier();
    std::thread::sleep(Duration::from_millis(200));
    let c0 = cpu_time();
    std::thread::sleep(Duration::from_millis(1000));
    let used = cpu_time() - c0;
    say(&format!(
        "fork child: {used:?} of CPU used in 1 s with nothing pending: {:?}\n",
        kfree_batch::stats()
    ));
    if used > Duration::from_millis(250) {
        say("fork child: the batcher's worker never goes idle (busy loop)\n");
        return 1;
    }
    0
}

fn case_fork_in_own_drain_while_worker_frees_heads() {
    kfree_rcu(Box::new([0u64; 4]));
    kvfree_rcu_barrier();
    let (ready, go) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let b = {
        let (ready, go) = (ready.clone(), go.clone());
        std::thread::spawn(move || {
            // B's front and park slots, before the page limit.
            kfree_rcu(Box::new([1u64; 4]));
            ready.store(true, Ordering::Release);
            let t0 = Instant::now();
            while !go.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // No page: these park in B's slots; when all are taken B waits for one grace
            // period and frees them itself (the first destructor forks).
            for i in 0..PARK_SLOTS + 1 {
                kfree_rcu(Box::new(Forker([i as u64; 4])));
                if IN_CHILD.load(Ordering::Relaxed) {
                    break;
                }
            }
            if IN_CHILD.load(Ordering::Relaxed) {
                // The fork child, on its only thread, outside the drain now.
                let code = child_goes_idle();
                // SAFETY: leaving the fork child.
                unsafe { libc::_exit(code) };
            }
        })
    };
    while !ready.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    // Head-linked (no page); the worker takes them all and frees them one by one.
    for i in 0..6 {
        kfree_rcu_head(Box::new(Slow {
            _v: [i; 4],
            head: RcuHead::new(),
        }));
    }
    let t0 = Instant::now();
    while !IN_SLOW_DROP.load(Ordering::Acquire) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the worker never freed a head-linked object"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    go.store(true, Ordering::Release);
    b.join().unwrap();
    slab_backend::set_memory_limit(None);
    match CHILD_RESULT.load(Ordering::Relaxed) {
        1 => {}
        0 => panic!("no destructor forked"),
        2 => panic!(
            "fork child (forked from an own park drain while the worker freed head-linked \
             objects) failed"
        ),
        _ => panic!("fork child (forked from an own park drain) hung"),
    }
    kvfree_rcu_barrier();
}

#[test]
fn fork_child() {
    match child_case().as_deref() {
        Some("own_drain_heads") => case_fork_in_own_drain_while_worker_frees_heads(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn fork_from_an_own_park_drain_while_the_worker_frees_heads_leaves_an_idle_child() {
    let out = run_child(
        "fork_child",
        "own_drain_heads",
        &[],
        Duration::from_secs(120),
    );
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case own_drain_heads failed:\n{all}");
}
