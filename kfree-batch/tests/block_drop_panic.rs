//! A destructor that panics in the middle of a batch of `kfree_rcu` boxes: the panic is
//! contained and reported, and every other object of the batch is still dropped and freed
//! (as a `Vec` drops the rest of its elements when one destructor panics).
//!
//! Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Bomb {
    id: u64,
    _pad: [u64; 3],
}
impl Drop for Bomb {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        if self.id % 100 == 50 {
            panic!("Bomb {} dropped", self.id);
        }
    }
}

const N: u64 = 1_000;

#[test]
fn a_panicking_destructor_does_not_leak_the_rest_of_its_batch() {
    test_support::isolated(
        "a_panicking_destructor_does_not_leak_the_rest_of_its_batch",
        "bomb",
        Duration::from_secs(60),
        || {
            // One thread, a few hundred objects per block: each batch holds panicking objects
            // in its middle.
            for id in 0..N {
                kfree_rcu(Box::new(Bomb { id, _pad: [id; 3] }));
            }
            // Whoever frees them (the worker, or this barrier's own pass), the panics are
            // contained there.
            let _ = std::panic::catch_unwind(kvfree_rcu_barrier);
            kvfree_rcu_barrier();
            assert_eq!(
                DROPPED.load(Ordering::Relaxed),
                N,
                "objects dropped: the rest of a batch after a panicking destructor leaked"
            );
            let s = kfree_batch::stats();
            assert_eq!(
                s.freed, s.queued,
                "every retired object counted as freed: {s:?}"
            );
        },
    );
}
