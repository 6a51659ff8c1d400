//! Where destructors run and what `kvfree_rcu_barrier` waits for: a barrier waits for the blocks
//! a retiring thread frees itself (ready-first reclaim, recycled blocks) and for the blocks an
//! exiting thread hands over; the shrinker never runs destructors on the allocating thread; a
//! destructor run while a thread recycles a block may retire into that thread's channels. Every
//! case runs in a child process (process-wide configuration, statistics and pinning) with a
//! deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier, stats, BLOCK_CAPACITY};
use test_support::{child_case, run_child, stderr};

/// Pins the calling thread to CPU 0, so that every hand-over goes to the same CPU slot.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only read and
    // write the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let r = libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "sched_setaffinity");
    }
}

static SLOW_DROPS: AtomicU64 = AtomicU64::new(0);
static SLOW_STARTED: AtomicBool = AtomicBool::new(false);
static BARRIER_RETURNED: AtomicBool = AtomicBool::new(false);

/// An object whose destructor, for the first one, takes a while (at most a second, or until the
/// barrier returned).
struct Slow {
    slow: bool,
    _pad: [u64; 3],
}
impl Drop for Slow {
    fn drop(&mut self) {
        if self.slow {
            SLOW_STARTED.store(true, Ordering::SeqCst);
            let t = Instant::now();
            while !BARRIER_RETURNED.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        SLOW_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pinned thread fills a block, waits for a grace period and fills a second one: handing the
/// second over frees the first (ready) on the same thread, whose first destructor is slow. A
/// barrier called meanwhile from another thread must return only after that block is freed.
fn case_slow_destructor_in_producer_reclaim() {
    let n = 2 * BLOCK_CAPACITY as u64;
    let producer = std::thread::spawn(move || {
        pin_to_cpu0();
        for i in 0..n {
            if i == BLOCK_CAPACITY as u64 {
                rcu_core::synchronize_rcu(); // the first block is ready from now on
            }
            kfree_rcu(Box::new(Slow {
                slow: i == 0,
                _pad: [i; 3],
            }));
        }
    });
    let t = Instant::now();
    while !SLOW_STARTED.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "setup: the first block was not freed by its producer"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    kvfree_rcu_barrier();
    let dropped = SLOW_DROPS.load(Ordering::SeqCst);
    BARRIER_RETURNED.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    assert_eq!(
        dropped, n,
        "kvfree_rcu_barrier returned with {dropped} of {n} objects dropped"
    );
}

static EXIT_DROPS: AtomicU64 = AtomicU64::new(0);

struct Counted(#[allow(dead_code)] [u64; 3]);
impl Drop for Counted {
    fn drop(&mut self) {
        EXIT_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Scoped threads retire a partial block each and exit: their thread-local exit hooks hand the
/// blocks over after the scope has returned, while the barrier runs. Bounded in rounds and time.
fn case_exiting_threads_during_barrier() {
    let (threads, per_thread) = (4u64, 100u64);
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < 2_000 && start.elapsed() < Duration::from_secs(20) {
        let base = EXIT_DROPS.load(Ordering::SeqCst);
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    for i in 0..per_thread {
                        kfree_rcu(Box::new(Counted([t, i, 0])));
                    }
                });
            }
        });
        kvfree_rcu_barrier();
        let dropped = EXIT_DROPS.load(Ordering::SeqCst) - base;
        assert_eq!(
            dropped,
            threads * per_thread,
            "round {rounds}: kvfree_rcu_barrier returned with {dropped} of {} objects dropped",
            threads * per_thread
        );
        rounds += 1;
    }
    println!("exiting threads: {rounds} rounds");
}

static SYNC_DROPS: AtomicU64 = AtomicU64::new(0);
static DROPS_IN_READER: AtomicU64 = AtomicU64::new(0);

/// A destructor that waits for a grace period (legal where destructors are documented to run).
struct Syncs(#[allow(dead_code)] [u64; 3]);
impl Drop for Syncs {
    fn drop(&mut self) {
        if rcu_core::rcu_read_lock_held() {
            DROPS_IN_READER.fetch_add(1, Ordering::SeqCst);
        }
        rcu_core::synchronize_rcu();
        SYNC_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Ready blocks of objects whose destructor calls `synchronize_rcu` wait in a slot; then a page
/// allocation inside a read-side critical section fails against a zero memory limit and runs the
/// shrinkers on that thread. The batcher's shrinker must not run those destructors there.
fn case_shrinker_in_reader() {
    pin_to_cpu0();
    let n = 3 * BLOCK_CAPACITY as u64;
    for i in 0..n {
        kfree_rcu(Box::new(Syncs([i; 3])));
    }
    rcu_core::synchronize_rcu(); // the handed blocks are ready
    slab_backend::set_memory_limit(Some(0));
    {
        let _g = rcu_core::rcu_read_lock();
        let p = slab_backend::page::alloc_pages(1); // fails: runs the shrinkers here
        assert!(
            p.is_none(),
            "setup: the allocation over the limit succeeded"
        );
    }
    slab_backend::set_memory_limit(None);
    kvfree_rcu_barrier();
    let dropped = SYNC_DROPS.load(Ordering::SeqCst);
    let in_reader = DROPS_IN_READER.load(Ordering::SeqCst);
    assert_eq!(
        in_reader, 0,
        "{in_reader} destructors ran inside the allocating thread's read-side critical section"
    );
    assert_eq!(
        dropped, n,
        "{dropped} of {n} objects dropped after the barrier"
    );
}

static RETIRING_DROPS: AtomicU64 = AtomicU64::new(0);

/// No drop glue: retired through a recycling (`inline_free`) channel.
struct Plain(#[allow(dead_code)] [u64; 4]);

/// A destructor that retires a `Plain` (the first ten objects only: fewer than fill a block).
struct RetiresPlain([u64; 3]);
impl Drop for RetiresPlain {
    fn drop(&mut self) {
        if self.0[0] < 10 {
            kfree_rcu(Box::new(Plain([self.0[0]; 4])));
        }
        RETIRING_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pinned thread hands over a block of `Plain`, then a block of `RetiresPlain`; after a grace
/// period it fills a second block of `Plain`. Handing that over takes the first `Plain` block
/// back to recycle and frees the ready `RetiresPlain` block, whose destructors retire a few `Plain`
/// objects into the very channel the recycled block is for (opening a block there).
fn case_destructor_retires_into_recycled_channel() {
    let cap = BLOCK_CAPACITY as u64;
    let h = std::thread::spawn(move || {
        pin_to_cpu0();
        for i in 0..cap {
            kfree_rcu(Box::new(Plain([i; 4])));
        }
        for i in 0..cap {
            kfree_rcu(Box::new(RetiresPlain([i; 3])));
        }
        rcu_core::synchronize_rcu(); // both handed blocks are ready
        for i in 0..cap {
            kfree_rcu(Box::new(Plain([i; 4])));
        }
    });
    h.join().expect("the retiring thread panicked");
    kvfree_rcu_barrier();
    let s = stats();
    println!("retiring destructors: {s:?}");
    assert_eq!(
        RETIRING_DROPS.load(Ordering::SeqCst),
        cap,
        "destructors lost"
    );
    assert_eq!(
        s.queued, s.freed,
        "objects retired and not freed after the barrier"
    );
}

static BARRIER_DROPS: AtomicU64 = AtomicU64::new(0);

/// A destructor that calls `kvfree_rcu_barrier` (the first object only).
struct CallsBarrier(u64);
impl Drop for CallsBarrier {
    fn drop(&mut self) {
        BARRIER_DROPS.fetch_add(1, Ordering::SeqCst);
        if self.0 == 0 {
            kvfree_rcu_barrier();
        }
    }
}

/// As in the first case, a pinned thread's second hand-over frees its first block itself; the
/// first destructor calls `kvfree_rcu_barrier`, which would wait for the very free running it:
/// it panics (the misuse is reported) instead of hanging.
fn case_barrier_in_reclaim_destructor() {
    let n = 2 * BLOCK_CAPACITY as u64;
    let h = std::thread::spawn(move || {
        pin_to_cpu0();
        for i in 0..n {
            if i == BLOCK_CAPACITY as u64 {
                rcu_core::synchronize_rcu();
            }
            kfree_rcu(Box::new(CallsBarrier(i)));
        }
    });
    h.join().unwrap();
    assert!(
        BARRIER_DROPS.load(Ordering::SeqCst) >= 1,
        "setup: the first block was not freed by its producer"
    );
}

#[test]
fn barrier_child() {
    match child_case().as_deref() {
        Some("slow_reclaim") => case_slow_destructor_in_producer_reclaim(),
        Some("exiting_threads") => case_exiting_threads_during_barrier(),
        Some("shrinker_in_reader") => case_shrinker_in_reader(),
        Some("retire_into_recycled") => case_destructor_retires_into_recycled_channel(),
        Some("barrier_in_reclaim") => case_barrier_in_reclaim_destructor(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

/// Runs `case` with the drain delay at a minute (handed blocks stay in their slots for their
/// producers) and checks it succeeded.
fn expect_ok(case: &str) {
    let out = run_child(
        "barrier_child",
        case,
        &[("RCU_KIT_KFREE_DRAIN_MS", "60000")],
        Duration::from_secs(120),
    );
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case {case} failed:\n{all}");
    assert!(
        !all.contains("destructor panicked"),
        "case {case}: a destructor panicked:\n{all}"
    );
}

#[test]
fn barrier_waits_for_a_producers_reclaim_in_flight() {
    expect_ok("slow_reclaim");
}

#[test]
fn barrier_waits_for_blocks_handed_over_by_exiting_threads() {
    expect_ok("exiting_threads");
}

#[test]
fn shrinker_runs_no_destructor_on_the_allocating_thread() {
    expect_ok("shrinker_in_reader");
}

#[test]
fn destructor_may_retire_into_the_channel_being_recycled() {
    expect_ok("retire_into_recycled");
}

#[test]
fn barrier_from_a_destructor_in_a_producers_reclaim_panics() {
    let out = run_child(
        "barrier_child",
        "barrier_in_reclaim",
        &[("RCU_KIT_KFREE_DRAIN_MS", "60000")],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("kvfree_rcu_barrier() called from the destructor"),
        "no misuse reported:\n{err}"
    );
}
