//! The pages of a typesafe cache go back to the OS only after a grace period: a reader holding
//! `rcu_read_lock()` keeps a freed object's page mapped (and the object valid) while `shrink`
//! runs; after the reader leaves and the callbacks ran, the page is unmapped. A plain cache, for
//! contrast, unmaps at once. One test in this binary, so no other test maps memory meanwhile.
#![cfg(not(rcu_loom))]

use std::sync::mpsc;
use std::time::Duration;

use slab_backend::page::is_mapped;
use slab_backend::KmemCache;

const MAGIC: u64 = 0x0bad_c0de_1234_5678;

struct Obj {
    magic: u64,
    payload: [u64; 7],
}

fn ctor() -> Obj {
    Obj {
        magic: MAGIC,
        payload: [0; 7],
    }
}

#[test]
fn typesafe_pages_unmapped_only_after_grace_period() {
    let cache = KmemCache::<Obj>::builder("tsu-cache")
        .typesafe_by_rcu(true)
        .ctor(ctor)
        .build()
        .unwrap();
    let per_slab = cache.stats().objects_per_slab;
    let ps: Vec<_> = (0..4 * per_slab).map(|_| cache.alloc().unwrap()).collect();
    let watched = ps[ps.len() / 2].as_ptr() as usize;

    let (to_main, main_rx) = mpsc::channel::<()>();
    let (to_reader, reader_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let g = rcu_core::rcu_read_lock();
        // The reader "found" `watched` under RCU.
        to_main.send(()).unwrap();
        reader_rx.recv().unwrap();
        // Everything was freed and shrunk meanwhile: the memory is still a valid Obj.
        // SAFETY: typesafe cache, same read-side critical section as the lookup.
        let o = unsafe { &*(watched as *const Obj) };
        assert_eq!(o.magic, MAGIC);
        assert_eq!(o.payload[6], 6);
        drop(g);
    });
    main_rx.recv().unwrap();
    for p in &ps {
        // SAFETY: live objects we own; leave them in a valid state.
        unsafe {
            (*p.as_ptr()).payload[6] = 6;
            cache.free(*p);
        }
    }
    let released = cache.shrink();
    assert!(released > 0);
    std::thread::sleep(Duration::from_millis(200));
    let s = cache.stats();
    assert!(s.rcu_pending_slabs > 0, "{s:?}");
    assert!(
        is_mapped(watched as *const u8),
        "page unmapped while a reader is in its critical section"
    );
    to_reader.send(()).unwrap();
    reader.join().unwrap();
    rcu_core::rcu_barrier();
    let s = cache.stats();
    assert_eq!(s.rcu_pending_slabs, 0, "{s:?}");
    assert_eq!(s.slabs, 0);
    assert!(
        !is_mapped(watched as *const u8),
        "after the grace period the page went back to the OS"
    );

    // Contrast: a plain cache unmaps on shrink, without waiting.
    let plain = KmemCache::<Obj>::builder("tsu-plain")
        .ctor(ctor)
        .build()
        .unwrap();
    let ps: Vec<_> = (0..4 * per_slab).map(|_| plain.alloc().unwrap()).collect();
    let w = ps[ps.len() / 2].as_ptr() as usize;
    // SAFETY: live objects of `plain`.
    unsafe { plain.free_bulk(&ps) };
    plain.shrink();
    assert!(!is_mapped(w as *const u8));
}
