//! Lifecycle: threads that exit with objects in flight lose nothing; a partially filled block
//! is freed after the drain delay without any barrier; the block layout constants hold.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};
use test_support::{child_case, run_child, stderr};

static DROPS_EXIT: AtomicU64 = AtomicU64::new(0);
static DROPS_DRAIN: AtomicU64 = AtomicU64::new(0);

struct CountOnDrop(&'static AtomicU64, #[allow(dead_code)] [u64; 3]);
impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn exiting_threads_lose_nothing() {
    let per_thread = 1234u64; // not a multiple of the block capacity: partial blocks in flight
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    kfree_rcu(Box::new(CountOnDrop(&DROPS_EXIT, [t, i, 0])));
                }
                // exits at once, with its front block partially filled
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    kvfree_rcu_barrier();
    assert_eq!(DROPS_EXIT.load(Ordering::Relaxed), 8 * per_thread);
}

#[test]
fn partial_block_drains_after_the_delay_without_a_barrier() {
    let n = 7u64;
    // Retire from a thread that stays alive and idle, so only the worker's drain can free them.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        for i in 0..n {
            kfree_rcu(Box::new(CountOnDrop(&DROPS_DRAIN, [i; 3])));
        }
        rx.recv().unwrap();
    });
    let delay = kfree_batch::config().drain_delay;
    let start = Instant::now();
    while DROPS_DRAIN.load(Ordering::Relaxed) < n {
        assert!(
            start.elapsed() < delay * 50 + Duration::from_secs(5),
            "partial block not drained: {} of {n} freed after {:?} (drain delay {delay:?})",
            DROPS_DRAIN.load(Ordering::Relaxed),
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "partial block drained after {:?} (drain delay {delay:?})",
        start.elapsed()
    );
    tx.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn block_capacity_is_about_500_per_page() {
    assert!(
        (500..=511).contains(&kfree_batch::BLOCK_CAPACITY),
        "{}",
        kfree_batch::BLOCK_CAPACITY
    );
    const { assert!(kfree_batch::PARK_SLOTS >= 64) };
}

static DROPS_KINDS: AtomicU64 = AtomicU64::new(0);

/// A counted object of `N` words (one kind per `N`).
struct Kind<const N: usize>(#[allow(dead_code)] [u64; N]);
impl<const N: usize> Drop for Kind<N> {
    fn drop(&mut self) {
        DROPS_KINDS.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_thread_rotating_through_more_kinds_than_channels_keeps_blocks_full() {
    // `blocks_freed` is process-wide, and the other tests of this binary steal this thread's
    // partial blocks with their barriers: counted in the same process, the figure depends on
    // how the test threads interleave. The workload runs alone in a child process.
    if child_case().as_deref() == Some("rotating") {
        rotating_kinds_child();
        return;
    }
    let out = run_child(
        "a_thread_rotating_through_more_kinds_than_channels_keeps_blocks_full",
        "rotating",
        &[],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "child failed:\n{}", stderr(&out));
}

fn rotating_kinds_child() {
    // Six kinds in turn on one thread (a front has four channels): the extra kinds must not
    // hand over a block per object, and nothing is lost.
    let n = 60_000u64;
    let before = kfree_batch::stats();
    let d0 = DROPS_KINDS.load(Ordering::Relaxed);
    std::thread::spawn(move || {
        for i in 0..n {
            match i % 6 {
                0 => kfree_rcu(Box::new(Kind([i; 1]))),
                1 => kfree_rcu(Box::new(Kind([i; 2]))),
                2 => kfree_rcu(Box::new(Kind([i; 3]))),
                3 => kfree_rcu(Box::new(Kind([i; 4]))),
                4 => kfree_rcu(Box::new(Kind([i; 5]))),
                _ => kfree_rcu(Box::new(Kind([i; 6]))),
            }
        }
    })
    .join()
    .unwrap();
    kvfree_rcu_barrier();
    let after = kfree_batch::stats();
    assert_eq!(DROPS_KINDS.load(Ordering::Relaxed) - d0, n, "objects lost");
    let blocks = after.blocks_freed - before.blocks_freed;
    // A block per object (the defect this guards: 36112 blocks for 60000 objects) stays far
    // above this bound; 20 objects per block on average stays below it, with room for the
    // worker's drain of partial blocks when the thread is descheduled.
    assert!(
        blocks * 20 < n,
        "{blocks} blocks for {n} objects: blocks are handed over nearly empty"
    );
}
