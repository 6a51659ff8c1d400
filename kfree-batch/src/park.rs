//! Park slots: where a headless `kfree_rcu` inside a read-side critical section puts an object
//! when no batching memory can be had (it can neither wait for a grace period — that would wait
//! for itself — nor free early).
//!
//! # Implementation
//!
//! Each thread that retires objects gets, at its first `kfree_rcu`, an array of [`PARK_SLOTS`]
//! slots mapped from the page layer *before* any pressure (pre-reserved; a mapping failure there is
//! reported as "no slots", never an abort). Arrays are registered in a global lock-free list and
//! never freed; a thread that exits gives its array back for reuse, and anything still parked in
//! it is finished by the worker.
//!
//! Slot protocol: the owner writes `free`, `ctx`, `snap` (Relaxed) and then publishes `obj`
//! (Release). A collector (the worker or `kvfree_rcu_barrier`, serialised by the worker's busy
//! lock) reads `obj` (Acquire) and the fields, and only after the object's grace period frees it
//! and stores `obj = null` (Release); the owner reuses a slot only after reading null (Acquire).
//!
//! Invariant: a non-null `obj` is owned by the slot; exactly one collector at a time clears slots.

use core::ptr::NonNull;

use rcu_core::GpSeq;

use crate::block::{FreeFn, PAGE_SIZE};
use crate::primitive::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// One parked object.
#[derive(Debug)]
#[repr(C)]
struct Slot {
    obj: AtomicPtr<u8>,
    /// The `FreeFn`, as a pointer (never an integer: it keeps its provenance).
    free: AtomicPtr<()>,
    ctx: AtomicPtr<()>,
    snap: AtomicU64,
}

/// Pages per park array.
const ARRAY_PAGES: usize = 2;
/// Park slots per thread (headless objects a thread can retire inside one read-side critical
/// section while no batching memory can be had).
pub const PARK_SLOTS: usize =
    (ARRAY_PAGES * PAGE_SIZE - 3 * core::mem::size_of::<usize>()) / core::mem::size_of::<Slot>();

/// A thread's park slots (exactly `ARRAY_PAGES` pages).
#[repr(C)]
struct ParkArray {
    next: AtomicPtr<ParkArray>,
    owned: AtomicBool,
    parked: AtomicUsize,
    slots: [Slot; PARK_SLOTS],
}

const _: () = assert!(core::mem::size_of::<ParkArray>() <= ARRAY_PAGES * PAGE_SIZE);

/// Registered arrays (Release push, Acquire walk; never freed).
static ARRAYS: AtomicPtr<ParkArray> = AtomicPtr::new(core::ptr::null_mut());
/// Objects parked right now, over all threads.
pub(crate) static PARKED_NOW: AtomicUsize = AtomicUsize::new(0);
/// Objects ever parked.
pub(crate) static PARKED_TOTAL: AtomicU64 = AtomicU64::new(0);

std::thread_local! {
    static MINE: core::cell::Cell<*const ParkArray> = const { core::cell::Cell::new(core::ptr::null()) };
    static RELEASE: Release = const { Release };
}

/// Gives the thread's array back at exit.
struct Release;
impl Drop for Release {
    fn drop(&mut self) {
        let a = MINE.with(|m| m.replace(core::ptr::null()));
        if !a.is_null() {
            // SAFETY: arrays are never freed.
            // Release: the next owner sees our last slot writes.
            unsafe { (*a).owned.store(false, Ordering::Release) };
        }
    }
}

fn arrays() -> impl Iterator<Item = &'static ParkArray> {
    // Acquire pairs with the Release push in `reserve`.
    let mut p = ARRAYS.load(Ordering::Acquire);
    core::iter::from_fn(move || {
        // SAFETY: registered arrays are never freed.
        let a = unsafe { p.as_ref()? };
        p = a.next.load(Ordering::Acquire);
        Some(a)
    })
}

/// Makes sure the calling thread has park slots (call before any pressure). Returns whether it
/// has them.
#[inline]
pub(crate) fn reserve() -> bool {
    if !MINE.with(|m| m.get()).is_null() {
        return true;
    }
    reserve_slow()
}

