//! Loom model of a per-thread front channel (`chan.rs`) against a collector: the owner appends to
//! its open block and frees from its drain block inside read-side critical sections, or detaches
//! them itself, while a collector swaps them out, waits for a grace period and frees what they
//! hold (run with `RUSTFLAGS="--cfg rcu_loom"`, `LOOM_MAX_PREEMPTIONS=2`, `--release`).
//!
//! Every "free" poisons the object's loom cell after checking it was not poisoned already, and
//! counts it: an object lost (an append the collector did not see), freed twice (a drain step
//! and a collector on the same pointer), or freed while a reader may still read it (a race on
//! the cell that loom reports) fails the model.
#![cfg(rcu_loom)]

mod common_loom;

use common_loom::{check_pages, collect_slots, obj, spawn_reader, HeapPages, Obj};
use kfree_batch::raw::{stamp_stolen, Batch, Batcher, FrontChan, Processed};
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::Domain;
use rcu_core::Mode;

/// Poisons one object (the write loom checks against readers) after checking it was not freed
/// before, and counts it in the `AtomicUsize` that is the channel's context.
fn poison_one(p: *mut u8, ctx: *const ()) {
    // SAFETY: objects stay allocated until the end of the model.
    let o = unsafe { &*(p as *const Obj) };
    // SAFETY: loom checks these accesses against every other access to the cell.
    o.payload.with_mut(|v| unsafe {
        assert_ne!(*v, u64::MAX, "object freed twice");
        *v = u64::MAX;
    });
    // SAFETY: the context is the model's counter, alive until the model ends.
    unsafe { &*(ctx as *const AtomicUsize) }.fetch_add(1, Ordering::Relaxed);
}

/// The channel's free function (blocks freed by a collector or at hand-over).
unsafe fn poison(ctx: *const (), objs: &[*mut u8]) {
    for &p in objs {
        poison_one(p, ctx);
    }
}

fn no_clock() -> u64 {
    0
}

type B = Batcher<'static, HeapPages>;

fn setup(pages: usize) -> (&'static Domain, Arc<B>, Arc<AtomicUsize>, Arc<FrontChan>) {
    let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
    let b = Arc::new(Batcher::new(
        1,
        1 << 30,
        pages,
        dom,
        HeapPages::default(),
        no_clock,
    ));
    let freed = Arc::new(AtomicUsize::new(0));
    let c = Arc::new(FrontChan::new());
    c.set_key(poison, Arc::as_ptr(&freed).cast());
    (dom, b, freed, c)
}

/// What a collector pass does with fronts: steal, stamp after the swaps, wait, free.
fn collect_front(b: &B, c: &FrontChan) -> usize {
    let mut stolen = Batch::new();
    c.steal(&mut stolen, true, 0, 0);
    let mut out = Batch::new();
    let mut res = Processed::default();
    if let Some(s) = stamp_stolen(b, stolen, &mut out, 0) {
        b.domain().wait_for(s, false);
    }
    b.free_all(&mut out, &mut res);
    res.objects
}

fn free_objs(objs: &[usize]) {
    for &o in objs {
        // SAFETY: each object is dropped once, after the model's threads are done.
        unsafe { drop(Box::from_raw(o as *mut Obj)) };
    }
}

/// A reader holds the object the owner unpublishes and appends to its open block, then the
/// owner hands the block over (as when it fills up) while a collector steals it: the object is
/// freed exactly once, never inside the reader's section, whichever side gets the block — and
/// if the collector took the block before the append, the append sees no block.
#[test]
fn append_and_hand_over_race_a_collector() {
    loom::model(|| {
        let (dom, b, freed, c) = setup(1);
        let old = obj(1);
        let slot = Arc::new(AtomicPtr::new(old));
        c.open(&b, 0, false, true, 0).expect("open");
        let reader = spawn_reader(dom, slot.clone());
        let owner = {
            let (b, c, slot) = (b.clone(), c.clone(), slot.clone());
            thread::spawn(move || {
                let new = obj(2);
                let old = slot.swap(new, Ordering::AcqRel);
                let rec = dom.register();
                dom.read_lock(rec);
                // SAFETY: this thread owns the channel and holds the read lock across the call.
                let appended = unsafe { c.append(old.cast(), 8) }.is_some();
                dom.read_unlock(rec);
                dom.unregister(rec);
                if appended {
                    if let Some(mut added) = c.hand_over(&b, 0, false, false) {
                        assert!(added.take_drain().is_none());
                    }
                }
                appended
            })
        };
        let by_collector = collect_front(&b, &c);
        let appended = owner.join().unwrap();
        reader.join().unwrap();
        let by_slots = collect_slots(&b).objects;
        assert!(c.hand_over(&b, 0, false, false).is_none());
        assert_eq!(
            by_collector + by_slots,
            usize::from(appended),
            "an appended object was lost or freed twice"
        );
        assert_eq!(freed.load(Ordering::Relaxed), usize::from(appended));
        check_pages(&b);
        let last = slot.load(Ordering::Relaxed) as usize;
        free_objs(&[old as usize, last]);
    });
}

/// A ready drain block holds two objects; the owner frees one per step inside its read-side
/// sections (and detaches the block once empty) while a collector steals the block, waits for
/// a grace period and frees what is left: each object is freed exactly once.
#[test]
fn drain_steps_race_a_collector() {
    loom::model(|| {
        let (dom, b, freed, c) = setup(1);
        let objs = [obj(1), obj(2)];
        // Set-up on this thread: append both, hand the block over, let its grace period end,
        // and install it as the drain block (the owner's path after a hand-over).
        c.open(&b, 0, true, true, 0).expect("open");
        let rec = dom.register();
        dom.read_lock(rec);
        for &o in &objs {
            // SAFETY: this thread owns the channel and holds the read lock.
            assert_eq!(unsafe { c.append(o.cast(), 8) }, Some(false));
        }
        dom.read_unlock(rec);
        dom.unregister(rec);
        assert!(c.hand_over(&b, 0, true, true).is_some());
        dom.wait_for(dom.get_state(), false);
        let (installed, _) = c.refill_drain(&b, 0, 0);
        assert!(installed, "the ready block became the drain block");
        let owner = {
            let (b, c) = (b.clone(), c.clone());
            thread::spawn(move || {
                let rec = dom.register();
                let mut by_owner = 0;
                for _ in 0..2 {
                    dom.read_lock(rec);
                    // SAFETY: this thread owns the channel and holds the read lock.
                    let step = unsafe { c.drain_one(poison_one) };
                    dom.read_unlock(rec);
                    match step {
                        Some(emptied) => {
                            by_owner += 1;
                            if emptied {
                                by_owner += c.take_drain(&b).objects;
                            }
                        }
                        None => break,
                    }
                }
                dom.unregister(rec);
                by_owner
            })
        };
        let by_collector = collect_front(&b, &c);
        let by_owner = owner.join().unwrap();
        let rest = c.take_drain(&b).objects;
        assert_eq!(
            by_owner + by_collector + rest,
            2,
            "a drained object was lost"
        );
        assert_eq!(freed.load(Ordering::Relaxed), 2);
        check_pages(&b);
        free_objs(&objs.map(|o| o as usize));
    });
}
