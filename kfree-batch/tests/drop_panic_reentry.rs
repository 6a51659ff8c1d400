//! Destructors that panic after re-entering the batcher (retiring again, or calling
//! `kvfree_rcu_barrier`, which panics there, or inside a read-side critical section), and very
//! many panicking destructors: the batcher neither hangs nor aborts, every object is dropped
//! once and the counters stay exact.
//!
//! Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Reenter(u64);
impl Drop for Reenter {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        match self.0 % 4 {
            0 => {
                kfree_rcu(Box::new(Reenter(2)));
                panic!("after a retire");
            }
            1 => kvfree_rcu_barrier(), // panics: a barrier inside a free
            2 => panic!("plain"),
            _ => {
                // The guard ends the section as the panic unwinds.
                let _g = rcu_core::rcu_read_lock();
                kfree_rcu(Box::new(Reenter(2)));
                panic!("inside a read-side critical section");
            }
        }
    }
}

const N: u64 = 100_000;

#[test]
fn panicking_destructors_that_reenter_do_not_hang_or_drift() {
    test_support::isolated(
        "panicking_destructors_that_reenter_do_not_hang_or_drift",
        "reenter",
        Duration::from_secs(120),
        || {
            // Silence the hook: the batcher's own report line per panic still goes out.
            std::panic::set_hook(Box::new(|_| {}));
            for i in 0..N {
                kfree_rcu(Box::new(Reenter(i)));
            }
            for _ in 0..3 {
                kvfree_rcu_barrier();
            }
            // Every `0` and `3` retires one more object: N + N/2 drops.
            let d = DROPPED.load(Ordering::Relaxed);
            assert_eq!(d, N + N / 2, "objects dropped");
            // No section was left open by a panic: a grace period still completes.
            rcu_core::synchronize_rcu();
            let s = kfree_batch::stats();
            assert_eq!(
                s.freed, s.queued,
                "every retired object counted freed: {s:?}"
            );
        },
    );
}