#[cold]
#[inline(never)]
fn reserve_slow() -> bool {
    // Reuse an array given back by an exited thread.
    for a in arrays() {
        if !a.owned.load(Ordering::Relaxed)
            && a.owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return adopt(a);
        }
    }
    let Some(page) = slab_backend::page::try_alloc_pages(ARRAY_PAGES) else {
        return false;
    };
    let a = page.as_ptr().cast::<ParkArray>();
    // SAFETY: fresh zeroed pages (mmap) are a valid ParkArray: null pointers, zero integers,
    // `false`; we set `owned` before publishing.
    unsafe { (*a).owned.store(true, Ordering::Relaxed) };
    let mut head = ARRAYS.load(Ordering::Relaxed);
    loop {
        // SAFETY: not yet published; ours.
        unsafe { (*a).next.store(head, Ordering::Relaxed) };
        // Release publishes the initialised array to collectors.
        match ARRAYS.compare_exchange_weak(head, a, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    // SAFETY: published arrays are never freed.
    adopt(unsafe { &*a })
}

fn adopt(a: &'static ParkArray) -> bool {
    MINE.with(|m| m.set(a));
    // Registers the destructor; fails only during thread-local teardown (the array then stays
    // owned by this thread for good, which is harmless).
    let _ = RELEASE.try_with(|_| ());
    true
}

/// Parks `obj` in the calling thread's slots. Returns `false` if every slot is taken or the thread
/// has no slots.
pub(crate) fn park(obj: *mut u8, free: FreeFn, ctx: *const (), snap: GpSeq) -> bool {
    let a = MINE.with(|m| m.get());
    // SAFETY: arrays are never freed.
    let Some(a) = (unsafe { a.as_ref() }) else {
        return false;
    };
    for s in a.slots.iter() {
        // Acquire pairs with the collector's Release clear: its reads of the old entry are done.
        if s.obj.load(Ordering::Acquire).is_null() {
            s.free.store(free as *mut (), Ordering::Relaxed);
            s.ctx.store(ctx.cast_mut(), Ordering::Relaxed);
            s.snap.store(snap.raw(), Ordering::Relaxed);
            // Release publishes the fields above to the collector.
            s.obj.store(obj, Ordering::Release);
            a.parked.fetch_add(1, Ordering::Relaxed);
            PARKED_NOW.fetch_add(1, Ordering::Relaxed);
            PARKED_TOTAL.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// The newest snapshot among parked objects, if any are parked.
pub(crate) fn newest_snap() -> Option<GpSeq> {
    if PARKED_NOW.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut newest: Option<GpSeq> = None;
    for a in arrays() {
        if a.parked.load(Ordering::Relaxed) == 0 {
            continue;
        }
        for s in a.slots.iter() {
            // Acquire pairs with the owner's Release publish in `park`: `snap` is the parked one.
            if !s.obj.load(Ordering::Acquire).is_null() {
                let snap = GpSeq::from_raw(s.snap.load(Ordering::Relaxed));
                newest = Some(match newest {
                    Some(n) if snap.before(n) => n,
                    _ => snap,
                });
            }
        }
    }
    newest
}

/// Frees every parked object whose grace period is over (collector only). Returns how many.
pub(crate) fn sweep(dom: &rcu_core::raw::Domain) -> usize {
    if PARKED_NOW.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let mut n = 0;
    for a in arrays() {
        if a.parked.load(Ordering::Relaxed) == 0 {
            continue;
        }
        for s in a.slots.iter() {
            // Acquire pairs with the owner's Release publish.
            let obj = s.obj.load(Ordering::Acquire);
            let Some(obj) = NonNull::new(obj) else {
                continue;
            };
            if !dom.poll(GpSeq::from_raw(s.snap.load(Ordering::Relaxed))) {
                continue;
            }
            let f = s.free.load(Ordering::Relaxed);
            let ctx = s.ctx.load(Ordering::Relaxed);
            // SAFETY: `f` was stored from a `FreeFn` in `park`, as a pointer: transmuting it
            // back (same size) keeps the function pointer's provenance.
            let f: FreeFn = unsafe { core::mem::transmute::<*mut (), FreeFn>(f) };
            // SAFETY: the object was parked after being retired, and its grace period is over.
            unsafe { crate::block::run_free(f, ctx, &[obj.as_ptr()]) };
            // Release: our reads of the slot happen before the owner reuses it.
            s.obj.store(core::ptr::null_mut(), Ordering::Release);
            a.parked.fetch_sub(1, Ordering::Relaxed);
            PARKED_NOW.fetch_sub(1, Ordering::Relaxed);
            n += 1;
        }
    }
    n
}
