//! SLAB_TYPESAFE_BY_RCU: reuse within a grace period is caught by revalidation, and readers that
//! hold pointers to objects that are freed, reused and whose cache is shrunk never see anything
//! but a valid, ctor-initialised object.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rcu_core::rcu_read_lock;
use slab_backend::KmemCache;

const MAGIC: u64 = 0x7e57_cafe_f00d_0001;

/// A type-stable object: refcount (0 = free), key, and a ctor-written magic no user touches.
struct Obj {
    refcnt: AtomicUsize,
    key: AtomicU64,
    magic: u64,
}

fn ctor() -> Obj {
    Obj {
        refcnt: AtomicUsize::new(0),
        key: AtomicU64::new(0),
        magic: MAGIC,
    }
}

fn typesafe_cache(name: &str) -> KmemCache<Obj> {
    KmemCache::builder(name)
        .typesafe_by_rcu(true)
        .ctor(ctor)
        .build()
        .unwrap()
}

/// Initialises `p` for `key` and publishes its refcount (release: pairs with `get`'s acquire).
fn publish(p: NonNull<Obj>, key: u64) {
    // SAFETY: a ctor-initialised object we own.
    let o = unsafe { p.as_ref() };
    assert_eq!(o.refcnt.load(Ordering::Relaxed), 0);
    o.key.store(key, Ordering::Relaxed);
    o.refcnt.store(1, Ordering::Release);
}

/// `inc_not_zero` with Acquire, then the identity recheck. `Ok` holds a reference.
fn get(o: &Obj, key: u64) -> Result<(), &'static str> {
    assert_eq!(o.magic, MAGIC, "memory stopped being a valid Obj");
    let mut c = o.refcnt.load(Ordering::Relaxed);
    loop {
        if c == 0 {
            return Err("free");
        }
        match o
            .refcnt
            .compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => break,
            Err(now) => c = now,
        }
    }
    if o.key.load(Ordering::Relaxed) != key {
        o.refcnt.fetch_sub(1, Ordering::Release);
        return Err("reused");
    }
    Ok(())
}

/// Drops a reference; the last one frees the object back in its ctor state.
fn put(cache: &KmemCache<Obj>, p: NonNull<Obj>) {
    // SAFETY: the caller holds a reference, so the object is live.
    let o = unsafe { p.as_ref() };
    if o.refcnt.fetch_sub(1, Ordering::Release) == 1 {
        // Acquire: pairs with the Release decrements of the other reference holders.
        std::sync::atomic::fence(Ordering::Acquire);
        o.key.store(0, Ordering::Relaxed);
        // SAFETY: last reference gone; back in the ctor state.
        unsafe { cache.free(p) };
    }
}

#[test]
fn reuse_within_one_grace_period_is_rejected_by_revalidation() {
    let cache = Arc::new(typesafe_cache("ts-reuse"));
    let table = Arc::new(AtomicPtr::<Obj>::new(core::ptr::null_mut()));
    let mut caught = 0;
    for _attempt in 0..20 {
        let p = cache.alloc().unwrap();
        publish(p, 1);
        table.store(p.as_ptr(), Ordering::Release);
        let (to_writer, writer_rx) = mpsc::channel::<()>();
        let (to_reader, reader_rx) = mpsc::channel::<usize>();
        let writer = {
            let (cache, table) = (cache.clone(), table.clone());
            std::thread::spawn(move || {
                writer_rx.recv().unwrap();
                // Unpublish and free key 1, then allocate at once (same CPU slot: LIFO reuse)
                // and publish key 2 — all while the reader is inside its critical section.
                let old =
                    NonNull::new(table.swap(core::ptr::null_mut(), Ordering::AcqRel)).unwrap();
                put(&cache, old);
                let new = cache.alloc().unwrap();
                publish(new, 2);
                table.store(new.as_ptr(), Ordering::Release);
                to_reader.send(new.as_ptr() as usize).unwrap();
            })
        };
        let guard = rcu_read_lock();
        let stale = table.load(Ordering::Acquire);
        to_writer.send(()).unwrap();
        let new = reader_rx.recv().unwrap();
        // SAFETY: typesafe cache and we are inside a read-side critical section that began before
        // the free: the memory is a valid Obj.
        let o = unsafe { &*stale };
        let r = get(o, 1);
        drop(guard);
        writer.join().unwrap();
        if new == stale as usize {
            assert_eq!(
                r,
                Err("reused"),
                "revalidation must reject the recycled object"
            );
            caught += 1;
        } else {
            assert_eq!(r, Err("free"));
        }
        let cur = NonNull::new(table.swap(core::ptr::null_mut(), Ordering::AcqRel)).unwrap();
        put(&cache, cur);
        if caught >= 3 {
            break;
        }
    }
    assert!(
        caught >= 1,
        "the object was never reused within the grace period"
    );
}

#[test]
fn readers_survive_free_reuse_and_shrink() {
    const SLOTS: usize = 256;
    let cache = Arc::new(typesafe_cache("ts-stress"));
    let table: Arc<Vec<AtomicPtr<Obj>>> = Arc::new(
        (0..SLOTS)
            .map(|_| AtomicPtr::new(core::ptr::null_mut()))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let races = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let (cache, table, stop, races, hits) = (
                cache.clone(),
                table.clone(),
                stop.clone(),
                races.clone(),
                hits.clone(),
            );
            std::thread::spawn(move || {
                let mut i = t * 7;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 20_000_000 {
                    i = (i + 13) % SLOTS;
                    let g = rcu_read_lock();
                    let Some(p) = NonNull::new(table[i].load(Ordering::Acquire)) else {
                        continue;
                    };
                    // SAFETY: typesafe cache, inside a read-side critical section.
                    let o = unsafe { p.as_ref() };
                    // Linger a little so frees, reuse and shrink happen under us.
                    std::hint::black_box(o.key.load(Ordering::Relaxed));
                    match get(o, i as u64 + 1) {
                        Ok(()) => {
                            hits.fetch_add(1, Ordering::Relaxed);
                            drop(g);
                            put(&cache, p);
                        }
                        Err("reused") => {
                            races.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut rounds = 0;
    while Instant::now() < deadline && rounds < 10_000 {
        // Fill every slot, then empty them all and shrink, so whole slabs go back under readers.
        for (i, slot) in table.iter().enumerate() {
            let p = cache.alloc().unwrap();
            publish(p, i as u64 + 1);
            slot.store(p.as_ptr(), Ordering::Release);
        }
        for slot in table.iter() {
            let p = NonNull::new(slot.swap(core::ptr::null_mut(), Ordering::AcqRel)).unwrap();
            put(&cache, p);
        }
        cache.shrink();
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let s = cache.stats();
    eprintln!(
        "rounds {rounds}, hits {}, reuse races caught {}, stats {s:?}",
        hits.load(Ordering::Relaxed),
        races.load(Ordering::Relaxed)
    );
    assert!(rounds > 0);
    assert!(
        s.slabs_freed > 0 || s.rcu_pending_slabs > 0,
        "shrink must have released slabs under the readers"
    );
    // Destroy waits for the pending RCU releases.
    Arc::try_unwrap(cache).unwrap().destroy().unwrap();
}
