//! A concurrent hash map on rcu-kit: lock-free readers, writers under a per-map mutex, removed
//! entries retired with `kfree_rcu`, resize by copy-and-publish (see `rcu_kit::map`).
//!
//! `cargo run --release --example rcu_map [-- SECONDS]` (default 2). Readers check every value
//! they see; writers churn half of the key space so the table grows while readers run. For the
//! comparison against `RwLock<HashMap>` and papaya run `cargo bench -p compare --bench map`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcu_kit::map::RcuHashMap;
use rcu_kit::{kfree_stats, kvfree_rcu_barrier, rcu_read_lock};

/// A value readers can check for tearing or use after free.
#[derive(Clone, Debug)]
struct Entry {
    key: u64,
    digest: u64,
}

impl Entry {
    fn new(key: u64) -> Entry {
        Entry {
            key,
            digest: key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5,
        }
    }
    fn valid_for(&self, key: u64) -> bool {
        self.key == key && self.digest == key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5
    }
}

fn main() {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    const KEYS: u64 = 1 << 16;
    let map = Arc::new(RcuHashMap::<u64, Entry>::new());
    let start_buckets = map.buckets();
    let stop = Arc::new(AtomicBool::new(false));
    let (lookups, hits, bad) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );

    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (map, stop) = (map.clone(), stop.clone());
            let (lookups, hits, bad) = (lookups.clone(), hits.clone(), bad.clone());
            std::thread::spawn(move || {
                let (mut n, mut h, mut b) = (0u64, 0u64, 0u64);
                let mut k = r * 7919;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        k = (k + 40_503) % KEYS;
                        let g = rcu_read_lock();
                        if let Some(e) = map.get(&k, &g) {
                            h += 1;
                            b += u64::from(!e.valid_for(k));
                        }
                    }
                    n += 256;
                }
                lookups.fetch_add(n, Ordering::Relaxed);
                hits.fetch_add(h, Ordering::Relaxed);
                bad.fetch_add(b, Ordering::Relaxed);
            })
        })
        .collect();

    let writer = {
        let (map, stop) = (map.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ins, mut rem, mut i) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let k = i.wrapping_mul(2_654_435_761) % KEYS;
                if i % 4 == 3 {
                    // remove a key inserted two steps ago
                    let old = (i - 2).wrapping_mul(2_654_435_761) % KEYS;
                    rem += u64::from(map.remove(&old));
                } else {
                    map.insert(k, Entry::new(k));
                    ins += 1;
                }
                i += 1;
            }
            (ins, rem)
        })
    };

    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let (inserts, removes) = writer.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let (entries, buckets) = (map.len(), map.buckets());
    drop(map);
    kvfree_rcu_barrier();
    let k = kfree_stats();
    let (n, bad) = (lookups.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));

    println!("rcu_map: {secs:.1} s, 2 readers + 1 writer, {KEYS} keys");
    println!(
        "  lookups      {:>12}  ({:.1} M/s, {:.0}% hits)",
        n,
        n as f64 / secs / 1e6,
        100.0 * hits.load(Ordering::Relaxed) as f64 / n.max(1) as f64
    );
    println!("  inserts      {inserts:>12}");
    println!("  removes      {removes:>12}");
    println!("  entries      {entries:>12}  (buckets {start_buckets} -> {buckets})");
    println!(
        "  kfree_rcu    {:>12}  queued, {} freed, {} fallback_sync",
        k.queued, k.freed, k.fallback_sync
    );
    println!("  bad values   {bad:>12}  (must be 0)");
    if bad != 0 {
        std::process::exit(1);
    }
}
