//! Per-thread front blocks: the `kfree_rcu` fast path without an atomic read-modify-write.
//!
//! # Implementation
//!
//! Each retiring thread owns a [`Front`]: one open block of one channel (the first free function
//! it retires with) and a slice of the pending budget. Appending is plain stores by the owner —
//! but the worker and `kvfree_rcu_barrier` must be able to take a partial block from a thread that
//! stopped retiring (drain delay, barrier, thread gone after `fork()`). RCU protects the front:
//!
//! ```text
//!   owner                                    collector (holds the busy lock)
//!   -----                                    ---------
//!   rcu_read_lock()                          b = front.block.swap(null)
//!   b = front.block.load()                   snap = get_state()       // after the swap
//!   b.ptrs[count] = obj; count += 1          wait_for(snap)           // waits for the owner's
//!   rcu_read_unlock()                                                 //   section that saw `b`
//!                                            read b.count, free b's objects
//! ```
//!
//! An append that saw the old pointer ran inside a read-side critical section that began before
//! the grace period, so it happens-before the collector reads `count`; an append after the grace
//! period's start sees null (heavy/light barrier pairing) and takes the slow path. The same grace
//! period also covers the objects themselves (they were retired before the swap). The owner and
//! the collector write disjoint header fields (`count`/`bytes`/`ptrs` vs `snap`/`next`/
//! `handed_ms`), so there is no data race even while an append is in flight.
//!
//! A full block is detached by the owner (swap to null; if the collector won the swap, it has
//! the block) and handed to its CPU slot — one lock CAS per ~505 objects — where ready-first
//! reclaim frees older blocks on the owner's thread.
//!
//! Invariants:
//! 1. Only the owner stores a non-null `block`; anyone may swap it to null, and whoever gets the
//!    non-null value owns the block.
//! 2. The owner touches `block`'s contents only inside one read-side critical section that loaded
//!    the pointer.
//! 3. `reserve` (the thread's unspent budget) is owner-only; it goes back to the budget at thread
//!    exit.
//!
//! Fronts are registered in a global lock-free list and never freed; an exiting thread hands its
//! block over, gives its budget back and releases the front for reuse.

use core::cell::Cell;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use rcu_core::GpSeq;

use crate::block::{Block, BLOCK_CAPACITY};
use crate::krc::{newer, Batch, Refused, Retired};
use crate::worker::Global;

/// Budget a thread reserves at a time for its front.
const LOCAL_CHUNK: usize = 16 << 10;

/// One thread's front block.
#[derive(Debug)]
pub(crate) struct Front {
    /// The open block, or null (Invariant 1).
    block: AtomicPtr<Block>,
    /// When the open block was opened (batcher clock), for the drain delay.
    opened_ms: AtomicU64,
    /// Objects appended through this front (owner writes with load + store; statistics).
    queued: AtomicU64,
    /// Whether a thread owns this front.
    owned: AtomicBool,
    /// Next registered front (written once before publication).
    next: AtomicPtr<Front>,
}

/// Registered fronts (Release push, Acquire walk; never freed).
static FRONTS: AtomicPtr<Front> = AtomicPtr::new(core::ptr::null_mut());

std::thread_local! {
    static MINE: Cell<*const Front> = const { Cell::new(core::ptr::null()) };
    /// Unspent budget of this thread (Invariant 3).
    static RESERVE: Cell<usize> = const { Cell::new(0) };
    static EXIT: ExitHook = const { ExitHook };
}

fn fronts() -> impl Iterator<Item = &'static Front> {
    // Acquire pairs with the Release push in `register`.
    let mut p = FRONTS.load(Ordering::Acquire);
    core::iter::from_fn(move || {
        // SAFETY: registered fronts are never freed.
        let f = unsafe { p.as_ref()? };
        p = f.next.load(Ordering::Acquire);
        Some(f)
    })
}

