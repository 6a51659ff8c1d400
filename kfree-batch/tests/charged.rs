//! `kfree_rcu_raw_charged`: objects owning heap buffers count against the pending cap with their
//! buffers, so a stalled grace period cannot pile buffers up past the cap. Runs in a child
//! process (process-wide configuration; peak RSS is the measurement).
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kfree_batch::{configure, kfree_rcu_raw_charged, kvfree_rcu_barrier, stats, Config};
use test_support::{child_case, run_child, stderr};

const CAP: usize = 8 << 20;
/// Peak RSS growth allowed on top of [`CAP`] (the batcher's pages, allocator slack).
const SLACK: usize = 16 << 20;
/// Buffers retired (16 KiB each: 64 MiB in all, eight times the cap).
const N: usize = 4096;
const BUF: usize = 16 << 10;
/// How long the reader holds its section at most.
const HOLD: Duration = Duration::from_secs(2);

fn stalled() {
    configure(Config {
        pending_cap: CAP,
        ..Config::default()
    })
    .expect("configure");
    let base = test_support::start_peak_rss();
    let done = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let g = rcu_core::rcu_read_lock();
            while !done.load(Ordering::Relaxed) && start.elapsed() < HOLD {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(g);
        });
        // Let the reader enter its section first (bounded: at most HOLD / 4).
        std::thread::sleep(HOLD / 4);
        for i in 0..N {
            let p = Box::into_raw(Box::new(vec![i as u8; BUF]));
            // SAFETY: from Box::into_raw, never published, retired once.
            unsafe {
                let owned = (*p).capacity();
                kfree_rcu_raw_charged(p, owned);
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    let growth = test_support::peak_rss().saturating_sub(base);
    kvfree_rcu_barrier();
    let s = stats();
    println!(
        "charged retires: peak RSS growth {} KiB, peak pending {} KiB (cap {} KiB), \
         fallback_sync {}",
        growth >> 10,
        s.peak_pending_bytes >> 10,
        CAP >> 10,
        s.fallback_sync
    );
    assert_eq!(s.queued, s.freed);
    assert!(s.peak_pending_bytes as usize <= CAP, "{s:?}");
    // AddressSanitizer's quarantine keeps freed heap memory resident: the RSS bound holds only
    // without it.
    if !cfg!(rcu_sanitize) {
        assert!(
            growth <= CAP + SLACK,
            "peak RSS grew by {} KiB with a stalled reader (bound {} KiB)",
            growth >> 10,
            (CAP + SLACK) >> 10
        );
    }
}

#[test]
fn charged_child() {
    if let Some(case) = child_case() {
        match case.as_str() {
            "stalled" => stalled(),
            other => panic!("unknown case {other}"),
        }
    }
}

#[test]
fn owned_buffers_count_against_the_cap() {
    let out = run_child("charged_child", "stalled", &[], Duration::from_secs(120));
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stalled case failed\nstdout:\n{so}\nstderr:\n{}",
        stderr(&out)
    );
    println!("{so}");
}
