//! Memory of a `SLAB_TYPESAFE_BY_RCU` cache while grace periods stall: slabs that became empty
//! wait for a grace period before they are unmapped, and a churn that empties and refills slabs
//! meanwhile must not map a new slab for every one of them. Runs in a child process (its peak
//! RSS and the page layer's counters are the measurement).
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use slab_backend::{memory_stats, KmemCache};
use test_support::{child_case, run_child, stderr};

/// A 4 KiB object: 16-page slabs of 15 objects.
struct Big {
    words: [u64; 512],
}

/// Objects allocated and freed per round: 12 slabs' worth, most of them emptied every round.
const SLABS_PER_ROUND: usize = 12;
/// Rounds at most (each empties about 10 slabs: 640 KiB).
const ROUNDS: usize = 300;
/// How long the reader holds its section at most (the grace-period stall).
const HOLD: Duration = Duration::from_secs(3);
/// How long the churn runs at most.
const MAX_RUN: Duration = Duration::from_secs(20);
/// Allowed growth of the page layer's peak use and of peak RSS over the start: the slabs of one
/// round, those the cache may keep waiting for a grace period, and 8 MiB for everything else.
const BOUND: usize = 24 << 20;

fn churn() {
    let cache = KmemCache::<Big>::builder("tp-churn")
        .typesafe_by_rcu(true)
        .ctor(|| Big { words: [7; 512] })
        .build()
        .unwrap();
    let per_slab = cache.stats().objects_per_slab;
    let n = per_slab * SLABS_PER_ROUND;
    let base_rss = test_support::start_peak_rss();
    let base_pages = memory_stats().bytes_in_use;
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let mut max_pending = 0;
    let mut peak_pages = 0;
    let rounds = std::thread::scope(|s| {
        s.spawn(|| {
            let g = rcu_core::rcu_read_lock();
            while !done.load(Ordering::Relaxed) && start.elapsed() < HOLD {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(g);
        });
        let mut held: Vec<NonNull<Big>> = Vec::with_capacity(n);
        let mut rounds = 0;
        while rounds < ROUNDS && start.elapsed() < MAX_RUN {
            for _ in 0..n {
                let p = cache.alloc().expect("no memory limit is set");
                // SAFETY: a valid `Big` (ctor) that we own.
                unsafe { (*p.as_ptr()).words[0] = rounds as u64 };
                held.push(p);
            }
            peak_pages = peak_pages.max(memory_stats().bytes_in_use);
            for p in held.drain(..) {
                // SAFETY: allocated above from `cache`, freed once; nobody else holds it.
                unsafe { cache.free(p) };
            }
            // Thread and CPU caches hold free objects of their own; give them back to the
            // slabs so that the slabs really become empty.
            cache.shrink();
            max_pending = max_pending.max(cache.stats().rcu_pending_slabs);
            rounds += 1;
        }
        done.store(true, Ordering::Relaxed);
        rounds
    });
    let rss_growth = test_support::peak_rss().saturating_sub(base_rss);
    let page_growth = peak_pages.saturating_sub(base_pages);
    let st = cache.stats();
    println!(
        "typesafe churn: {rounds} rounds in {:.2?}; page-layer peak growth {} KiB, peak RSS \
         growth {} KiB; slabs created {}, freed {}, at most {max_pending} pending discard",
        start.elapsed(),
        page_growth >> 10,
        rss_growth >> 10,
        st.slabs_created,
        st.slabs_freed,
    );
    assert!(
        page_growth <= BOUND && rss_growth <= BOUND,
        "typesafe cache memory grew by {} KiB (page layer) / {} KiB (peak RSS) while a reader \
         stalled grace periods (bound {} KiB); {max_pending} slabs were pending discard at \
         once",
        page_growth >> 10,
        rss_growth >> 10,
        BOUND >> 10
    );
    cache.destroy().expect("nothing leaked");
}

#[test]
fn typesafe_child() {
    if let Some(case) = child_case() {
        match case.as_str() {
            "churn" => churn(),
            other => panic!("unknown case {other}"),
        }
    }
}

#[test]
fn stalled_grace_periods_do_not_pile_up_typesafe_slabs() {
    let out = run_child("typesafe_child", "churn", &[], Duration::from_secs(120));
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "churn failed\nstdout:\n{so}\nstderr:\n{}",
        stderr(&out)
    );
    println!("{so}");
}
