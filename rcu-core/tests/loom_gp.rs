//! Loom models of the grace-period engine (run with `RUSTFLAGS="--cfg rcu_loom"`,
//! `LOOM_MAX_PREEMPTIONS=2`, `--release`).
//!
//! The models drive the same `Domain`, reader-record and callback-list code the global functions
//! use; only the heavy barrier is modelled as `fence(SeqCst)` (loom has no membarrier).
#![cfg(rcu_loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::{CbList, Domain};
use rcu_core::Mode;

/// An object whose payload is a loom cell: a read racing with the "free" (a write) is a data race
/// loom reports, and `freed` catches a reader that runs after it.
struct Obj {
    payload: UnsafeCell<u64>,
    freed: AtomicBool,
}

impl Obj {
    fn new(v: u64) -> *mut Obj {
        Box::into_raw(Box::new(Obj {
            payload: UnsafeCell::new(v),
            freed: AtomicBool::new(false),
        }))
    }
}

/// "Frees" an object: marks it and overwrites the payload (the write loom checks), without
/// really freeing it (the model frees everything at the end).
fn poison(o: &Obj) {
    o.freed.store(true, Ordering::Relaxed);
    // SAFETY: loom checks this write against every read; a race is the bug we look for.
    o.payload.with_mut(|p| unsafe { *p = u64::MAX });
}

fn reader_checks(dom: &Domain, slot: &AtomicPtr<Obj>) {
    let rec = dom.register();
    dom.read_lock(rec);
    let p = slot.load(Ordering::Acquire);
    // SAFETY: the model keeps every object allocated until the end.
    let o = unsafe { &*p };
    // SAFETY: loom checks this read against the poisoning write.
    let v = o.payload.with(|p| unsafe { *p });
    assert_ne!(
        v,
        u64::MAX,
        "reader saw a payload freed inside its critical section"
    );
    assert!(
        !o.freed.load(Ordering::Relaxed),
        "object freed inside a critical section"
    );
    dom.read_unlock(rec);
    dom.unregister(rec);
}

/// A reader that saw the old pointer finishes before the writer frees it.
#[test]
fn reader_writer_handshake() {
    loom::model(|| {
        let dom = Arc::new(Domain::new(Mode::Fences));
        let a = Obj::new(1);
        let slot = Arc::new(AtomicPtr::new(a));
        let r = {
            let (dom, slot) = (dom.clone(), slot.clone());
            thread::spawn(move || reader_checks(&dom, &slot))
        };
        let b = Obj::new(2);
        let old = slot.swap(b, Ordering::AcqRel);
        dom.synchronize(false);
        // SAFETY: `old` stays allocated until the end of the model.
        poison(unsafe { &*old });
        r.join().unwrap();
        // SAFETY: both objects came from Box::into_raw and are freed once.
        unsafe {
            drop(Box::from_raw(a));
            drop(Box::from_raw(b));
        }
    });
}

/// Two writers share grace periods and both readers stay protected; a state taken before a
/// synchronize polls true after it.
#[test]
fn concurrent_synchronize_and_poll() {
    loom::model(|| {
        let dom = Arc::new(Domain::new(Mode::Fences));
        let a = Obj::new(1);
        let slot = Arc::new(AtomicPtr::new(a));
        let r = {
            let (dom, slot) = (dom.clone(), slot.clone());
            thread::spawn(move || reader_checks(&dom, &slot))
        };
        let w2 = {
            let dom = dom.clone();
            thread::spawn(move || {
                let st = dom.get_state();
                dom.synchronize(true);
                assert!(
                    dom.poll(st),
                    "state taken before synchronize must poll true after it"
                );
            })
        };
        let b = Obj::new(2);
        let old = slot.swap(b, Ordering::AcqRel);
        let st = dom.get_state();
        dom.wait_for(st, false);
        // SAFETY: kept allocated until the end.
        poison(unsafe { &*old });
        r.join().unwrap();
        w2.join().unwrap();
        // SAFETY: freed once.
        unsafe {
            drop(Box::from_raw(a));
            drop(Box::from_raw(b));
        }
    });
}

/// Nested readers: the inner unlock does not end the critical section.
#[test]
fn nested_reader() {
    loom::model(|| {
        let dom = Arc::new(Domain::new(Mode::Fences));
        let a = Obj::new(1);
        let slot = Arc::new(AtomicPtr::new(a));
        let r = {
            let (dom, slot) = (dom.clone(), slot.clone());
            thread::spawn(move || {
                let rec = dom.register();
                dom.read_lock(rec);
                let p = slot.load(Ordering::Acquire);
                dom.read_lock(rec);
                dom.read_unlock(rec);
                // SAFETY: kept allocated until the end.
                let o = unsafe { &*p };
                // SAFETY: loom checks this read against the poisoning write.
                o.payload.with(|p| assert_ne!(unsafe { *p }, u64::MAX));
                dom.read_unlock(rec);
                dom.unregister(rec);
            })
        };
        let b = Obj::new(2);
        let old = slot.swap(b, Ordering::AcqRel);
        dom.synchronize(false);
        // SAFETY: kept allocated until the end.
        poison(unsafe { &*old });
        r.join().unwrap();
        // SAFETY: freed once.
        unsafe {
            drop(Box::from_raw(a));
            drop(Box::from_raw(b));
        }
    });
}

