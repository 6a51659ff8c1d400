//! Concurrent synchronize_rcu callers share grace periods. Deterministic form: sixteen callers
//! arrive while one reader holds the grace period open; they must be served by at most three
//! grace periods (the one in progress, the one they all queued for, and one of slack). The
//! free-running ratio is a benchmark figure (`compare`), not asserted here.
//! Alone in its test binary so no other test adds grace periods.
#![cfg(not(rcu_loom))]

use std::sync::{Arc, Barrier};
use std::time::Duration;

#[test]
fn sixteen_concurrent_callers_share_grace_periods() {
    rcu_core::synchronize_rcu();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _g = rcu_core::rcu_read_lock();
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    rx.recv().unwrap();
    let before = rcu_core::stats().grace_periods;
    let barrier = Arc::new(Barrier::new(16));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                rcu_core::synchronize_rcu();
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
    reader.join().unwrap();
    let used = rcu_core::stats().grace_periods - before;
    eprintln!("16 concurrent synchronize_rcu calls used {used} grace periods");
    assert!(used >= 1);
    assert!(
        used <= 3,
        "16 callers used {used} grace periods (< 16/4 expected)"
    );
}
