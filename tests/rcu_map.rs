//! Integration tests of `rcu_kit::map::RcuHashMap`: concurrent readers and writers (bounded in
//! time), resize under readers, and no leak.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcu_kit::map::RcuHashMap;
use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock};

const LIMIT: Duration = Duration::from_secs(60);

/// A value that checks itself and counts live instances.
#[derive(Debug)]
struct Val {
    key: u64,
    check: u64,
    live: Arc<AtomicUsize>,
}

impl Val {
    fn new(key: u64, live: &Arc<AtomicUsize>) -> Val {
        live.fetch_add(1, Ordering::Relaxed);
        Val {
            key,
            check: key.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            live: live.clone(),
        }
    }
    fn ok(&self, key: u64) -> bool {
        self.key == key && self.check == key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl Clone for Val {
    fn clone(&self) -> Self {
        Val::new(self.key, &self.live)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.check = 0; // a reader of freed memory would likely see this
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

#[test]
fn concurrent_readers_and_writers() {
    let live = Arc::new(AtomicUsize::new(0));
    {
        let map = Arc::new(RcuHashMap::new());
        // Keys 0..256 are stable: always present. Keys 256..1024 churn.
        for k in 0..256u64 {
            map.insert(k, Val::new(k, &live));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (map, stop) = (map.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let mut k = r;
                    while !stop.load(Ordering::Relaxed) {
                        let g = rcu_read_lock();
                        k = (k + 7) % 1024;
                        match map.get(&k, &g) {
                            Some(v) => assert!(v.ok(k), "torn or freed value for {k}"),
                            None => assert!(k >= 256, "stable key {k} missing"),
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (map, live) = (map.clone(), live.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let k = 256 + (i * 13 + w * 7) % 768;
                        if i % 3 == 0 {
                            map.remove(&k);
                        } else {
                            map.insert(k, Val::new(k, &live));
                        }
                        if start.elapsed() > LIMIT {
                            break;
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(reads > 0);
        assert!(start.elapsed() < LIMIT, "took longer than {LIMIT:?}");
        let g = rcu_read_lock();
        assert_eq!(map.iter(&g).count(), map.len());
    }
    kvfree_rcu_barrier();
    assert_eq!(live.load(Ordering::Relaxed), 0, "leaked values");
}

#[test]
fn resize_under_readers() {
    let live = Arc::new(AtomicUsize::new(0));
    {
        let map = Arc::new(RcuHashMap::new());
        for k in 0..64u64 {
            map.insert(k, Val::new(k, &live));
        }
        let before = map.buckets();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (map, stop) = (map.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // One long critical section per round: the tables it sees are retired
                    // under it and must stay intact.
                    let g = rcu_read_lock();
                    for k in 0..64u64 {
                        let v = map
                            .get(&k, &g)
                            .expect("pre-inserted key missing during resize");
                        assert!(v.ok(k));
                    }
                    rounds += 1;
                }
                rounds
            })
        };
        let start = Instant::now();
        for k in 64..50_000u64 {
            map.insert(k, Val::new(k, &live));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert!(start.elapsed() < LIMIT);
        assert!(map.buckets() >= before * 1024, "the table grew");
        assert_eq!(map.len(), 50_000);
    }
    kvfree_rcu_barrier();
    assert_eq!(live.load(Ordering::Relaxed), 0, "leaked values");
}
