//! The raw-pointer entry points: an object retired by pointer (never re-made into a `Box` while
//! readers may hold it) stays readable by a reader that found it before the retire, and is
//! dropped exactly once after the grace period.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use kfree_batch::{
    impl_has_rcu_head, kfree_rcu_head_raw, kfree_rcu_raw, kvfree_rcu_barrier, RcuHead,
};

static READER_DROPS: AtomicU64 = AtomicU64::new(0);
static DROPS: AtomicU64 = AtomicU64::new(0);
static HEAD_DROPS: AtomicU64 = AtomicU64::new(0);

struct Counted(&'static AtomicU64, u64);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

struct Linked {
    #[allow(dead_code)]
    value: u64,
    head: RcuHead,
}
impl_has_rcu_head!(Linked, head);
impl Drop for Linked {
    fn drop(&mut self) {
        HEAD_DROPS.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn raw_retire_keeps_the_object_for_a_reader_that_found_it() {
    let slot = AtomicPtr::new(Box::into_raw(Box::new(Counted(&READER_DROPS, 42))));
    let (found_tx, found_rx) = mpsc::channel::<()>();
    let (retired_tx, retired_rx) = mpsc::channel::<()>();
    let slot = &slot;
    std::thread::scope(|s| {
        s.spawn(move || {
            let g = rcu_core::rcu_read_lock();
            // Acquire pairs with the Release store that published the object.
            let p = slot.load(Ordering::Acquire);
            // SAFETY: published object, read under `g` (retired only after a grace period).
            let r = unsafe { &*p };
            assert_eq!(r.1, 42);
            found_tx.send(()).unwrap();
            retired_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(r.1, 42, "object changed under a reader");
            assert_eq!(
                READER_DROPS.load(Ordering::Relaxed),
                0,
                "dropped under a reader"
            );
            drop(g);
        });
        found_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let old = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: from `Box::into_raw`, unpublished by the swap, retired once, never touched
        // again by this thread.
        unsafe { kfree_rcu_raw(old) };
        retired_tx.send(()).unwrap();
    });
    kvfree_rcu_barrier();
    assert_eq!(READER_DROPS.load(Ordering::Relaxed), 1);
}

#[test]
fn raw_retire_frees_each_form_once() {
    for i in 0..1000u64 {
        // SAFETY: fresh boxes, never published, retired once.
        unsafe {
            kfree_rcu_raw(Box::into_raw(Box::new(Counted(&DROPS, i))));
            kfree_rcu_raw(Box::into_raw(Box::new([i; 4]))); // no drop glue: the dealloc channel
            kfree_rcu_raw(Box::into_raw(Box::new(()))); // zero-sized
            kfree_rcu_head_raw(Box::into_raw(Box::new(Linked {
                value: i,
                head: RcuHead::new(),
            })));
        }
    }
    kvfree_rcu_barrier();
    assert_eq!(DROPS.load(Ordering::Relaxed), 1000);
    assert_eq!(HEAD_DROPS.load(Ordering::Relaxed), 1000);
}
