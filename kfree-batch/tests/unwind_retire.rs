//! `kfree_rcu` called from a destructor that runs while its thread unwinds from a panic, with
//! ready blocks of objects whose destructors panic: a retire may free them inline there, during
//! the unwind; their panics are contained before they leave the free, so nothing aborts.
//!
//! Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Bomb(#[allow(dead_code)] [u64; 4]);
impl Drop for Bomb {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        panic!("Bomb dropped");
    }
}

/// Retires `N` bombs from its destructor.
struct RetireOnDrop;
impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        for i in 0..N {
            kfree_rcu(Box::new(Bomb([i; 4])));
        }
    }
}

const N: u64 = 20_000;

#[test]
fn retiring_during_an_unwind_does_not_abort() {
    test_support::isolated(
        "retiring_during_an_unwind_does_not_abort",
        "unwind-retire",
        Duration::from_secs(60),
        || {
            std::panic::set_hook(Box::new(|_| {}));
            for round in 0..5 {
                // Ready blocks of bombs in this thread's slot.
                for i in 0..N {
                    kfree_rcu(Box::new(Bomb([i; 4])));
                }
                rcu_core::synchronize_rcu();
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let _g = RetireOnDrop;
                    panic!("unwinding, round {round}");
                }));
                assert!(r.is_err());
            }
            kvfree_rcu_barrier();
            assert_eq!(
                DROPPED.load(Ordering::Relaxed),
                5 * 2 * N,
                "objects dropped"
            );
        },
    );
}