/// Tries the calling thread's front. Returns the object back if it must take the per-CPU path
/// (another channel, no budget slice, no page for a new block).
#[inline]
pub(crate) fn try_retire(b: &'static Global, r: Retired, may_alloc: bool) -> Result<(), Retired> {
    let f = MINE.with(|m| m.get());
    // SAFETY: fronts are never freed.
    let Some(f) = (unsafe { f.as_ref() }) else {
        return register_and_retry(b, r, may_alloc);
    };
    // Budget first (owner-only counter, Invariant 3).
    let left = RESERVE.with(|c| c.get());
    if left < r.size {
        return refill_and_retry(b, r, may_alloc);
    }
    let g = rcu_core::rcu_read_lock();
    // Relaxed: only this thread stores non-null values (Invariant 1); a collector's swap is
    // ordered by the grace period (module docs).
    let blk = f.block.load(Ordering::Relaxed);
    let Some(blk) = NonNull::new(blk) else {
        drop(g);
        return open_and_retry(b, f, r, may_alloc);
    };
    let blk = blk.as_ptr();
    // SAFETY: Invariant 2: we loaded the pointer inside this critical section, so a collector
    // that swapped it out waits for us before reading; we write only owner fields.
    let full = unsafe {
        let h = &mut (*blk).hdr;
        if h.free as usize != r.free as usize || h.ctx != r.ctx {
            drop(g);
            return Err(r);
        }
        let i = h.count as usize;
        core::ptr::addr_of_mut!((*blk).ptrs)
            .cast::<*mut u8>()
            .add(i)
            .write(r.obj);
        h.count += 1;
        h.bytes += r.size;
        h.count as usize == BLOCK_CAPACITY
    };
    drop(g);
    RESERVE.with(|c| c.set(left - r.size));
    f.queued
        .store(f.queued.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if full {
        hand_over_full(b, f);
    }
    Ok(())
}

/// The front's block is full: detach it and hand it to this CPU's slot.
#[cold]
#[inline(never)]
fn hand_over_full(b: &'static Global, f: &Front) {
    // Whoever gets the non-null value owns the block (Invariant 1).
    let blk = f.block.swap(core::ptr::null_mut(), Ordering::Acquire);
    if blk.is_null() {
        return; // a collector took it; it will free it after a grace period
    }
    let may_reclaim = !rcu_core::rcu_read_lock_held();
    let mut added = b.hand_over_detached(rcu_core::cpu::current_cpu(), blk, may_reclaim);
    crate::worker::kick();
    crate::worker::free_reclaimed(b, &mut added);
}

#[cold]
#[inline(never)]
fn open_and_retry(
    b: &'static Global,
    f: &Front,
    r: Retired,
    may_alloc: bool,
) -> Result<(), Retired> {
    match b.open_block(rcu_core::cpu::current_cpu(), r.free, r.ctx, may_alloc) {
        Ok(blk) => {
            f.opened_ms
                .store(crate::worker::now_ms(), Ordering::Relaxed);
            // Release: the initialised header is visible to a collector that swaps it out.
            f.block.store(blk, Ordering::Release);
            // The worker drains it after the delay if we stop; the fence orders the store above
            // before our check of the worker's idle flag (pairs with its fence).
            crate::worker::kick_after_publish();
            try_retire(b, r, may_alloc)
        }
        Err(Refused::Cap | Refused::NoPage) => Err(r),
    }
}

#[cold]
#[inline(never)]
fn refill_and_retry(b: &'static Global, r: Retired, may_alloc: bool) -> Result<(), Retired> {
    match b.budget.reserve(r.size, LOCAL_CHUNK.max(r.size), b.cap) {
        Some(got) => {
            RESERVE.with(|c| c.set(c.get() + got));
            try_retire(b, r, may_alloc)
        }
        None => Err(r),
    }
}

#[cold]
#[inline(never)]
fn register_and_retry(b: &'static Global, r: Retired, may_alloc: bool) -> Result<(), Retired> {
    // Registration runs the exit hook's constructor; during thread-local teardown this fails and
    // the thread uses the per-CPU path for good.
    if EXIT.try_with(|_| ()).is_err() {
        return Err(r);
    }
    let f = claim_or_register();
    MINE.with(|m| m.set(f));
    try_retire(b, r, may_alloc)
}

fn claim_or_register() -> &'static Front {
    for f in fronts() {
        // Acquire pairs with the Release store of `owned = false` in the previous owner's exit
        // hook: its last stores to the front are visible.
        if !f.owned.load(Ordering::Relaxed)
            && f.owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return f;
        }
    }
    let f = Box::into_raw(Box::new(Front {
        block: AtomicPtr::new(core::ptr::null_mut()),
        opened_ms: AtomicU64::new(0),
        queued: AtomicU64::new(0),
        owned: AtomicBool::new(true),
        next: AtomicPtr::new(core::ptr::null_mut()),
    }));
    let mut head = FRONTS.load(Ordering::Relaxed);
    loop {
        // SAFETY: not yet published; ours.
        unsafe { (*f).next.store(head, Ordering::Relaxed) };
        // Release publishes the initialised front.
        match FRONTS.compare_exchange_weak(head, f, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    // SAFETY: published fronts are never freed.
    unsafe { &*f }
}

/// Hands the exiting thread's block over and gives its budget back.
struct ExitHook;
impl Drop for ExitHook {
    fn drop(&mut self) {
        let f = MINE.with(|m| m.replace(core::ptr::null()));
        // SAFETY: fronts are never freed.
        let Some(f) = (unsafe { f.as_ref() }) else {
            return;
        };
        if let Some(b) = crate::worker::batcher_if_started() {
            // The owner detaches its own block (a collector may have swapped it out already:
            // then null comes back, Invariant 1); Acquire as in `hand_over_full`.
            let blk = f.block.swap(core::ptr::null_mut(), Ordering::Acquire);
            if !blk.is_null() {
                let mut added = b.hand_over_detached(rcu_core::cpu::current_cpu(), blk, false);
                crate::worker::free_reclaimed(b, &mut added);
                crate::worker::kick();
            }
            let left = RESERVE.with(|c| c.replace(0));
            if left != 0 {
                b.budget.release(left);
            }
        }
        // Release: the next owner sees our last stores.
        f.owned.store(false, Ordering::Release);
    }
}

/// Collector side: swaps out the blocks of fronts opened at least `delay_ms` ago (all of them
/// when `flush_all`) into `out`, stamping them after the swaps. Returns the stamp (the caller
/// must wait for it before freeing) and whether fronts with younger blocks remain.
pub(crate) fn steal(
    b: &Global,
    out: &mut Batch,
    flush_all: bool,
    now_ms: u64,
    delay_ms: u64,
) -> (Option<GpSeq>, bool) {
    let mut stolen = Batch::new();
    let mut open_left = false;
    for f in fronts() {
        if f.block.load(Ordering::Relaxed).is_null() {
            continue;
        }
        if !flush_all && now_ms.saturating_sub(f.opened_ms.load(Ordering::Relaxed)) < delay_ms {
            open_left = true;
            continue;
        }
        // Acquire pairs with the owner's Release store of the fresh block (its header).
        let blk = f.block.swap(core::ptr::null_mut(), Ordering::Acquire);
        if !blk.is_null() {
            stolen.push(blk);
        }
    }
    if stolen.is_empty() {
        return (None, open_left);
    }
    // After every swap: a grace period for this snapshot waits for appends in flight and covers
    // every object already appended (module docs).
    let snap = b.dom.get_state();
    let mut newest = None;
    while let Some(blk) = stolen.pop() {
        // SAFETY: we own the stolen block; the owner writes only other fields (module docs).
        unsafe {
            (*blk).hdr.snap = snap.raw();
            (*blk).hdr.handed_ms = now_ms;
        }
        newest = Some(newer(newest, snap));
        out.push(blk);
    }
    (newest, open_left)
}

/// Whether any front holds an open block (the worker's idle check, after its fence).
pub(crate) fn any_open() -> bool {
    fronts().any(|f| !f.block.load(Ordering::Relaxed).is_null())
}

/// Objects appended through fronts (statistics).
pub(crate) fn queued() -> u64 {
    fronts().map(|f| f.queued.load(Ordering::Relaxed)).sum()
}
