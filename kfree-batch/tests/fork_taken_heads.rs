//! A `fork()` while the batcher's worker is freeing head-linked objects (it took them off the
//! head stack and runs their destructors): the objects it had taken are not in the child, and the
//! child's worker must still go idle once everything it has is freed.
//!
//! The case runs in a child process with a deadline checked from outside, and forks from there;
//! the forked child reports with `write(2)` and its exit code.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kfree_batch::{
    impl_has_rcu_head, kfree_rcu, kfree_rcu_head, kvfree_rcu_barrier, RcuHead, PARK_SLOTS,
};
use test_support::{child_case, in_fork_child, run_child, say, stderr};

/// How long a fork child may take.
const FORK_DEADLINE: Duration = Duration::from_secs(30);

/// Set while a `Slow` destructor runs (on the worker's thread).
static IN_DROP: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Slow {
    _v: [u64; 4],
    head: RcuHead,
}
impl_has_rcu_head!(Slow, head);
impl Drop for Slow {
    fn drop(&mut self) {
        IN_DROP.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_millis(300));
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sleeps in its destructor when `slow` (on the worker's thread: a spilled object).
struct MaybeSlow {
    slow: bool,
    _v: [u64; 4],
}
impl Drop for MaybeSlow {
    fn drop(&mut self) {
        if self.slow {
            IN_DROP.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(300));
        }
        DROPPED.fetch_add(1, Ordering::Relaxed);
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

/// The child must go idle: measures its CPU time over one second with nothing pending.
fn child_goes_idle() -> i32 {
    slab_backend::set_memory_limit(None);
    // Starts the child's worker and lets it finish what the child has.
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

/// As [`case_fork_while_worker_frees_heads`], with spilled objects (retired inside a reader
/// past the park slots with no page): the worker swapped them off the spill stack and runs
/// their destructors when the process forks.
fn case_fork_while_worker_frees_spill() {
    kfree_rcu(Box::new(MaybeSlow {
        slow: false,
        _v: [0; 4],
    }));
    kvfree_rcu_barrier();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    {
        let _g = rcu_core::rcu_read_lock();
        for i in 0..PARK_SLOTS + 4 {
            kfree_rcu(Box::new(MaybeSlow {
                slow: i >= PARK_SLOTS,
                _v: [i as u64; 4],
            }));
        }
    }
    assert!(kfree_batch::stats().spilled >= 4, "nothing spilled");
    let t0 = Instant::now();
    while !IN_DROP.load(Ordering::Acquire) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the worker never freed a spill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    in_fork_child(
        "worker freeing spilled objects",
        FORK_DEADLINE,
        child_goes_idle,
    );
    slab_backend::set_memory_limit(None);
    kvfree_rcu_barrier();
}

fn case_fork_while_worker_frees_heads() {
    // Creates the batcher; then no page can be had, so head-linked retires go on the head stack.
    kfree_rcu(Box::new([0u64; 4]));
    kvfree_rcu_barrier();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    for i in 0..4u64 {
        kfree_rcu_head(Box::new(Slow {
            _v: [i; 4],
            head: RcuHead::new(),
        }));
    }
    // The worker takes them after a grace period and runs their (slow) destructors.
    let t0 = Instant::now();
    while !IN_DROP.load(Ordering::Acquire) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the worker never freed a head"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    in_fork_child("worker freeing heads", FORK_DEADLINE, child_goes_idle);
    slab_backend::set_memory_limit(None);
    kvfree_rcu_barrier();
}

#[test]
fn fork_child() {
    match child_case().as_deref() {
        Some("taken_heads") => case_fork_while_worker_frees_heads(),
        Some("taken_spill") => case_fork_while_worker_frees_spill(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn fork_while_the_worker_frees_heads_leaves_an_idle_child() {
    let out = run_child("fork_child", "taken_heads", &[], Duration::from_secs(120));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case taken_heads failed:\n{all}");
}

#[test]
fn fork_while_the_worker_frees_spilled_objects_leaves_an_idle_child() {
    let out = run_child("fork_child", "taken_spill", &[], Duration::from_secs(120));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case taken_spill failed:\n{all}");
}
