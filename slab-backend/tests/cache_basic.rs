//! KmemCache basics: ctor once per object, bulk free, stats, shrink, cross-thread use, slabinfo.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use slab_backend::{is_slab_object, slabinfo, KmemCache};

#[test]
fn ctor_runs_once_per_object_not_on_alloc() {
    static CTOR_CALLS: AtomicUsize = AtomicUsize::new(0);
    struct Obj {
        id: usize,
        uses: u64,
    }
    fn ctor() -> Obj {
        Obj {
            id: CTOR_CALLS.fetch_add(1, Ordering::Relaxed),
            uses: 0,
        }
    }
    let c = KmemCache::<Obj>::builder("t-ctor-once")
        .ctor(ctor)
        .build()
        .unwrap();
    let per_slab = c.stats().objects_per_slab;
    let n = 3 * per_slab;
    for round in 0..3 {
        let ps: Vec<NonNull<Obj>> = (0..n).map(|_| c.alloc().unwrap()).collect();
        for p in &ps {
            // SAFETY: live, ctor-initialised objects we own.
            unsafe { (*p.as_ptr()).uses += 1 };
        }
        // SAFETY: each is a live object of `c`, freed once.
        unsafe { c.free_bulk(&ps) };
        let s = c.stats();
        assert_eq!(
            CTOR_CALLS.load(Ordering::Relaxed),
            s.slabs_created as usize * per_slab,
            "round {round}: the ctor runs exactly once per object of every slab made"
        );
    }
    // Reuse kept the objects' state: the total of `uses` is 3n and ids are distinct.
    let ps: Vec<NonNull<Obj>> = (0..n).map(|_| c.alloc().unwrap()).collect();
    // SAFETY: live, ctor-initialised objects we own.
    let mut ids: Vec<usize> = ps.iter().map(|p| unsafe { (*p.as_ptr()).id }).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n);
    // SAFETY: as above.
    let uses: u64 = ps.iter().map(|p| unsafe { (*p.as_ptr()).uses }).sum();
    assert!(
        uses > 0,
        "reused objects keep the state their last user left"
    );
    // SAFETY: live objects of `c`.
    unsafe { c.free_bulk(&ps) };
}

#[test]
fn stats_and_shrink() {
    let c = KmemCache::<[u64; 8]>::builder("t-stats").build().unwrap();
    let per_slab = c.stats().objects_per_slab;
    let ps: Vec<_> = (0..4 * per_slab).map(|_| c.alloc().unwrap()).collect();
    let s = c.stats();
    assert_eq!(s.active_objects, 4 * per_slab);
    assert!(s.slabs >= 4, "{s:?}");
    assert_eq!(s.object_size, 64);
    // SAFETY: live objects of `c`.
    unsafe { c.free_bulk(&ps) };
    let s = c.stats();
    assert_eq!(s.active_objects, 0);
    // Frees already gave back empty slabs beyond the node's reserve; shrink returns the rest.
    let released = c.shrink();
    assert!(released >= 1, "released {released}");
    let s = c.stats();
    assert_eq!(s.slabs, 0, "{s:?}");
    assert_eq!(s.cpu_cached_objects, 0);
    assert_eq!(s.slabs_freed, s.slabs_created);
}

#[test]
fn plain_cache_shrink_returns_pages_at_once() {
    let c = KmemCache::<[u8; 512]>::builder("t-plain-unmap")
        .build()
        .unwrap();
    let ps: Vec<_> = (0..200).map(|_| c.alloc().unwrap()).collect();
    let first = ps[0].as_ptr().cast::<u8>();
    assert!(is_slab_object(first));
    // SAFETY: live objects of `c`.
    unsafe { c.free_bulk(&ps) };
    c.shrink();
    assert_eq!(c.stats().slabs, 0);
    assert!(!is_slab_object(first), "the slab went back to the OS");
}

#[test]
fn producer_consumer_across_threads() {
    let c = Arc::new(
        KmemCache::<[u64; 8]>::builder("t-prodcons")
            .build()
            .unwrap(),
    );
    let (tx, rx) = mpsc::sync_channel::<usize>(1024);
    let deadline = Instant::now() + Duration::from_millis(500);
    let prod = {
        let c = c.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while Instant::now() < deadline && n < 2_000_000 {
                let p = c.alloc().unwrap();
                // SAFETY: 64 fresh bytes of ours.
                unsafe { p.as_ptr().write([n; 8]) };
                tx.send(p.as_ptr() as usize).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut got = 0u64;
    for addr in rx {
        let p = NonNull::new(addr as *mut [u64; 8]).unwrap();
        // SAFETY: the producer initialised it and handed it over through the channel.
        let v = unsafe { p.as_ptr().read() };
        assert_eq!(v, [got; 8], "objects arrive intact and in order");
        // SAFETY: a live object of `c`, ours now.
        unsafe { c.free(p) };
        got += 1;
    }
    assert_eq!(prod.join().unwrap(), got);
    assert_eq!(c.stats().active_objects, 0);
}

#[test]
fn threads_never_share_an_object() {
    let c = Arc::new(
        KmemCache::<[usize; 4]>::builder("t-exclusive")
            .build()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_millis(400);
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut i = 0usize;
                while Instant::now() < deadline && i < 1_000_000 {
                    let p = c.alloc().unwrap();
                    // SAFETY: fresh object of ours.
                    unsafe { p.as_ptr().write([t, i, t, i]) };
                    held.push((p, i));
                    if held.len() > 50 || i % 3 == 0 {
                        let k = i % held.len();
                        let (q, j) = held.swap_remove(k);
                        // SAFETY: ours since alloc; nobody else may have written it.
                        unsafe {
                            assert_eq!(q.as_ptr().read(), [t, j, t, j]);
                            c.free(q);
                        }
                    }
                    i += 1;
                }
                for (q, _) in held {
                    // SAFETY: live objects of ours.
                    unsafe { c.free(q) };
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(c.stats().active_objects, 0);
}

#[test]
fn slabinfo_lists_live_caches() {
    let c = KmemCache::<u64>::builder("t-slabinfo").build().unwrap();
    let p = c.alloc().unwrap();
    let _k = slab_backend::kmalloc(64).unwrap();
    let info = slabinfo();
    assert!(info.starts_with("slabinfo - version: 2.1"));
    assert!(info.contains("t-slabinfo"), "{info}");
    assert!(info.contains("kmalloc-64"), "{info}");
    // SAFETY: live objects.
    unsafe {
        c.free(p);
        slab_backend::kfree(_k);
    }
    drop(c);
    assert!(!slabinfo().contains("t-slabinfo"));
}
