//! 1000 short-lived reader threads: records are reused (the registry does not grow with the
//! number of threads ever seen) and a grace period afterwards completes promptly.
//! Alone in its test binary so the record count is not disturbed by other tests.
#![cfg(not(rcu_loom))]

use std::time::{Duration, Instant};

#[test]
fn thousand_short_lived_threads_then_prompt_gp() {
    const WAVE: usize = 8;
    let mut spawned = 0;
    while spawned < 1000 {
        let wave: Vec<_> = (0..WAVE)
            .map(|i| {
                std::thread::spawn(move || {
                    let g = rcu_core::rcu_read_lock();
                    std::hint::black_box(i);
                    drop(g);
                    let _g2 = rcu_core::rcu_read_lock();
                })
            })
            .collect();
        for t in wave {
            t.join().unwrap();
        }
        spawned += WAVE;
    }
    let records = rcu_core::stats().reader_records;
    assert!(
        records <= 2 * WAVE + 2,
        "records not reused: {records} for {spawned} threads"
    );
    let t = Instant::now();
    rcu_core::synchronize_rcu();
    let took = t.elapsed();
    eprintln!("1000 threads: {records} records, grace period after churn took {took:?}");
    // A generous bound that only fails on a hang or on a stale record blocking the GP (stall
    // timeout is 10 s by default).
    assert!(
        took < Duration::from_secs(5),
        "grace period after thread churn took {took:?}"
    );
}
