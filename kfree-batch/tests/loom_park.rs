//! Loom model of the park slot's claim protocol (run with `RUSTFLAGS="--cfg rcu_loom"`,
//! `LOOM_MAX_PREEMPTIONS=2`, `--release`).
//!
//! The owner parks an object, drains its slot after the grace period and refills the slot with a
//! second object *at the same address* (the allocator handed the memory back), while a collector
//! tries to free the slot concurrently. Each parking has its own context recording its state:
//! the free function checks that the state had completed and counts the free. A freer that
//! claimed with a stale look at the first parking and freed the second one early (no re-check
//! after the claim), or two freers freeing one parking, fail the model.
#![cfg(rcu_loom)]

use kfree_batch::raw::ParkSlot;
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::Domain;
use rcu_core::{GpSeq, Mode};

/// One parking: the state its object waits for and how often it was freed.
struct Parking {
    dom: &'static Domain,
    snap: AtomicU64,
    frees: AtomicUsize,
}

/// The model's free function: the context is the parking.
unsafe fn check_and_count(ctx: *const (), objs: &[*mut u8]) {
    // SAFETY: the context is a `Parking` alive until the end of the model.
    let p = unsafe { &*(ctx as *const Parking) };
    assert_eq!(objs.len(), 1);
    assert!(
        p.dom.poll(GpSeq::from_raw(p.snap.load(Ordering::Relaxed))),
        "a parked object was freed before its grace period"
    );
    p.frees.fetch_add(1, Ordering::Relaxed);
}

fn parking(dom: &'static Domain) -> Arc<Parking> {
    Arc::new(Parking {
        dom,
        snap: AtomicU64::new(0),
        frees: AtomicUsize::new(0),
    })
}

/// Parks `obj` for `p` with a fresh state of `dom`.
fn park(slot: &ParkSlot, dom: &Domain, obj: *mut u8, p: &Arc<Parking>) {
    let snap = dom.get_state();
    p.snap.store(snap.raw(), Ordering::Relaxed);
    let ctx = Arc::as_ptr(p).cast::<()>();
    assert!(slot.fill(obj, check_and_count, ctx, snap, 8), "slot busy");
}

#[test]
fn owner_drain_refill_races_a_collector() {
    loom::model(|| {
        let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
        let slot = Arc::new(ParkSlot::new());
        // One address for both objects: the allocator reused the first one's memory.
        let obj = Box::into_raw(Box::new(0u64)).cast::<u8>();
        let obj_addr = obj as usize;
        let (first, second) = (parking(dom), parking(dom));
        park(&slot, dom, obj, &first);
        // A read-modify-write at the start of each freer: loom's exploration branches on
        // conflicting writes, and the freers' first accesses to the slot are loads.
        let start = Arc::new(AtomicUsize::new(0));
        let owner = {
            let (slot, first, second) = (slot.clone(), first.clone(), second.clone());
            let start = start.clone();
            thread::spawn(move || {
                start.fetch_add(1, Ordering::Relaxed);
                // The owner's drain: one grace period, then free what is done.
                dom.wait_for(GpSeq::from_raw(first.snap.load(Ordering::Relaxed)), false);
                // SAFETY: the objects are retired ids the free function only counts.
                unsafe { slot.free_if_done(dom, false) };
                // Refill once the slot is empty (a collector may still hold it).
                let refilled = slot.is_empty();
                if refilled {
                    park(&slot, dom, obj_addr as *mut u8, &second);
                }
                refilled
            })
        };
        // The collector, concurrently.
        start.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        let by_collector = unsafe { slot.free_if_done(dom, true) };
        let refilled = owner.join().unwrap();
        // Finish: whatever is parked is freed once its state completes.
        for p in [&first, &second] {
            dom.wait_for(GpSeq::from_raw(p.snap.load(Ordering::Relaxed)), false);
        }
        // SAFETY: as above.
        unsafe { slot.free_if_done(dom, true) };
        assert_eq!(
            first.frees.load(Ordering::Relaxed),
            1,
            "the first parking was not freed exactly once (collector freed: {by_collector:?})"
        );
        assert_eq!(
            second.frees.load(Ordering::Relaxed),
            usize::from(refilled),
            "the second parking was not freed exactly once"
        );
        assert!(slot.is_empty(), "an object left parked");
        // SAFETY: allocated above, never really freed by the model.
        unsafe { drop(Box::from_raw(obj.cast::<u64>())) };
    });
}
