//! `RcuCell` through the facade: the kfree_rcu-retiring extension trait, concurrently.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuCell, RcuCellExt};

#[derive(Debug)]
struct Counted(u64, Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn replace_take_compare_exchange_kfree() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = RcuCell::new(Some(Box::new(Counted(1, drops.clone()))));
    cell.replace_kfree(Some(Box::new(Counted(2, drops.clone()))));
    {
        let g = rcu_read_lock();
        let cur = cell.read(&g);
        assert_eq!(cur.map(|c| c.0), Some(2));
        let now = cell
            .compare_exchange_kfree(cur, Some(Box::new(Counted(3, drops.clone()))), &g)
            .expect("no racing writer");
        assert_eq!(now.map(|c| c.0), Some(3));
        let err = cell
            .compare_exchange_kfree(cur, Some(Box::new(Counted(4, drops.clone()))), &g)
            .unwrap_err();
        assert_eq!(err.current.map(|c| c.0), Some(3));
        drop(err); // drops the rejected box (4) at once: it was never published
    }
    cell.take_kfree();
    assert!(cell.is_none());
    kvfree_rcu_barrier();
    assert_eq!(drops.load(Ordering::Relaxed), 4);
}

#[test]
fn concurrent_update_via_kfree() {
    const THREADS: u64 = 3;
    const PER: u64 = 3_000;
    let drops = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(AtomicUsize::new(1));
    let cell = Arc::new(RcuCell::new(Some(Box::new(Counted(0, drops.clone())))));
    let start = Instant::now();
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            let (cell, drops, made) = (cell.clone(), drops.clone(), made.clone());
            std::thread::spawn(move || {
                for _ in 0..PER {
                    cell.update(|old| {
                        made.fetch_add(1, Ordering::Relaxed);
                        Some(Box::new(Counted(old.map_or(0, |c| c.0) + 1, drops.clone())))
                    });
                    // and a reader in between
                    let g = rcu_read_lock();
                    assert!(cell.read(&g).is_some());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(
        cell.read(&rcu_read_lock()).map(|c| c.0),
        Some(THREADS * PER)
    );
    drop(cell);
    kvfree_rcu_barrier();
    assert_eq!(drops.load(Ordering::Relaxed), made.load(Ordering::Relaxed));
}
