//! One park slot and its claim protocol, apart from the per-thread arrays (`park.rs`) so that the
//! loom model runs the shipped code.
//!
//! # Implementation
//!
//! The owner writes `free`, `ctx`, `snap`, `bytes` (Relaxed) into an empty slot (`obj` null, read
//! with Acquire) and then publishes `obj` (Release). A freer — the owner draining its array or a
//! collector, possibly at the same time — *claims* the slot with a CAS (Acquire) from the object
//! to the address of the `CLAIMED_MARK` static, then reads the fields again and checks `snap`:
//! the slot may have been freed and refilled with an object at the same address since its first
//! look. If that state is not done it un-claims (Release store of the object, fields untouched);
//! otherwise it frees the object and stores null (Release), after which the owner may refill.
//!
//! Invariants:
//! 1. A non-null `obj` other than the marker is owned by the slot; the marker means one freer
//!    owns it for the moment. Exactly one freer claims a published object (the CAS).
//! 2. An object is freed only once its `snap` has completed, checked after the claim.
//! 3. Only the owner fills a slot, and only when it reads null.
//!
//! Memory orderings: the publish (Release) pairs with the claim (Acquire), so the freer reads
//! the fields of the object it claimed; the clear (Release) pairs with the owner's empty check
//! (Acquire), so the freer's reads of the old fields happen before the owner's rewrite, and with
//! a waiting collector's load (Acquire), so a free it waited for happens before its return.

use rcu_core::raw::Domain;
use rcu_core::GpSeq;

use crate::block::FreeFn;
use crate::primitive::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// One parked object (all zeroes: empty).
#[derive(Debug)]
#[repr(C)]
pub struct ParkSlot {
    obj: AtomicPtr<u8>,
    /// The `FreeFn`, as a pointer (never an integer: it keeps its provenance).
    free: AtomicPtr<()>,
    ctx: AtomicPtr<()>,
    snap: AtomicU64,
    /// The charge of this object (bytes; `kfree-batch` marks an overdraft in the top bit; 0: none).
    bytes: AtomicUsize,
}

/// The claim marker's address (never a retired object's: it is this static's).
static CLAIMED_MARK: u8 = 0;

fn claimed() -> *mut u8 {
    core::ptr::addr_of!(CLAIMED_MARK).cast_mut()
}

impl Default for ParkSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl ParkSlot {
    /// An empty slot (the arrays use zeroed pages, the same state).
    pub fn new() -> Self {
        ParkSlot {
            obj: AtomicPtr::new(core::ptr::null_mut()),
            free: AtomicPtr::new(core::ptr::null_mut()),
            ctx: AtomicPtr::new(core::ptr::null_mut()),
            snap: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Owner: parks `obj` (freed by `free(ctx, ..)` once `snap` completes, `bytes` charged) if
    /// the slot is empty (Invariant 3). Returns whether it did.
    pub fn fill(
        &self,
        obj: *mut u8,
        free: FreeFn,
        ctx: *const (),
        snap: GpSeq,
        bytes: usize,
    ) -> bool {
        debug_assert!(!obj.is_null() && obj != claimed());
        // Acquire pairs with a freer's Release clear: its reads of the old entry are done.
        if !self.obj.load(Ordering::Acquire).is_null() {
            return false;
        }
        self.free.store(free as *mut (), Ordering::Relaxed);
        self.ctx.store(ctx.cast_mut(), Ordering::Relaxed);
        self.snap.store(snap.raw(), Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        // Release publishes the fields above to the freers' claiming CAS.
        self.obj.store(obj, Ordering::Release);
        true
    }

    /// The state of the object parked here, if one is parked and not claimed.
    pub fn parked_snap(&self) -> Option<GpSeq> {
        // Acquire pairs with the owner's Release publish: `snap` is the parked one.
        let obj = self.obj.load(Ordering::Acquire);
        (!obj.is_null() && obj != claimed())
            .then(|| GpSeq::from_raw(self.snap.load(Ordering::Relaxed)))
    }

    /// Whether the slot is empty (the owner may fill it).
    pub fn is_empty(&self) -> bool {
        // Acquire as in `fill`.
        self.obj.load(Ordering::Acquire).is_null()
    }

    /// The `fork()` child handler, for a slot the child's only thread has not claimed: a slot
    /// claimed by a freer, which then is a thread of the parent only, is emptied — that thread
    /// does not exist in the child, so the claim would never end and collectors would wait for
    /// it forever; its object, which the parent frees, is leaked in the child (never freed
    /// twice). Returns whether the slot was emptied.
    pub fn release_claim_after_fork(&self) -> bool {
        // Relaxed: the child runs alone (fork copied the parent's memory as it was).
        if self.obj.load(Ordering::Relaxed) == claimed() {
            self.obj.store(core::ptr::null_mut(), Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// The `fork()` child handler's recount: the bytes charged for an object parked here and not
    /// claimed (0 otherwise), and whether one is (parked or claimed).
    pub fn charge_after_fork(&self) -> (usize, bool) {
        // Relaxed: the child runs alone.
        let obj = self.obj.load(Ordering::Relaxed);
        if obj.is_null() {
            (0, false)
        } else if obj == claimed() {
            (0, true)
        } else {
            (self.bytes.load(Ordering::Relaxed), true)
        }
    }

    /// Any freer: frees the parked object if its state completed in `dom` (Invariants 1 and 2).
    /// With `wait_claimed`, first waits while another freer holds the slot. Returns the charge
    /// recorded for the object if it freed it.
    ///
    /// # Safety
    /// Every object parked in the slot was retired after its `snap` was taken, and `free(ctx, ..)`
    /// frees it once its grace period is over.
    pub unsafe fn free_if_done(&self, dom: &Domain, wait_claimed: bool) -> Option<usize> {
        // Acquire pairs with a freer's Release clear (memory orderings above).
        let mut obj = self.obj.load(Ordering::Acquire);
        let mut i = 0;
        while wait_claimed && obj == claimed() {
            // Another freer is freeing it; it never waits for us.
            crate::primitive::spin_wait(i);
            i = i.saturating_add(1);
            obj = self.obj.load(Ordering::Acquire);
        }
        if obj.is_null() || obj == claimed() {
            return None;
        }
        // A cheap look first (Relaxed: checked again after the claim).
        if !dom.poll(GpSeq::from_raw(self.snap.load(Ordering::Relaxed))) {
            return None;
        }
        // Acquire pairs with the owner's Release publish: the fields are the parked object's.
        self.obj
            .compare_exchange(obj, claimed(), Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        if !dom.poll(GpSeq::from_raw(self.snap.load(Ordering::Relaxed))) {
            // Refilled since the first look (Invariant 2): give it back (Release: the owner's
            // fields stay as published).
            self.obj.store(obj, Ordering::Release);
            return None;
        }
        let f = self.free.load(Ordering::Relaxed);
        let ctx = self.ctx.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        // SAFETY: `f` was stored from a `FreeFn` in `fill`, as a pointer: transmuting it back
        // (same size) keeps the function pointer's provenance.
        let f: FreeFn = unsafe { core::mem::transmute::<*mut (), FreeFn>(f) };
        // SAFETY: we claimed the object (Invariant 1), its grace period is over (checked after
        // the claim), and it was retired before its state was taken (caller's contract).
        unsafe { crate::block::run_free(f, ctx, &[obj]) };
        // Release: our reads of the slot happen before the owner refills it.
        self.obj.store(core::ptr::null_mut(), Ordering::Release);
        Some(bytes)
    }
}
