//! Loom model of the block hand-off between enqueue, collection and the grace period (run with
//! `RUSTFLAGS="--cfg rcu_loom"`, `LOOM_MAX_PREEMPTIONS=2`, `--release`).
//!
//! A reader may hold the object a producer unpublishes and batches; the collector detaches the
//! block (at any point relative to the enqueue), frees what is ready, waits for the newest
//! snapshot and frees the rest. The "free" writes the object's loom cell, so a free that is not
//! ordered after the reader's access is a data race loom reports.
#![cfg(rcu_loom)]

mod common_loom;

use common_loom::{check_pages, collect_slots, obj, spawn_reader, HeapPages, Obj};
use kfree_batch::raw::{Batcher, Retired};
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::Domain;
use rcu_core::Mode;

/// The model's free function: poisons each object (the write loom checks) and counts it in the
/// `AtomicUsize` passed as the channel context.
unsafe fn poison(ctx: *const (), objs: &[*mut u8]) {
    for &p in objs {
        // SAFETY: objects stay allocated until the end of the model.
        let o = unsafe { &*(p as *const Obj) };
        // SAFETY: loom checks this write against the reader's read.
        o.payload.with_mut(|v| unsafe { *v = u64::MAX });
        // SAFETY: the context is the model's counter, alive until the model ends.
        unsafe { &*(ctx as *const AtomicUsize) }.fetch_add(1, Ordering::Relaxed);
    }
}

fn no_clock() -> u64 {
    0
}

#[test]
fn block_hand_off() {
    loom::model(|| {
        let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
        let b = Arc::new(Batcher::new(
            2,
            1 << 30,
            1,
            dom,
            HeapPages::default(),
            no_clock,
        ));
        let freed = Arc::new(AtomicUsize::new(0));
        let ctx = &*freed as *const AtomicUsize as usize;
        let a = obj(1);
        let slot = Arc::new(AtomicPtr::new(a));
        let reader = spawn_reader(dom, slot.clone());
        let producer = {
            let (b, slot) = (b.clone(), slot.clone());
            thread::spawn(move || {
                let n = obj(2);
                let old = slot.swap(n, Ordering::AcqRel);
                b.enqueue(
                    0,
                    Retired {
                        obj: old.cast(),
                        size: 8,
                        free: poison,
                        ctx: ctx as *const (),
                        inline_free: false,
                    },
                    true,
                    false,
                )
                .expect("enqueue");
            })
        };
        // The collector runs once concurrently with the producer, once after it.
        let first = collect_slots(&b);
        producer.join().unwrap();
        let second = collect_slots(&b);
        reader.join().unwrap();
        assert_eq!(
            first.objects + second.objects,
            1,
            "the object was freed exactly once"
        );
        assert_eq!(freed.load(Ordering::Relaxed), 1);
        check_pages(&b);
        let last = slot.load(Ordering::Relaxed);
        // SAFETY: both objects are freed once here.
        unsafe {
            drop(Box::from_raw(a));
            drop(Box::from_raw(last));
        }
    });
}

/// Two producers race for the same CPU slot: one takes the try-lock, the other moves to the
/// second slot (never waits on a held one); both objects are batched and freed once.
#[test]
fn contended_slot_moves_to_another() {
    loom::model(|| {
        let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
        let b = Arc::new(Batcher::new(
            2,
            1 << 30,
            0,
            dom,
            HeapPages::default(),
            no_clock,
        ));
        let freed = Arc::new(AtomicUsize::new(0));
        let ctx = &*freed as *const AtomicUsize as usize;
        let objs: Vec<usize> = (0..2).map(|i| obj(i as u64) as usize).collect();
        let done = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = objs
            .iter()
            .map(|&o| {
                let (b, done) = (b.clone(), done.clone());
                thread::spawn(move || {
                    b.enqueue(
                        0,
                        Retired {
                            obj: o as *mut u8,
                            size: 8,
                            free: poison,
                            ctx: ctx as *const (),
                            inline_free: false,
                        },
                        true,
                        false,
                    )
                    .expect("enqueue");
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let res = collect_slots(&b);
        assert_eq!(res.objects, 2);
        assert_eq!(freed.load(Ordering::Relaxed), 2);
        check_pages(&b);
        assert_eq!(done.load(Ordering::Relaxed), 2);
        for o in objs {
            // SAFETY: freed once.
            unsafe { drop(Box::from_raw(o as *mut Obj)) };
        }
    });
}
