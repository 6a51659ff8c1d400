//! Per-thread front blocks: the `kfree_rcu` fast path without an atomic read-modify-write.
//!
//! # Implementation
//!
//! Each retiring thread owns a [`Front`]: up to [`FRONT_CHANS`] channels ([`FrontChan`], in
//! `chan.rs`: a free function and its context, with an open block and a drain block, and the
//! lock-free protocol by which collectors take them) and a slice of the pending budget. A kind
//! of object beyond those takes the per-CPU path until one of the channels goes idle.
//!
//! A full block is detached by the owner and handed to its CPU slot — one lock CAS per ~505
//! objects — where ready-first reclaim frees older blocks on the owner's thread.
//!
//! ## Draining ready blocks one object per retire
//!
//! Freeing a whole ready block at once overflows the allocator's thread cache (glibc's tcache
//! keeps 7 chunks per size): 498 of 505 frees then go to the arena's shared bins with an atomic
//! operation each, and the next 498 allocations come back through the arena's slow path. A
//! malloc-and-free loop costs about 19 ns per pair on this machine; 505 mallocs then 505 frees
//! cost about 48 ns per pair. So a ready block of an `inline_free` channel (no drop glue: the
//! free is `dealloc` alone) becomes the channel's *drain* block, and every retire into that
//! channel frees one of its objects right after appending its own, inside the same read-side
//! critical section: the freed chunk has the size of the caller's next allocation of that type,
//! which the thread cache hands straight back (one drain per channel keeps every size class in
//! balance when several types are retired). Freeing inside a read-side section is allowed
//! because an `inline_free` channel runs no user code and never waits. When the drain block is
//! empty the owner detaches it, releases its budget, recycles its page and takes the oldest
//! ready block of the same channel from its CPU slot. The worker steals drain blocks that sat
//! for the drain delay (their thread stopped retiring); an exiting thread frees its own.
//!
//! Invariants (besides the channel's, `chan.rs`):
//! 1. `reserve` (the thread's unspent budget) is owner-only; it goes back to the budget at thread
//!    exit.
//! 2. A front is owned by at most one thread (`owned`), and only its owner keys, opens, appends
//!    to, drains and detaches its channels.
//!
//! Fronts are registered in a global lock-free list and never freed; an exiting thread hands its
//! block over, gives its budget back and releases the front for reuse.

use core::cell::Cell;

use rcu_core::GpSeq;

use crate::chan::{stamp_stolen, FrontChan};
use crate::krc::{Batch, Processed, Refused, Retired};
use crate::primitive::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use crate::worker::Global;

/// Budget a thread reserves at a time for its front.
const LOCAL_CHUNK: usize = 16 << 10;

/// Channels one thread keeps open at once.
pub(crate) const FRONT_CHANS: usize = 4;

