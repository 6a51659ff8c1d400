//! Loom model of what a barrier waits for (run with `RUSTFLAGS="--cfg rcu_loom"`,
//! `LOOM_MAX_PREEMPTIONS=2`, `--release`): a front's owner hands its block over and, in the same
//! locked hand-over, takes a ready block of its slot to recycle and another to free itself — the
//! blocks it holds privately until it installs or frees them — while a barrier stops such
//! detaching, waits for the blocks held, steals the fronts and collects the slots. When the
//! barrier returns, every object retired before it (all of them: the set-up happens-before both
//! threads) must be freed, whichever way the two interleave.
#![cfg(rcu_loom)]

#[allow(dead_code)] // this model uses only part of it
mod common_loom;

use common_loom::{check_pages, collect_slots, obj, HeapPages, Obj};
use kfree_batch::raw::{stamp_stolen, Batch, Batcher, FrontChan, Processed, Put};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::Domain;
use rcu_core::Mode;

/// Poisons each object after checking it was not freed before, and counts it in the
/// `AtomicUsize` that is the channel's context.
unsafe fn poison(ctx: *const (), objs: &[*mut u8]) {
    for &p in objs {
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
}

fn no_clock() -> u64 {
    0
}

type B = Batcher<'static, HeapPages>;

/// A barrier: no more detaching, wait for the held blocks, steal the fronts (stamped after the
/// swaps), collect the slots, free everything after the grace period.
fn barrier(b: &B, fronts: &[&FrontChan]) -> usize {
    b.barrier_begin();
    let mut stolen = Batch::new();
    for c in fronts {
        c.steal(&mut stolen, true, 0, 0);
    }
    let mut out = Batch::new();
    let mut res = Processed::default();
    if let Some(s) = stamp_stolen(b, stolen, &mut out, 0) {
        b.domain().wait_for(s, false);
    }
    b.free_all(&mut out, &mut res);
    let by_slots = collect_slots(b).objects;
    b.barrier_end();
    res.objects + by_slots
}

/// Set-up (one thread): a ready `inline_free` block of channel `c` and a ready block of
/// channel `d` handed to the slot, and an open block of `c` holding one object. Then the owner
/// hands that block over (taking the first back to recycle and the second to free) while a
/// barrier runs: when the barrier returns the three objects are freed.
#[test]
fn barrier_waits_for_blocks_a_producer_holds() {
    loom::model(|| {
        let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
        let b = Arc::new(Batcher::new(
            1,
            1 << 30,
            4,
            dom,
            HeapPages::default(),
            no_clock,
        ));
        let freed = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::as_ptr(&freed).cast::<()>();
        let c = Arc::new(FrontChan::new());
        c.set_key(poison, ctx);
        // A second front channel whose blocks are not `inline_free` (freed, not recycled).
        let d = FrontChan::new();
        d.set_key(poison, ctx);
        let objs = [obj(1), obj(2), obj(3)];
        let rec = dom.register();
        let append = |ch: &FrontChan, o: *mut Obj| {
            dom.read_lock(rec);
            // SAFETY: this thread owns the channel and holds the read lock.
            let put = unsafe { ch.put(o.cast(), 8, true) };
            dom.read_unlock(rec);
            assert_eq!(put, Put::Appended { full: false });
        };
        c.open(&b, 0, poison, true, true, 0).expect("open");
        append(&c, objs[0]);
        assert!(c.hand_over(&b, 0, false, false).is_some());
        d.open(&b, 0, poison, false, true, 0).expect("open");
        append(&d, objs[1]);
        assert!(d.hand_over(&b, 0, false, false).is_some());
        dom.wait_for(dom.get_state(), false);
        c.open(&b, 0, poison, true, true, 0).expect("open");
        append(&c, objs[2]);
        dom.unregister(rec);
        let owner = {
            let (b, c) = (b.clone(), c.clone());
            thread::spawn(move || {
                let Some(mut added) = c.hand_over(&b, 0, true, true) else {
                    return; // the barrier stole the block
                };
                if let Some(back) = added.take_recycle() {
                    c.install(&b, back, 0);
                }
                let mut res = Processed::default();
                b.free_detached(&mut added, &mut res);
            })
        };
        let by_barrier = barrier(&b, &[&c]);
        assert_eq!(
            freed.load(Ordering::Relaxed),
            3,
            "the barrier returned before every object was freed (it freed {by_barrier})"
        );
        owner.join().unwrap();
        assert!(c.hand_over(&b, 0, false, false).is_none());
        check_pages(&b);
        for o in objs {
            // SAFETY: each object is dropped once, after the model's threads are done.
            unsafe { drop(Box::from_raw(o)) };
        }
    });
}
