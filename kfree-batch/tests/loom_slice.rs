//! Loom model of taking a thread's budget slice back (run with `RUSTFLAGS="--cfg rcu_loom"`,
//! `LOOM_MAX_PREEMPTIONS=2`, `--release`).
//!
//! The owner spends from its slice with a plain load and store inside read-side critical
//! sections, then gives the rest back at exit; a reclaimer claims the slice, waits for a grace
//! period and takes what is left. Every byte of the slice must be counted exactly once: spent,
//! given back by the owner, or taken by the reclaimer. A second model skips the grace period
//! and must fail (the owner's store after the reclaimer's swap counts bytes twice), which shows
//! that the first one can.
#![cfg(rcu_loom)]

use kfree_batch::raw::Slice;
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::Domain;
use rcu_core::Mode;

const SLICE: usize = 16;
const OBJ: usize = 8;

/// Runs the owner (two appending puts, then exit) against a reclaimer that waits for a grace
/// period between claim and take when `wait`; checks that the bytes add up.
fn model(wait: bool) {
    loom::model(move || {
        let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
        let slice = Arc::new(Slice::new());
        slice.add(SLICE);
        let owner = {
            let slice = slice.clone();
            thread::spawn(move || {
                let rec = dom.register();
                let mut spent = 0;
                for _ in 0..2 {
                    dom.read_lock(rec);
                    let left = slice.left();
                    if left >= OBJ {
                        slice.spend(left, OBJ);
                        spent += OBJ;
                    }
                    dom.read_unlock(rec);
                }
                let given_back = slice.take_own();
                dom.unregister(rec);
                spent + given_back
            })
        };
        let taken = if slice.claim(1) {
            if wait {
                let s = dom.get_state();
                dom.wait_for(s, false);
            }
            slice.take_claimed(1)
        } else {
            0
        };
        let owner_side = owner.join().unwrap();
        assert_eq!(
            owner_side + taken,
            SLICE,
            "slice bytes counted twice or lost (owner {owner_side}, reclaimer {taken})"
        );
        assert!(!slice.is_claimed(), "the claim was not released");
    });
}

#[test]
fn reclaimer_and_owner_count_each_byte_once() {
    model(true);
}

#[test]
#[should_panic(expected = "counted twice or lost")]
fn reclaim_without_a_grace_period_counts_bytes_twice() {
    model(false);
}
