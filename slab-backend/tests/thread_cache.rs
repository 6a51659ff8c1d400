//! The per-thread object caches in front of the per-CPU sheaves: thread exit flushes them,
//! `shrink`, the slab shrinker and destroy reclaim objects cached by *other* threads (alive or
//! exited), producer/consumer across threads balances, and double frees are still caught.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::{mpsc, Arc, Barrier};

use slab_backend::{shrink_all, KmemCache};

type Obj = [u64; 8];

/// Allocates and frees `n` objects, so that up to the thread-cache capacity stay cached.
fn churn(c: &KmemCache<Obj>, n: usize) {
    let ps: Vec<NonNull<Obj>> = (0..n).map(|_| c.alloc().unwrap()).collect();
    // SAFETY: live objects of `c`, each freed once.
    unsafe { c.free_bulk(&ps) };
}

#[test]
fn thread_exit_flushes_its_cache() {
    let c = Arc::new(KmemCache::<Obj>::builder("tc-exit").build().unwrap());
    let c2 = c.clone();
    std::thread::spawn(move || {
        churn(&c2, 20);
        let s = c2.stats();
        assert!(s.thread_cached_objects >= 1, "{s:?}");
        assert!(s.cpu_cached_objects >= s.thread_cached_objects, "{s:?}");
    })
    .join()
    .unwrap();
    let s = c.stats();
    assert_eq!(
        s.thread_cached_objects, 0,
        "exit flushed the thread cache: {s:?}"
    );
    assert_eq!(s.active_objects, 0, "{s:?}");
    assert_eq!(s.allocs, 20, "{s:?}");
    assert_eq!(s.frees, 20, "{s:?}");
    c.shrink();
    assert_eq!(c.stats().slabs, 0);
}

/// A thread that fills its cache of `c`, then stays alive (holding nothing) until released.
fn parked_thread(
    c: Arc<KmemCache<Obj>>,
    n: usize,
) -> (std::thread::JoinHandle<()>, mpsc::Sender<()>) {
    let ready = Arc::new(Barrier::new(2));
    let (tx, rx) = mpsc::channel::<()>();
    let r = ready.clone();
    let h = std::thread::spawn(move || {
        churn(&c, n);
        drop(c);
        r.wait();
        let _ = rx.recv();
    });
    ready.wait();
    (h, tx)
}

#[test]
fn shrink_reclaims_objects_cached_by_other_threads() {
    let c = Arc::new(KmemCache::<Obj>::builder("tc-shrink").build().unwrap());
    let (h, tx) = parked_thread(c.clone(), 24);
    let s = c.stats();
    assert!(s.thread_cached_objects >= 1, "{s:?}");
    assert!(c.shrink() >= 1);
    let s = c.stats();
    assert_eq!(s.thread_cached_objects, 0, "{s:?}");
    assert_eq!(s.cpu_cached_objects, 0, "{s:?}");
    assert_eq!(s.slabs, 0, "{s:?}");
    assert_eq!(s.slabs_freed, s.slabs_created, "{s:?}");
    assert_eq!(s.active_objects, 0, "{s:?}");
    tx.send(()).unwrap();
    h.join().unwrap();
    // The cache still works on this thread and others after the steal.
    churn(&c, 50);
    let c2 = c.clone();
    std::thread::spawn(move || churn(&c2, 50)).join().unwrap();
    assert_eq!(c.stats().active_objects, 0);
}

#[test]
fn slab_shrinker_reclaims_objects_cached_by_other_threads() {
    let c = Arc::new(
        KmemCache::<Obj>::builder("tc-shrinker")
            .typesafe_by_rcu(true)
            .ctor(|| [7; 8])
            .build()
            .unwrap(),
    );
    let (h, tx) = parked_thread(c.clone(), 24);
    assert!(c.stats().thread_cached_objects >= 1);
    shrink_all();
    let s = c.stats();
    assert_eq!(s.thread_cached_objects, 0, "{s:?}");
    assert_eq!(s.slabs, 0, "{s:?}");
    assert!(
        s.rcu_pending_slabs + s.slabs_freed as usize >= 1,
        "typesafe slabs go back after a grace period: {s:?}"
    );
    tx.send(()).unwrap();
    h.join().unwrap();
}

#[test]
fn destroy_reclaims_objects_cached_by_other_threads() {
    let c = Arc::new(KmemCache::<Obj>::builder("tc-destroy").build().unwrap());
    let ready = Arc::new(Barrier::new(2));
    let (tx, rx) = mpsc::channel::<()>();
    let h = {
        let (c, ready) = (c.clone(), ready.clone());
        std::thread::spawn(move || {
            churn(&c, 24);
            drop(c);
            ready.wait();
            rx.recv().unwrap();
            // A new cache (which may reuse the destroyed one's thread-cache id) works here.
            let d = KmemCache::<Obj>::builder("tc-destroy-next")
                .build()
                .unwrap();
            churn(&d, 40);
            assert_eq!(d.stats().active_objects, 0);
            d.destroy().expect("no leak");
        })
    };
    ready.wait();
    assert!(c.stats().thread_cached_objects >= 1);
    let c = Arc::try_unwrap(c).expect("the thread dropped its handle");
    c.destroy()
        .expect("objects cached by a live thread are free, not leaked");
    tx.send(()).unwrap();
    h.join().unwrap();
}

