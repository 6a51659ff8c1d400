//! Injected allocation failures at each of the batcher's sites: the site takes the fallback it
//! takes when memory is really short, the stats show it, nothing is lost and nothing is freed
//! before its grace period. Every case runs in a child process (fault points, the batcher and
//! the page layer are process-wide) with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier, stats, KfreeStats};
use rcu_core::fault::{self, FaultAttr, Point};
use rcu_core::rcu_read_lock;
use test_support::{child_case, run_child, stderr};

/// Counts its drops in the counter it points at (one counter per batch of retires, so that
/// concurrent batches do not see each other's frees).
struct Tracked(&'static AtomicU64, #[allow(dead_code)] [u64; 3]);
impl Drop for Tracked {
    fn drop(&mut self) {
        // SeqCst: the reader's SeqCst load at the end of its section sees a drop that ran
        // before it.
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

static WARM: AtomicU64 = AtomicU64::new(0);

fn warm_up() {
    for i in 0..5_000u64 {
        kfree_rcu(Box::new(Tracked(&WARM, [i; 3])));
    }
    kvfree_rcu_barrier();
}

/// Retires `n` objects while another thread holds a read-side critical section that began
/// before the first retire: none of them may be dropped before that section ends (checked at
/// its end), and all are dropped after the barrier.
fn retire_under_reader(n: u64) {
    let dropped: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let (started, go) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let g = rcu_read_lock();
        started.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let seen = dropped.load(Ordering::SeqCst);
        drop(g);
        seen
    });
    go.recv().unwrap();
    for i in 0..n {
        kfree_rcu(Box::new(Tracked(dropped, [i; 3])));
    }
    let seen = reader.join().unwrap();
    assert_eq!(
        seen, 0,
        "objects freed inside a reader that predates their retire"
    );
    kvfree_rcu_barrier();
    assert_eq!(dropped.load(Ordering::SeqCst), n, "objects lost");
}

/// After every batch: the batcher holds nothing (everything queued was freed).
fn all_freed() {
    kvfree_rcu_barrier();
    let s = stats();
    assert_eq!(s.queued, s.freed, "{s:?}");
    assert_eq!(s.parked_now, 0, "{s:?}");
}

fn delta(a: &KfreeStats, b: &KfreeStats) -> String {
    format!(
        "emergency_pages_used +{}, objects_parked +{}, park_waits +{}, fallback_sync +{}, \
         injected_failures +{}",
        b.emergency_pages_used - a.emergency_pages_used,
        b.objects_parked - a.objects_parked,
        b.park_waits - a.park_waits,
        b.fallback_sync - a.fallback_sync,
        b.injected_failures - a.injected_failures,
    )
}

/// Every block page refused: the batcher lives on its emergency cache, then parks.
fn case_block() {
    warm_up();
    let before = stats();
    fault::arm(Point::Block, FaultAttr::always(-1));
    retire_under_reader(20_000);
    fault::disarm(Point::Block);
    let after = stats();
    println!("block: {}", delta(&before, &after));
    assert!(
        fault::injected(Point::Block) > 0,
        "no block failure injected"
    );
    assert!(
        after.injected_failures > before.injected_failures,
        "not in the stats"
    );
    assert!(
        after.objects_parked > before.objects_parked,
        "no fallback ran: {}",
        delta(&before, &after)
    );
}

/// The emergency-cache refill refused: the refill stops, the batcher keeps working.
fn case_emergency() {
    fault::arm(Point::Emergency, FaultAttr::always(-1));
    warm_up();
    let t = Instant::now();
    while fault::injected(Point::Emergency) == 0 && t.elapsed() < Duration::from_secs(10) {
        warm_up();
    }
    let s = stats();
    println!(
        "emergency: injected {} {s:?}",
        fault::injected(Point::Emergency)
    );
    assert!(
        fault::injected(Point::Emergency) > 0,
        "the refill never ran into the point"
    );
    assert!(s.injected_failures > 0, "not in the stats: {s:?}");
    retire_under_reader(5_000);
    fault::disarm(Point::Emergency);
}

/// A new thread gets no park array, and no block page either (caches emptied): its retires
/// fall back to waiting for a grace period themselves.
fn case_park() {
    warm_up();
    fault::arm(Point::Park, FaultAttr::always(-1));
    fault::arm(Point::Block, FaultAttr::always(-1));
    slab_backend::shrink_all(); // the emergency caches go back
    let before = stats();
    std::thread::spawn(|| retire_under_reader(300))
        .join()
        .unwrap();
    fault::disarm_all();
    let after = stats();
    println!("park: {}", delta(&before, &after));
    assert!(fault::injected(Point::Park) > 0, "no park failure injected");
    assert!(
        after.fallback_sync > before.fallback_sync,
        "no fallback ran: {}",
        delta(&before, &after)
    );
}

/// Every page of the page layer refused (blocks, refills, park arrays alike).
fn case_pages() {
    warm_up();
    let before = stats();
    let mbefore = slab_backend::memory_stats();
    fault::arm(Point::Pages, FaultAttr::always(-1));
    slab_backend::shrink_all();
    retire_under_reader(20_000);
    fault::disarm(Point::Pages);
    let after = stats();
    let m = slab_backend::memory_stats();
    println!("pages: {} {m:?}", delta(&before, &after));
    assert!(m.injected_failures > mbefore.injected_failures, "{m:?}");
    assert!(m.alloc_failures > mbefore.alloc_failures, "{m:?}");
    assert!(
        after.objects_parked > before.objects_parked,
        "no fallback ran: {}",
        delta(&before, &after)
    );
}

/// A new thread cannot allocate its front: its retires take the per-CPU path.
fn case_heap() {
    warm_up();
    fault::arm(Point::Heap, FaultAttr::always(-1));
    std::thread::spawn(|| retire_under_reader(2_000))
        .join()
        .unwrap();
    fault::disarm(Point::Heap);
    println!("heap: injected {}", fault::injected(Point::Heap));
    assert!(fault::injected(Point::Heap) > 0, "no heap failure injected");
    assert!(stats().injected_failures > 0);
}

/// Random failures at every point, 20% each, from several threads.
fn case_random() {
    warm_up();
    for p in Point::ALL {
        fault::arm(p, FaultAttr::percent(20));
    }
    let ts: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(|| retire_under_reader(10_000)))
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    fault::disarm_all();
    println!("random: {:?}", fault::stats());
    assert!(fault::total_injected() > 0);
}