/// Callback segments: a callback queued after an unpublish runs only after a grace period that
/// covers every reader that could see the object, and every callback runs.
#[test]
fn callback_segment_advance() {
    loom::model(|| {
        let dom = Arc::new(Domain::new(Mode::Fences));
        let list = Arc::new(CbList::new());
        let a = Obj::new(1);
        let slot = Arc::new(AtomicPtr::new(a));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = {
            let (dom, slot) = (dom.clone(), slot.clone());
            thread::spawn(move || reader_checks(&dom, &slot))
        };
        // Producer: unpublish `a` and queue its "free".
        let producer = {
            let (list, slot, ran) = (list.clone(), slot.clone(), ran.clone());
            thread::spawn(move || {
                let b = Obj::new(2);
                let old = slot.swap(b, Ordering::AcqRel) as usize;
                list.enqueue_fn(move || {
                    // SAFETY: kept allocated until the end of the model.
                    poison(unsafe { &*(old as *const Obj) });
                    ran.fetch_add(1, Ordering::Relaxed);
                });
            })
        };
        // Worker: one step concurrently with the producer (harvest may run before, during or
        // after the enqueue), then drive the list to completion.
        let _ = list.process(&dom);
        producer.join().unwrap();
        while ran.load(Ordering::Relaxed) == 0 {
            let (_, need) = list.process(&dom);
            if let Some(snap) = need {
                dom.wait_for(snap, false);
            }
        }
        r.join().unwrap();
        let last = slot.load(Ordering::Relaxed);
        // SAFETY: freed once; `a` was replaced by `last`.
        unsafe {
            drop(Box::from_raw(a));
            drop(Box::from_raw(last));
        }
    });
}

/// A grace period run by another thread covers the updater's unpublish, in membarrier mode.
///
/// The updater (T, the model's main thread) unpublishes `a` and takes a snapshot but runs no
/// grace period: the leader (G) runs the one grace period of the model, for its own snapshot,
/// as a shared `synchronize` or the worker serving a poller does; T waits for G to finish and
/// frees `a` only if G's grace period ended its snapshot (a snapshot taken after G's start asks
/// for a second grace period, which nobody runs here, and T then leaves `a` alone). The reader (R) begins its section only after
/// it has seen G's start, so its word never blocks G and G does not wait for it: R is protected
/// only if its Acquire load of the start value makes it see T's unpublish.
///
/// The domain is in `Mode::Membarrier`, which loom models weaker than it is (`sys::membarrier`):
/// no barrier in the reader, the runner's own `fence(SeqCst)` as the heavy barrier. The pattern
/// where that is too weak (a reader word published before the scan) cannot occur here: R's word
/// always carries G's start value or a later one. The real heavy barrier adds a full barrier
/// somewhere in R, which may land after R's whole section, so a failure here is an execution of
/// the real code, and T's link to G's start is what decides the outcome: T's snapshot must
/// *happen before* G's start, not merely read the value from before it. (With `get_state` as a
/// `fence(SeqCst)` and a load this model fails: R reads `a` while T poisons it.)
#[test]
fn shared_grace_period_covers_other_threads_unpublish() {
    loom::model(|| {
        let dom = Arc::new(Domain::new(Mode::Membarrier));
        let a = Obj::new(1);
        let slot = Arc::new(AtomicPtr::new(a));
        // G's own snapshot, taken before T's update (as by a caller that arrived earlier): G
        // then runs the grace period that ends it, which is also the one T's snapshot asks for
        // when T's snapshot reads the value from before G's start. (Taken here rather than in G:
        // loom does not branch at fences, so with a fence of G's own before its start store it
        // does not explore T's fence falling between G's two barriers.)
        let g_snap = dom.get_state();
        let g = {
            let dom = dom.clone();
            thread::spawn(move || dom.wait_for(g_snap, false))
        };
        let r = {
            let (dom, slot) = (dom.clone(), slot.clone());
            thread::spawn(move || {
                // Acquire (inside `current`), as the reader's own load in `read_lock`.
                while dom.current() == rcu_core::GpSeq::ZERO {
                    thread::yield_now();
                }
                reader_checks(&dom, &slot);
            })
        };
        let b = Obj::new(2);
        let old = slot.swap(b, Ordering::AcqRel);
        let st = dom.get_state();
        // Joining G stands for waiting on G's grace period (no second spinning thread: loom
        // would explore two spinners yielding to each other without end).
        g.join().unwrap();
        if dom.poll(st) {
            // SAFETY: kept allocated until the end of the model.
            poison(unsafe { &*old });
        }
        r.join().unwrap();
        // SAFETY: both objects came from Box::into_raw and are freed once.
        unsafe {
            drop(Box::from_raw(a));
            drop(Box::from_raw(b));
        }
    });
}
