//! A concurrent hash map on rcu-kit: lock-free readers, writers under a per-map mutex, removed
//! entries retired with `kfree_rcu`, resize by copy-and-publish (see `rcu_kit::map`).
//!
//! `cargo run --release --example rcu_map [-- SECONDS] [--typesafe]` (default 2 s). Readers check
//! every value they see; writers churn half of the key space so the table grows while readers
//! run. `--typesafe` runs `TypesafeHashMap` instead: nodes from a typesafe cache, reused at once,
//! counted lookups; it also checks that the cache holds no node at the end. For the comparison
//! against `RwLock<HashMap>` and papaya run `cargo bench -p compare --bench map`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcu_kit::map::{RcuHashMap, TypesafeHashMap};
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

/// What the example needs of a map.
trait Map: Send + Sync + 'static {
    /// `Some(valid)` when `key` is present.
    fn check(&self, key: u64) -> Option<bool>;
    fn insert(&self, key: u64);
    fn remove(&self, key: u64) -> bool;
    fn len(&self) -> usize;
    fn buckets(&self) -> usize;
    /// Nodes allocated from the map's own cache, when it has one.
    fn nodes(&self) -> Option<usize> {
        None
    }
}

impl Map for RcuHashMap<u64, Entry> {
    fn check(&self, key: u64) -> Option<bool> {
        let g = rcu_read_lock();
        self.get(&key, &g).map(|e| e.valid_for(key))
    }
    fn insert(&self, key: u64) {
        RcuHashMap::insert(self, key, Entry::new(key));
    }
    fn remove(&self, key: u64) -> bool {
        RcuHashMap::remove(self, &key)
    }
    fn len(&self) -> usize {
        RcuHashMap::len(self)
    }
    fn buckets(&self) -> usize {
        RcuHashMap::buckets(self)
    }
}

impl Map for TypesafeHashMap<u64, Entry> {
    fn check(&self, key: u64) -> Option<bool> {
        self.get(&key).map(|e| e.valid_for(key) && *e.key() == key)
    }
    fn insert(&self, key: u64) {
        // No memory limit is set here, so a node is always there; under a limit the entry
        // would come back in the error.
        TypesafeHashMap::insert(self, key, Entry::new(key)).expect("no memory limit is set");
    }
    fn remove(&self, key: u64) -> bool {
        TypesafeHashMap::remove(self, &key)
    }
    fn len(&self) -> usize {
        TypesafeHashMap::len(self)
    }
    fn buckets(&self) -> usize {
        TypesafeHashMap::buckets(self)
    }
    fn nodes(&self) -> Option<usize> {
        Some(self.cache_stats().active_objects)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(2.0);
    if args.iter().any(|a| a == "--typesafe") {
        run(
            "TypesafeHashMap",
            TypesafeHashMap::<u64, Entry>::new(),
            seconds,
        );
    } else {
        run("RcuHashMap", RcuHashMap::<u64, Entry>::new(), seconds);
    }
}

fn run<M: Map>(name: &str, map: M, seconds: f64) {
    const KEYS: u64 = 1 << 16;
    let map = Arc::new(map);
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
                        if let Some(valid) = map.check(k) {
                            h += 1;
                            b += u64::from(!valid);
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
                    rem += u64::from(map.remove(old));
                } else {
                    map.insert(k);
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
    // Retired tables give their nodes back once freed: after the barrier, the cache holds
    // exactly the live entries' nodes (none leaked, none freed under a holder).
    kvfree_rcu_barrier();
    let nodes = map.nodes();
    drop(map);
    kvfree_rcu_barrier();
    let k = kfree_stats();
    let (n, bad) = (lookups.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));

    println!("rcu_map ({name}): {secs:.1} s, 2 readers + 1 writer, {KEYS} keys");
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
    if let Some(nodes) = nodes {
        println!("  cache nodes  {nodes:>12}  (must equal entries)");
    }
    println!("  bad values   {bad:>12}  (must be 0)");
    if bad != 0 || nodes.is_some_and(|n| n != entries) {
        std::process::exit(1);
    }
}
