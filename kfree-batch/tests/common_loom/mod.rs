//! Shared by the loom models of kfree-batch: the modelled object and a reader of it, a page
//! source from the heap that catches a page given back twice, and a full collection of the
//! batcher's CPU slots.

use std::collections::HashSet;
use std::ptr::NonNull;

use kfree_batch::raw::{Batch, Batcher, Pages, Processed};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicPtr, Ordering};
use loom::sync::Arc;
use rcu_core::raw::Domain;

/// A retired object: freeing it writes `u64::MAX` into `payload` (the write loom checks against
/// readers).
pub(crate) struct Obj {
    pub(crate) payload: UnsafeCell<u64>,
}

/// A new object holding `v` (freed with `Box::from_raw` at the end of a model).
pub(crate) fn obj(v: u64) -> *mut Obj {
    Box::into_raw(Box::new(Obj {
        payload: UnsafeCell::new(v),
    }))
}

/// A reader thread: inside one read-side critical section it loads the object `slot` points to
/// and checks it was not freed.
pub(crate) fn spawn_reader(
    dom: &'static Domain,
    slot: Arc<AtomicPtr<Obj>>,
) -> loom::thread::JoinHandle<()> {
    loom::thread::spawn(move || {
        let rec = dom.register();
        dom.read_lock(rec);
        let p = slot.load(Ordering::Acquire);
        // SAFETY: objects stay allocated until the end of the model.
        let v = unsafe { &*p }.payload.with(|v| unsafe { *v });
        assert_ne!(v, u64::MAX, "object freed inside the reader's section");
        dom.read_unlock(rec);
        dom.unregister(rec);
    })
}

/// Pages from the heap (the page layer is not part of the models). Tracks the pages handed out
/// (outside loom's model: bookkeeping, not part of the protocol) so that a page given back twice
/// — two owners of one block — fails the model instead of corrupting the heap.
#[derive(Default)]
pub(crate) struct HeapPages {
    live: std::sync::Mutex<HashSet<usize>>,
}

impl HeapPages {
    /// Pages handed out and not given back.
    fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

impl Pages for HeapPages {
    fn alloc(&self) -> Option<NonNull<u8>> {
        let l = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: non-zero size layout.
        let p = NonNull::new(unsafe { std::alloc::alloc_zeroed(l) })?;
        self.live.lock().unwrap().insert(p.as_ptr() as usize);
        Some(p)
    }
    unsafe fn free(&self, p: NonNull<u8>) {
        assert!(
            self.live.lock().unwrap().remove(&(p.as_ptr() as usize)),
            "a block page was given back twice (two owners of one block)"
        );
        let l = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: `p` came from `alloc` with the same layout and is given back once (checked).
        unsafe { std::alloc::dealloc(p.as_ptr(), l) }
    }
}

/// Everything handed to the slots: collect, free what is ready, wait for the newest snapshot,
/// free the rest (a worker pass without fronts).
pub(crate) fn collect_slots(b: &Batcher<'static, HeapPages>) -> Processed {
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

/// Gives every cached page back and checks that none is missing or left: each page the batcher
/// took came back exactly once.
pub(crate) fn check_pages(b: &Batcher<'static, HeapPages>) {
    b.drain_caches();
    assert_eq!(
        b.pages().live(),
        0,
        "block pages leaked (a block lost by both sides)"
    );
}
