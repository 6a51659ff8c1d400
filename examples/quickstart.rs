//! Quickstart: publish values through an `RcuCell`, read them from several threads without locks,
//! and retire the old ones after grace periods (call_rcu, and synchronize for the last one).
//!
//! `cargo run --release --example quickstart`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuCell};

/// A configuration snapshot: readers must always see a consistent one.
#[derive(Debug)]
struct Config {
    version: u64,
    checksum: u64,
}

impl Config {
    fn new(version: u64) -> Box<Config> {
        Box::new(Config {
            version,
            checksum: version.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        })
    }
    fn consistent(&self) -> bool {
        self.checksum == self.version.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let cell = Arc::new(RcuCell::new(Some(Config::new(0))));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let inconsistent = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cell, stop, reads, bad) = (
                cell.clone(),
                stop.clone(),
                reads.clone(),
                inconsistent.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut newest = 0;
                while !stop.load(Ordering::Relaxed) {
                    let guard = rcu_read_lock();
                    if let Some(cfg) = cell.read(&guard) {
                        if !cfg.consistent() {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        newest = newest.max(cfg.version);
                    }
                    drop(guard);
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
                newest
            })
        })
        .collect();

    let start = Instant::now();
    let mut version = 0;
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        version += 1;
        cell.replace(Some(Config::new(version))); // old value freed after a grace period
        std::thread::sleep(Duration::from_micros(50));
    }
    stop.store(true, Ordering::Relaxed);
    let newest: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let last = cell.replace_sync(None); // wait for readers, get the last value back
    kvfree_rcu_barrier(); // every retired value has been freed

    let stats = rcu_kit::rcu_core::stats();
    let elapsed = start.elapsed().as_secs_f64();
    println!("rcu-kit quickstart ({:?} mode)", stats.mode);
    println!("  updates published     {version}");
    println!(
        "  reads                 {} ({:.1} M/s)",
        reads.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed) as f64 / elapsed / 1e6
    );
    println!("  newest seen by reader {newest:?}");
    println!(
        "  inconsistent reads    {}",
        inconsistent.load(Ordering::Relaxed)
    );
    println!("  grace periods         {}", stats.grace_periods);
    println!(
        "  callbacks invoked     {} of {} queued",
        stats.callbacks_invoked, stats.callbacks_queued
    );
    println!("  last value            {:?}", last.map(|c| c.version));
    if inconsistent.load(Ordering::Relaxed) != 0
        || stats.callbacks_invoked != stats.callbacks_queued
    {
        eprintln!("ERROR: inconsistent reads or unfinished callbacks");
        std::process::exit(1);
    }
}