/// Every point refused and the pending budget tiny: a new thread retires inside its own reader
/// (no park array, no block, no front; the budget overdrawn). Nothing may panic, be freed
/// before the reader ends, or be lost.
fn case_all_in_reader() {
    kfree_batch::configure(kfree_batch::Config {
        drain_delay: Duration::from_millis(20),
        gp_batch: Duration::from_micros(100),
        pending_cap: 2 * 4096,
        pages_per_cpu: 0,
    })
    .unwrap();
    for p in Point::ALL {
        fault::arm(p, FaultAttr::always(-1));
    }
    std::thread::spawn(|| {
        let dropped: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        {
            let _g = rcu_read_lock();
            for i in 0..3_000u64 {
                kfree_rcu(Box::new(Tracked(dropped, [i; 3])));
            }
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                0,
                "freed inside the retiring reader"
            );
        }
        kvfree_rcu_barrier();
        assert_eq!(dropped.load(Ordering::SeqCst), 3_000, "objects lost");
    })
    .join()
    .unwrap();
    fault::disarm_all();
    println!("all_in_reader: {:?}", stats());
}

#[test]
fn fault_cases() {
    match child_case().as_deref() {
        Some("block") => {
            case_block();
            return all_freed();
        }
        Some("emergency") => {
            case_emergency();
            return all_freed();
        }
        Some("park") => {
            case_park();
            return all_freed();
        }
        Some("pages") => {
            case_pages();
            return all_freed();
        }
        Some("heap") => {
            case_heap();
            return all_freed();
        }
        Some("random") => {
            case_random();
            return all_freed();
        }
        Some("all_in_reader") => {
            case_all_in_reader();
            return all_freed();
        }
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    let mut failed = Vec::new();
    for case in [
        "block",
        "emergency",
        "park",
        "pages",
        "heap",
        "random",
        "all_in_reader",
    ] {
        let o = run_child("fault_cases", case, &[], Duration::from_secs(120));
        if !o.status.success() {
            eprintln!("case {case} failed ({}):\n{}", o.status, stderr(&o));
            failed.push(case);
        } else {
            print!("{}", String::from_utf8_lossy(&o.stdout));
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}