#[test]
fn producer_consumer_balances_and_shrinks_to_zero() {
    let c = Arc::new(KmemCache::<Obj>::builder("tc-prodcons").build().unwrap());
    let (tx, rx) = mpsc::sync_channel::<usize>(256);
    let n = 100_000u64;
    let prod = {
        let c = c.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                let p = c.alloc().unwrap();
                // SAFETY: a fresh object of ours.
                unsafe { p.as_ptr().write([i; 8]) };
                tx.send(p.as_ptr() as usize).unwrap();
            }
        })
    };
    let cons = {
        let c = c.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            for a in rx {
                let p = NonNull::new(a as *mut Obj).unwrap();
                // SAFETY: initialised by the producer and handed over through the channel.
                assert_eq!(unsafe { p.as_ptr().read() }, [i; 8]);
                // SAFETY: a live object of `c`, ours now.
                unsafe { c.free(p) };
                i += 1;
            }
            i
        })
    };
    prod.join().unwrap();
    assert_eq!(cons.join().unwrap(), n);
    let s = c.stats();
    assert_eq!(s.active_objects, 0, "{s:?}");
    assert_eq!(s.allocs, n, "{s:?}");
    assert_eq!(s.frees, n, "{s:?}");
    assert_eq!(s.thread_cached_objects, 0, "both threads exited: {s:?}");
    c.shrink();
    assert_eq!(c.stats().slabs, 0);
}

#[test]
#[should_panic(expected = "double free")]
fn double_free_is_detected_with_a_warm_thread_cache() {
    let c = KmemCache::<Obj>::builder("tc-double")
        .debug(true)
        .build()
        .unwrap();
    churn(&c, 40);
    assert!(c.stats().thread_cached_objects >= 1);
    let p = c.alloc().unwrap();
    // SAFETY: deliberately wrong: the second free must be caught before it enters the cache.
    unsafe {
        c.free(p);
        c.free(p);
    }
}

#[test]
fn double_free_on_another_thread_is_detected() {
    let c = Arc::new(
        KmemCache::<Obj>::builder("tc-double-xthread")
            .debug(true)
            .build()
            .unwrap(),
    );
    churn(&c, 40);
    let p = c.alloc().unwrap();
    // SAFETY: a live object of `c`; it now sits in this thread's cache.
    unsafe { c.free(p) };
    let addr = p.as_ptr() as usize;
    let c2 = c.clone();
    let r = std::thread::spawn(move || {
        churn(&c2, 40);
        // SAFETY: deliberately wrong: freed already on the main thread.
        unsafe { c2.free(NonNull::new(addr as *mut Obj).unwrap()) };
    })
    .join();
    let msg = r.expect_err("the second free panics");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("double free"), "{msg}");
}

#[test]
fn steals_race_with_busy_owners_without_losing_or_sharing_objects() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let c = Arc::new(KmemCache::<Obj>::builder("tc-steal-race").build().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut held: Vec<(NonNull<Obj>, u64)> = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let p = c.alloc().unwrap();
                    // SAFETY: a fresh object of ours.
                    unsafe { p.as_ptr().write([t, i, t, i, t, i, t, i]) };
                    held.push((p, i));
                    if held.len() > 40 || i % 3 != 0 {
                        let k = (i as usize * 7) % held.len();
                        let (q, j) = held.swap_remove(k);
                        // SAFETY: ours since alloc; a steal must never hand it to anyone else.
                        unsafe {
                            assert_eq!(q.as_ptr().read(), [t, j, t, j, t, j, t, j]);
                            c.free(q);
                        }
                    }
                    i += 1;
                }
                for (q, _) in held {
                    // SAFETY: live objects of ours.
                    unsafe { c.free(q) };
                }
                i
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(400);
    let mut shrinks = 0;
    while Instant::now() < deadline {
        c.shrink();
        if shrinks % 8 == 0 {
            shrink_all();
        }
        shrinks += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = workers.into_iter().map(|h| h.join().unwrap()).sum();
    let s = c.stats();
    assert_eq!(s.active_objects, 0, "{s:?}");
    assert_eq!(s.allocs, ops, "{s:?}");
    assert_eq!(s.thread_cached_objects, 0, "{s:?}");
    c.shrink();
    assert_eq!(c.stats().slabs, 0, "after {shrinks} concurrent shrinks");
}
