//! Readers check that objects retired through `kfree_rcu` (headless), `kfree_rcu_head` and
//! `kfree_rcu_cache` are never freed inside their critical section. Each object carries an id;
//! its destructor (run by the batcher after the grace period) marks `DEAD[id]`; readers check the
//! mark of what they hold at the start and end of their section. Bounded in time and count.
#![cfg(not(rcu_loom))]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfree_batch::{
    impl_has_rcu_head, kfree_rcu, kfree_rcu_cache, kfree_rcu_head, kvfree_rcu_barrier, RcuHead,
};
use rcu_core::rcu_read_lock;
use slab_backend::KmemCache;

mod common;

const MAX_IDS: usize = 1 << 21;
static DEAD: [AtomicBool; MAX_IDS] = [const { AtomicBool::new(false) }; MAX_IDS];
static DROPS: AtomicU64 = AtomicU64::new(0);

struct Obj {
    id: usize,
    head: RcuHead,
    pad: [u64; 2],
}
impl_has_rcu_head!(Obj, head);

impl Drop for Obj {
    fn drop(&mut self) {
        if self.id != usize::MAX {
            DEAD[self.id].store(true, Ordering::Relaxed);
            DROPS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn obj(id: usize) -> Obj {
    Obj {
        id,
        head: RcuHead::new(),
        pad: [id as u64; 2],
    }
}

#[test]
fn kfree_rcu_never_frees_inside_a_reader() {
    const SLOTS: usize = 16;
    let cache = Arc::new(
        KmemCache::<Obj>::builder("kfree-torture-objs")
            .ctor(|| obj(usize::MAX))
            .build()
            .unwrap(),
    );
    let next_id = Arc::new(AtomicUsize::new(0));
    let new_id = {
        let n = next_id.clone();
        move || {
            let id = n.fetch_add(1, Ordering::Relaxed);
            assert!(id < MAX_IDS, "id space exhausted");
            id
        }
    };
    // Slots hold either a Box<Obj> or a cache object (tagged in the low bit). Cache objects are
    // fully overwritten with a new id when allocated, so reuse before a grace period is visible.
    let rd = common::Readers::new(
        (0..SLOTS)
            .map(|_| AtomicPtr::new(Box::into_raw(Box::new(obj(new_id())))))
            .collect(),
    );
    let readers = common::spawn_readers(
        &rd,
        |p| (p as usize & !1) as *const Obj,
        |o| o.id,
        |o, &id| DEAD[id].load(Ordering::Relaxed) || o.id != id || o.pad[0] != id as u64,
    );
    let common::Readers {
        slots,
        stop,
        errors,
        reads,
    } = rd;

    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (slots, stop, cache, new_id) =
                (slots.clone(), stop.clone(), cache.clone(), new_id.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 400_000 {
                    n += 1;
                    let kind = (n as usize + w) % 3;
                    let id = new_id();
                    let newp: *mut Obj = if kind == 2 {
                        let c = cache.alloc().expect("cache alloc");
                        // SAFETY: a fresh object from the cache (ctor-initialised), ours.
                        unsafe { c.as_ptr().write(obj(id)) };
                        (c.as_ptr() as usize | 1) as *mut Obj
                    } else {
                        Box::into_raw(Box::new(obj(id)))
                    };
                    let old = slots[(n as usize * 7 + w) % SLOTS].swap(newp, Ordering::AcqRel);
                    if old as usize & 1 == 1 {
                        let o = NonNull::new((old as usize & !1) as *mut Obj).unwrap();
                        // SAFETY: `o` came from `cache`, is unpublished and retired once. Cache
                        // frees run no destructor: a premature free shows up as the object being
                        // reallocated (its id changing) inside a reader's section.
                        unsafe { kfree_rcu_cache(&cache, o) };
                    } else {
                        // SAFETY: `old` is an unpublished Box<Obj>.
                        let b = unsafe { Box::from_raw(old) };
                        if n % 2 == 0 {
                            kfree_rcu(b);
                        } else {
                            kfree_rcu_head(b);
                        }
                    }
                }
                n
            })
        })
        .collect();

    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let n: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    for r in readers {
        r.join().unwrap();
    }
    kvfree_rcu_barrier();
    let st = kfree_batch::stats();
    eprintln!(
        "kfree torture: {n} retires, {} reads, {} drops, stats {st:?}",
        reads.load(Ordering::Relaxed),
        DROPS.load(Ordering::Relaxed)
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "a reader saw an object freed inside its section"
    );
    assert!(reads.load(Ordering::Relaxed) > 1000);
    assert!(n > 1000);
    assert_eq!(
        st.queued, st.freed,
        "after the barrier everything retired is freed"
    );
    for s in slots.iter() {
        let p = s.load(Ordering::Relaxed);
        if p as usize & 1 == 1 {
            // SAFETY: a live cache object, freed once at the end.
            unsafe { cache.free(NonNull::new((p as usize & !1) as *mut Obj).unwrap()) };
        } else {
            // SAFETY: a live box, freed once.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// A thread retires objects into its partial front block and stays idle; a reader still holds one
/// of them; `kvfree_rcu_barrier` on another thread takes (steals) the front block. The object must
/// stay alive until the reader's guard drops, and be freed once the barrier returns.
#[test]
fn stolen_front_block_waits_for_readers() {
    let base = 1 << 20; // ids disjoint from the other test's
    let obj_ptr = std::sync::Arc::new(AtomicPtr::new(std::ptr::null_mut::<Obj>()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (retired_tx, retired_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The reader takes its guard, loads the object, then waits for the retire to happen.
    let p = obj_ptr.clone();
    let reader = std::thread::spawn(move || {
        let g = rcu_read_lock();
        ready_tx.send(()).unwrap();
        retired_rx.recv().unwrap();
        let o = p.load(Ordering::Acquire);
        // SAFETY: the object was retired after this critical section began, so RCU keeps it alive
        // until the guard drops (the writer leaves the stale pointer in `p` only so that this
        // test can reach it; it does not own the object any more).
        let id = unsafe { &*o }.id;
        std::thread::sleep(Duration::from_millis(200)); // the barrier runs meanwhile
        let alive = !DEAD[id].load(Ordering::Relaxed);
        drop(g);
        alive
    });
    let p = obj_ptr.clone();
    let writer = std::thread::spawn(move || {
        let o = Box::into_raw(Box::new(obj(base)));
        p.store(o, Ordering::Release);
        ready_rx.recv().unwrap(); // the reader is inside its section
                                  // Unpublish and retire into this thread's front block (partial: one object).
        let o = p.swap(std::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: unpublished box.
        kfree_rcu(unsafe { Box::from_raw(o) });
        // Keep the pointer readable for the reader (it loaded it before the swap in real use;
        // here it re-reads the stale value we restore without ownership).
        p.store(o, Ordering::Release);
        retired_tx.send(()).unwrap();
        done_rx.recv().unwrap(); // stay alive (idle) so the block is only reachable by stealing
    });
    std::thread::sleep(Duration::from_millis(50));
    kvfree_rcu_barrier(); // steals the writer's front block; must wait for the reader
    assert!(
        DEAD[base].load(Ordering::Relaxed),
        "the barrier returned before freeing the object"
    );
    assert!(
        reader.join().unwrap(),
        "the object was freed while a reader held it"
    );
    done_tx.send(()).unwrap();
    writer.join().unwrap();
}
