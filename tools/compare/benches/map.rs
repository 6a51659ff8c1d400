//! `RcuHashMap` and `TypesafeHashMap` (nodes from a `SLAB_TYPESAFE_BY_RCU` cache) against
//! `RwLock<HashMap>` and papaya (seize-based), in one run.
//!
//! `cargo bench -p compare --bench map [-- SECONDS]` (default 1 s per cell, split into 3 interleaved rounds
//! whose best is reported, so that the maps see the same machine load). Every thread runs a mix of
//! lookups, inserts and removes on uniformly random keys of a pre-filled key space; each lookup
//! enters and leaves its own read-side critical section / guard / read lock, as a server handling
//! independent requests would. Prints throughput (M ops/s, all threads) and the ratios.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use rcu_kit::map::{RcuHashMap, TypesafeHashMap};
use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock};

/// Keys in the key space; half of them present at any time in steady state of the 50/50 mix.
const KEYS: u64 = 1 << 14;

trait Map: Send + Sync + 'static {
    const NAME: &'static str;
    fn make() -> Self;
    fn get(&self, k: u64) -> bool;
    fn insert(&self, k: u64, v: u64);
    fn remove(&self, k: u64);
}

impl Map for RcuHashMap<u64, u64> {
    const NAME: &'static str = "rcu-kit RcuHashMap";
    fn make() -> Self {
        RcuHashMap::with_capacity(KEYS as usize)
    }
    #[inline]
    fn get(&self, k: u64) -> bool {
        let g = rcu_read_lock();
        RcuHashMap::get(self, &k, &g).is_some_and(|v| *v == k)
    }
    fn insert(&self, k: u64, v: u64) {
        RcuHashMap::insert(self, k, v);
    }
    fn remove(&self, k: u64) {
        RcuHashMap::remove(self, &k);
    }
}

impl Map for TypesafeHashMap<u64, u64> {
    const NAME: &'static str = "rcu-kit TypesafeHashMap";
    fn make() -> Self {
        TypesafeHashMap::with_capacity(KEYS as usize)
    }
    #[inline]
    fn get(&self, k: u64) -> bool {
        // A counted lookup (takes and leaves its own read-side critical section).
        TypesafeHashMap::get(self, &k).is_some_and(|v| *v == k)
    }
    fn insert(&self, k: u64, v: u64) {
        TypesafeHashMap::insert(self, k, v).expect("no memory limit is set");
    }
    fn remove(&self, k: u64) {
        TypesafeHashMap::remove(self, &k);
    }
}

impl Map for RwLock<HashMap<u64, u64>> {
    const NAME: &'static str = "RwLock<HashMap>";
    fn make() -> Self {
        RwLock::new(HashMap::with_capacity(KEYS as usize))
    }
    #[inline]
    fn get(&self, k: u64) -> bool {
        self.read().unwrap().get(&k).is_some_and(|v| *v == k)
    }
    fn insert(&self, k: u64, v: u64) {
        self.write().unwrap().insert(k, v);
    }
    fn remove(&self, k: u64) {
        self.write().unwrap().remove(&k);
    }
}

impl Map for papaya::HashMap<u64, u64> {
    const NAME: &'static str = "papaya::HashMap";
    fn make() -> Self {
        papaya::HashMap::with_capacity(KEYS as usize)
    }
    #[inline]
    fn get(&self, k: u64) -> bool {
        self.pin().get(&k).is_some_and(|v| *v == k)
    }
    fn insert(&self, k: u64, v: u64) {
        self.pin().insert(k, v);
    }
    fn remove(&self, k: u64) {
        self.pin().remove(&k);
    }
}

/// Per-thread xorshift64*.
struct Rng(u64);
impl Rng {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs `threads` threads for `dur` with `read_pct`% lookups (the rest half inserts, half
/// removes); returns million operations per second.
fn run<M: Map>(threads: usize, dur: Duration, read_pct: u64) -> f64 {
    let map = Arc::new(M::make());
    for k in (0..KEYS).step_by(2) {
        map.insert(k, k);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (map, stop, barrier) = (map.clone(), stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) << 32));
                let mut ops = 0u64;
                let mut found = 0u64;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let r = rng.next();
                        let k = r % KEYS;
                        let dice = (r >> 40) % 1000;
                        if dice < read_pct * 10 {
                            found += u64::from(map.get(black_box(k)));
                        } else if dice % 2 == 0 {
                            map.insert(k, k);
                        } else {
                            map.remove(k);
                        }
                    }
                    ops += 64;
                }
                black_box(found);
                ops
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    drop(map);
    ops as f64 / secs / 1e6
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1.0);
    const ROUNDS: u32 = 3;
    let dur = Duration::from_secs_f64(secs / f64::from(ROUNDS));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "map benchmark: {threads} threads, {KEYS} keys (half present), {secs} s per cell \
         (best of {ROUNDS} interleaved rounds), one guard / lock per operation"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11} {:>10} {:>10} {:>10}",
        "mix",
        "rcu Mops/s",
        "ts Mops/s",
        "rwlock",
        "papaya",
        "rcu/rwlock",
        "rcu/papaya",
        "ts/rcu",
        "ts/rwlock",
        "ts/papaya"
    );
    for (name, read_pct) in [("100% reads", 100u64), ("99% reads", 99), ("50/50", 50)] {
        // Interleaved rounds, best of each: the four maps see the same machine load.
        let (mut rcu, mut ts, mut rw, mut pa) = (0f64, 0f64, 0f64, 0f64);
        for _ in 0..ROUNDS {
            rcu = rcu.max(run::<RcuHashMap<u64, u64>>(threads, dur, read_pct));
            kvfree_rcu_barrier();
            ts = ts.max(run::<TypesafeHashMap<u64, u64>>(threads, dur, read_pct));
            kvfree_rcu_barrier();
            rw = rw.max(run::<RwLock<HashMap<u64, u64>>>(threads, dur, read_pct));
            pa = pa.max(run::<papaya::HashMap<u64, u64>>(threads, dur, read_pct));
        }
        println!(
            "{name:<12} {rcu:>10.2} {ts:>10.2} {rw:>10.2} {pa:>10.2} {:>10.2}x {:>10.2}x {:>9.2}x \
             {:>9.2}x {:>9.2}x",
            rcu / rw,
            rcu / pa,
            ts / rcu,
            ts / rw,
            ts / pa
        );
    }
    println!(
        "(names: rcu = {}, ts = {}, rwlock = {}, papaya = {})",
        <RcuHashMap<u64, u64> as Map>::NAME,
        <TypesafeHashMap<u64, u64> as Map>::NAME,
        <RwLock<HashMap<u64, u64>> as Map>::NAME,
        <papaya::HashMap<u64, u64> as Map>::NAME
    );
}