/// One thread's front: its channels and statistics.
#[derive(Debug)]
pub(crate) struct Front {
    chans: [FrontChan; FRONT_CHANS],
    /// Objects this front's owner freed from drain blocks (owner load + store; statistics).
    freed_inline: AtomicU64,
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
    /// Unspent budget of this thread (Invariant 1).
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
/// (no budget slice, no page for a new block, thread-local teardown).
#[inline(always)]
pub(crate) fn try_retire(b: &'static Global, r: Retired, may_alloc: bool) -> Result<(), Retired> {
    let f = MINE.with(|m| m.get());
    // SAFETY: fronts are never freed.
    let Some(f) = (unsafe { f.as_ref() }) else {
        return register_and_retry(b, r, may_alloc);
    };
    let key = r.free as usize;
    let Some(ci) = (0..FRONT_CHANS).find(|&i| f.chans[i].is(key, r.ctx)) else {
        return claim_chan_and_retry(b, f, r, may_alloc);
    };
    let c = &f.chans[ci];
    // Budget first (owner-only counter, Invariant 1).
    let left = RESERVE.with(|c| c.get());
    if left < r.size {
        return refill_and_retry(b, r, may_alloc);
    }
    let g = rcu_core::rcu_read_lock();
    // SAFETY: we own the front (Invariant 2) and hold `g` across the call.
    let Some(full) = (unsafe { c.append(r.obj, r.size) }) else {
        drop(g);
        return open_and_retry(b, f, ci, r, may_alloc);
    };
    // SAFETY: as for `append`; the free is the global allocator's `dealloc` with the layout in
    // the block's context (an `inline_free` block is a `dealloc_boxes` block), which runs no user
    // code and never waits.
    let drained =
        unsafe { c.drain_one(|p, ctx| std::alloc::dealloc(p, crate::block::decode_layout(ctx))) };
    drop(g);
    RESERVE.with(|c| c.set(left - r.size));
    // Statistics, owner-only writers: load + store, Relaxed (no RMW on the fast path).
    f.queued
        .store(f.queued.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if let Some(emptied) = drained {
        f.freed_inline.store(
            f.freed_inline.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        if emptied {
            finish_drain(b, c);
        }
    }
    if full {
        hand_over_full(b, c);
    }
    Ok(())
}

/// The drain block of `c` is empty: free it and install the slot's next ready block of the same
/// channel.
#[cold]
#[inline(never)]
fn finish_drain(b: &'static Global, c: &FrontChan) {
    let mut res = c.take_drain(b);
    let (installed, more) =
        c.refill_drain(b, rcu_core::cpu::current_cpu(), crate::worker::now_ms());
    add(&mut res, more);
    crate::worker::count_freed(&res);
    if installed {
        // The worker steals it after the drain delay if we stop retiring (pairs with its fence).
        crate::worker::kick_after_publish();
    }
}

fn add(a: &mut Processed, b: Processed) {
    a.blocks += b.blocks;
    a.objects += b.objects;
    a.ready_first += b.ready_first;
}

/// The open block of `c` is full: detach it and hand it to this CPU's slot.
#[cold]
#[inline(never)]
fn hand_over_full(b: &'static Global, c: &FrontChan) {
    let may_reclaim = !rcu_core::rcu_read_lock_held();
    let Some(mut added) = c.hand_over(b, rcu_core::cpu::current_cpu(), may_reclaim, true) else {
        return; // a collector took it; it will free it after a grace period
    };
    crate::worker::kick();
    let drain = added.take_drain();
    crate::worker::free_reclaimed(b, &mut added);
    if let Some(d) = drain {
        let res = c.install_drain(b, d, crate::worker::now_ms());
        crate::worker::count_freed(&res);
        if res.blocks == 0 {
            crate::worker::kick_after_publish();
        }
    }
}

/// Gives channel `c` up: hands its open block over and frees the rest of its drain block (it is
/// ours and ready once detached). Owner only.
fn release_chan(b: &'static Global, c: &FrontChan, may_reclaim: bool) {
    if let Some(mut added) = c.hand_over(b, rcu_core::cpu::current_cpu(), may_reclaim, false) {
        crate::worker::free_reclaimed(b, &mut added);
        crate::worker::kick();
    }
    crate::worker::count_freed(&c.take_drain(b));
}

/// No channel of the front is `r`'s: take an unused one, or one that holds no block (its blocks
/// were handed over or collected after the drain delay: the thread stopped retiring that kind).
/// With every channel busy the object takes the per-CPU path: evicting a busy channel would hand
/// over a block holding a few objects each time a thread rotates through more kinds than it has
/// channels.
#[cold]
#[inline(never)]
fn claim_chan_and_retry(
    b: &'static Global,
    f: &Front,
    r: Retired,
    may_alloc: bool,
) -> Result<(), Retired> {
    let Some(c) = f.chans.iter().find(|c| c.is_idle()) else {
        return Err(r);
    };
    c.set_key(r.free, r.ctx);
    try_retire(b, r, may_alloc)
}

#[cold]
#[inline(never)]
fn open_and_retry(
    b: &'static Global,
    f: &Front,
    ci: usize,
    r: Retired,
    may_alloc: bool,
) -> Result<(), Retired> {
    let c = &f.chans[ci];
    match c.open(
        b,
        rcu_core::cpu::current_cpu(),
        r.inline_free,
        may_alloc,
        crate::worker::now_ms(),
    ) {
        Ok(()) => {
            // The worker drains it after the delay if we stop; the fence orders the block's
            // publication before our check of the worker's idle flag (pairs with its fence).
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
    // Pre-reserve park slots before any pressure: a headless retire inside a reader that finds
    // no memory parks there (the fallback paths reserve again if this failed).
    crate::park::reserve();
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
        chans: core::array::from_fn(|_| FrontChan::new()),
        freed_inline: AtomicU64::new(0),
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

/// Hands the exiting thread's blocks over, frees its drain blocks and gives its budget back.
struct ExitHook;
impl Drop for ExitHook {
    fn drop(&mut self) {
        let f = MINE.with(|m| m.replace(core::ptr::null()));
        // SAFETY: fronts are never freed.
        let Some(f) = (unsafe { f.as_ref() }) else {
            return;
        };
        if let Some(b) = crate::worker::batcher_if_started() {
            for c in f.chans.iter() {
                // The owner detaches its own blocks (a collector may have swapped them out
                // already: then null comes back, the channel's Invariant 1). No reclaim: thread
                // teardown.
                release_chan(b, c, false);
                // Both blocks are detached; the next owner starts unkeyed.
                c.clear_key();
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

/// Collector side: swaps out the open blocks of channels opened at least `delay_ms` ago and the
/// drain blocks installed at least that long ago (all of them when `flush_all`) into `out`,
/// stamping them after the swaps. Returns the stamp (the caller must wait for it before freeing)
/// and whether younger blocks remain.
pub(crate) fn steal(
    b: &Global,
    out: &mut Batch,
    flush_all: bool,
    now_ms: u64,
    delay_ms: u64,
) -> (Option<GpSeq>, bool) {
    let mut stolen = Batch::new();
    let mut open_left = false;
    for c in fronts().flat_map(|f| f.chans.iter()) {
        open_left |= c.steal(&mut stolen, flush_all, now_ms, delay_ms);
    }
    (stamp_stolen(b, stolen, out, now_ms), open_left)
}

/// Whether any front holds an open or drain block (the worker's idle check, after its fence).
pub(crate) fn any_open() -> bool {
    fronts()
        .flat_map(|f| f.chans.iter())
        .any(FrontChan::has_blocks)
}

/// Objects freed from drain blocks by their fronts' owners (statistics).
pub(crate) fn freed_inline() -> u64 {
    fronts()
        .map(|f| f.freed_inline.load(Ordering::Relaxed))
        .sum()
}

/// Objects appended through fronts (statistics).
pub(crate) fn queued() -> u64 {
    fronts().map(|f| f.queued.load(Ordering::Relaxed)).sum()
}
