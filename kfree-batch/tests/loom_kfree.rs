//! Loom model of the block hand-off between enqueue, collection and the grace period (run with
//! `RUSTFLAGS="--cfg rcu_loom"`, `LOOM_MAX_PREEMPTIONS=2`, `--release`).
//!
//! A reader may hold the object a producer unpublishes and batches; the collector detaches the
//! block (at any point relative to the enqueue), frees what is ready, waits for the newest
//! snapshot and frees the rest. The "free" writes the object's loom cell, so a free that is not
//! ordered after the reader's access is a data race loom reports.
#![cfg(rcu_loom)]

use std::ptr::NonNull;

use kfree_batch::raw::{Batch, Batcher, Pages, Processed, Retired};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::Domain;
use rcu_core::Mode;

struct Obj {
    payload: UnsafeCell<u64>,
}

/// Pages from the heap (the page layer is not part of the model).
struct HeapPages;
impl Pages for HeapPages {
    fn alloc(&self) -> Option<NonNull<u8>> {
        let l = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: non-zero size layout.
        NonNull::new(unsafe { std::alloc::alloc_zeroed(l) })
    }
    unsafe fn free(&self, p: NonNull<u8>) {
        let l = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: `p` came from `alloc` with the same layout.
        unsafe { std::alloc::dealloc(p.as_ptr(), l) }
    }
}

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

fn drain(b: &Batcher<'static, HeapPages>) -> Processed {
    let mut batch = Batch::new();
    b.collect(&mut batch, true, 0, 0);
    let mut res = Processed::default();
    let (mut later, newest) = b.free_ready(&mut batch, &mut res);
    if let Some(s) = newest {
        b.domain().wait_for(s, false);
    }
    b.free_all(&mut later, &mut res);
    res
}

#[test]
fn block_hand_off() {
    loom::model(|| {
        let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
        let b = Arc::new(Batcher::new(2, 1 << 30, 1, dom, HeapPages, no_clock));
        let freed = Arc::new(AtomicUsize::new(0));
        let ctx = &*freed as *const AtomicUsize as usize;
        let a = Box::into_raw(Box::new(Obj {
            payload: UnsafeCell::new(1),
        }));
        let slot = Arc::new(AtomicPtr::new(a));
        let reader = {
            let slot = slot.clone();
            thread::spawn(move || {
                let rec = dom.register();
                dom.read_lock(rec);
                let p = slot.load(Ordering::Acquire);
                // SAFETY: objects stay allocated until the end of the model.
                let v = unsafe { &*p }.payload.with(|v| unsafe { *v });
                assert_ne!(v, u64::MAX, "object freed inside the reader's section");
                dom.read_unlock(rec);
                dom.unregister(rec);
            })
        };
        let producer = {
            let (b, slot) = (b.clone(), slot.clone());
            thread::spawn(move || {
                let n = Box::into_raw(Box::new(Obj {
                    payload: UnsafeCell::new(2),
                }));
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
        let first = drain(&b);
        producer.join().unwrap();
        let second = drain(&b);
        reader.join().unwrap();
        assert_eq!(
            first.objects + second.objects,
            1,
            "the object was freed exactly once"
        );
        assert_eq!(freed.load(Ordering::Relaxed), 1);
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
        let b = Arc::new(Batcher::new(2, 1 << 30, 0, dom, HeapPages, no_clock));
        let freed = Arc::new(AtomicUsize::new(0));
        let ctx = &*freed as *const AtomicUsize as usize;
        let objs: Vec<usize> = (0..2)
            .map(|i| {
                Box::into_raw(Box::new(Obj {
                    payload: UnsafeCell::new(i),
                })) as usize
            })
            .collect();
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
        let res = drain(&b);
        assert_eq!(res.objects, 2);
        assert_eq!(freed.load(Ordering::Relaxed), 2);
        assert_eq!(done.load(Ordering::Relaxed), 2);
        for o in objs {
            // SAFETY: freed once.
            unsafe { drop(Box::from_raw(o as *mut Obj)) };
        }
    });
}
