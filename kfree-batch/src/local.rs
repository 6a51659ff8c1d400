//! Per-thread front blocks: the `kfree_rcu` fast path without an atomic read-modify-write.
//!
//! # Implementation
//!
//! Each retiring thread owns a [`Front`]: up to [`FRONT_CHANS`] channels (a channel is a free
//! function and its context: one per type, or per layout for types without drop glue), each with
//! an open block and a drain block, and a slice of the pending budget. A kind of object beyond
//! those takes the per-CPU path until one of the channels goes idle. Appending is plain stores by
//! the owner — but the worker and `kvfree_rcu_barrier` must be able to take a partial block from
//! a thread that stopped retiring (drain delay, barrier, thread gone after `fork()`). RCU
//! protects each channel's blocks:
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
//! ## Draining ready blocks one object per retire
//!
//! Freeing a whole ready block at once overflows the allocator's thread cache (glibc's tcache
//! keeps 7 chunks per size): 498 of 505 frees then go to the arena's shared bins with an atomic
//! operation each, and the next 498 allocations come back through the arena's slow path. A
//! malloc-and-free loop costs about 19 ns per pair on this machine; 505 mallocs then 505 frees
//! cost about 48 ns per pair. So a ready block of an `inline_free` channel (no drop glue: the
//! free is `dealloc` alone) becomes the channel's *drain* block, and every retire into that
//! channel frees one of its objects right after appending its own: the freed chunk has the size
//! of the caller's next allocation of that type, which the thread cache hands straight back (one
//! drain per channel keeps every size class in balance when several types are retired). The
//! drain block is protected exactly like the open block:
//!
//! ```text
//!   owner (inside the same read-side section as the append)   collector
//!   d = front.drain.load()                                    d = front.drain.swap(null)
//!   n = d.count - 1; p = d.ptrs[n]; d.count = n               snap = get_state(); wait_for(snap)
//!   free(p)                // GP of `d` is over               free d.ptrs[..d.count]
//! ```
//!
//! The owner frees inside its critical section, so a collector's grace period also waits for a
//! free in flight: when `kvfree_rcu_barrier` returns, nothing popped before it is still being
//! freed. Freeing inside a read-side section is allowed because an `inline_free` channel runs no
//! user code and never waits. When the drain block is empty the owner detaches it (swap: whoever
//! gets the non-null value owns it), releases its budget, recycles its page and takes the oldest
//! ready block of the same channel from its CPU slot. The worker steals drain blocks that sat for
//! the drain delay (their thread stopped retiring); an exiting thread frees its own.
//!
//! Invariants (per channel):
//! 0. The key (`free`, `ctx`) is written by the owner only, while `block` and `drain` are null
//!    or after it detached them; a block in `block` or `drain` belongs to the key's channel.
//! 1. Only the owner stores a non-null `block`; anyone may swap it to null, and whoever gets the
//!    non-null value owns the block.
//! 2. The owner touches `block`'s contents only inside one read-side critical section that loaded
//!    the pointer.
//! 3. `reserve` (the thread's unspent budget) is owner-only; it goes back to the budget at thread
//!    exit.
//! 4. `drain` is null or a ready block of an `inline_free` channel with `count > 0`, installed
//!    only by the owner; Invariants 1 and 2 apply to it as to `block`. Its budget (objects and
//!    page) stays charged until the whole block is freed.
//!
//! Fronts are registered in a global lock-free list and never freed; an exiting thread hands its
//! block over, gives its budget back and releases the front for reuse.

use core::cell::Cell;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use rcu_core::GpSeq;

use crate::block::{Block, BLOCK_CAPACITY};
use crate::krc::{newer, Batch, Refused, Retired};
use crate::worker::Global;

/// Budget a thread reserves at a time for its front.
const LOCAL_CHUNK: usize = 16 << 10;

/// Channels one thread keeps open at once.
pub(crate) const FRONT_CHANS: usize = 4;

/// One channel of a front (Invariants 0-4).
#[derive(Debug)]
struct FrontChan {
    /// The channel's free function as an address, 0 while unused (owner writes, Invariant 0).
    free: AtomicUsize,
    /// The free function's context (owner writes, Invariant 0).
    ctx: AtomicPtr<()>,
    /// The open block, or null (Invariant 1).
    block: AtomicPtr<Block>,
    /// When the open block was opened (batcher clock), for the drain delay.
    opened_ms: AtomicU64,
    /// The ready block being freed one object per retire, or null (Invariant 4).
    drain: AtomicPtr<Block>,
    /// When `drain` was installed (batcher clock): the worker steals it after the drain delay.
    drain_ms: AtomicU64,
}

impl FrontChan {
    const fn new() -> FrontChan {
        FrontChan {
            free: AtomicUsize::new(0),
            ctx: AtomicPtr::new(core::ptr::null_mut()),
            block: AtomicPtr::new(core::ptr::null_mut()),
            opened_ms: AtomicU64::new(0),
            drain: AtomicPtr::new(core::ptr::null_mut()),
            drain_ms: AtomicU64::new(0),
        }
    }

    /// Whether this channel is `(free, ctx)` (owner only; Relaxed: owner-written fields).
    #[inline(always)]
    fn is(&self, free: usize, ctx: *const ()) -> bool {
        self.free.load(Ordering::Relaxed) == free
            && self.ctx.load(Ordering::Relaxed).cast_const() == ctx
    }

    fn key(&self) -> crate::krc::ChanKey {
        (
            self.free.load(Ordering::Relaxed),
            self.ctx.load(Ordering::Relaxed).cast_const(),
        )
    }
}

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
    // Budget first (owner-only counter, Invariant 3).
    let left = RESERVE.with(|c| c.get());
    if left < r.size {
        return refill_and_retry(b, r, may_alloc);
    }
    let g = rcu_core::rcu_read_lock();
    // Relaxed: only this thread stores non-null values (Invariant 1); a collector's swap is
    // ordered by the grace period (module docs).
    let blk = c.block.load(Ordering::Relaxed);
    let Some(blk) = NonNull::new(blk) else {
        drop(g);
        return open_and_retry(b, f, ci, r, may_alloc);
    };
    let blk = blk.as_ptr();
    // SAFETY: Invariant 2: we loaded the pointer inside this critical section, so a collector
    // that swapped it out waits for us before reading; the block is of this channel (Invariant
    // 0); we touch only owner fields, through field pointers (a collector may be writing
    // `snap`/`handed_ms` of the same header).
    let full = unsafe {
        let h = core::ptr::addr_of_mut!((*blk).hdr);
        let count = core::ptr::addr_of_mut!((*h).count);
        let i = *count as usize;
        core::ptr::addr_of_mut!((*blk).ptrs)
            .cast::<*mut u8>()
            .add(i)
            .write(r.obj);
        *count += 1;
        *core::ptr::addr_of_mut!((*h).bytes) += r.size;
        *count as usize == BLOCK_CAPACITY
    };
    // Relaxed as for `block`; Invariant 4.
    let d = c.drain.load(Ordering::Relaxed);
    // SAFETY: Invariants 2 and 4: loaded inside this section, ready, non-empty, `inline_free`.
    let emptied = !d.is_null() && unsafe { drain_one(d) };
    drop(g);
    RESERVE.with(|c| c.set(left - r.size));
    // Statistics, owner-only writers: load + store, Relaxed (no RMW on the fast path).
    f.queued
        .store(f.queued.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if !d.is_null() {
        f.freed_inline.store(
            f.freed_inline.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
    }
    if emptied {
        finish_drain(b, c);
    }
    if full {
        hand_over_full(b, c);
    }
    Ok(())
}

/// Frees the last object of drain block `d`; returns whether `d` is now empty.
///
/// # Safety
/// Called by the owner inside a read-side critical section that loaded `d` from one of its
/// channels' `drain` (Invariants 2 and 4).
#[inline]
unsafe fn drain_one(d: *mut Block) -> bool {
    // SAFETY: the caller's contract; owner fields through field pointers (collectors write
    // `snap`/`handed_ms`/`next` of a block they swapped out).
    unsafe {
        let h = core::ptr::addr_of_mut!((*d).hdr);
        let count = core::ptr::addr_of_mut!((*h).count);
        let n = *count - 1;
        let p = core::ptr::addr_of!((*d).ptrs)
            .cast::<*mut u8>()
            .add(n as usize)
            .read();
        *count = n;
        // The grace period of `d` is over (Invariant 4), `p` is excluded from `count` before it is
        // freed (a collector frees `ptrs[..count]` only), and an `inline_free` block is a
        // `dealloc_boxes` block: `dealloc` with the layout in `ctx`, which runs no user code and
        // never waits, so it may run inside this critical section.
        std::alloc::dealloc(p, crate::block::decode_layout((*h).ctx));
        n == 0
    }
}

/// The drain block of `c` is empty: detach it, release it, and install the slot's next ready
/// block of the same channel.
#[cold]
#[inline(never)]
fn finish_drain(b: &'static Global, c: &FrontChan) {
    // Whoever gets the non-null value owns the block (Invariant 1 applies to `drain`).
    let d = c.drain.swap(core::ptr::null_mut(), Ordering::Acquire);
    if !d.is_null() {
        crate::worker::free_owned(b, d);
    }
    if let Some(next) = b.take_ready_of(rcu_core::cpu::current_cpu(), c.key()) {
        install_drain(b, c, next.as_ptr());
    }
}

/// Installs a ready block of `c`'s channel as its drain block (owner only, drain null).
fn install_drain(b: &Global, c: &FrontChan, d: *mut Block) {
    // SAFETY: the caller owns `d` (detached from its slot).
    let (snap, count, inline) = unsafe { ((*d).hdr.snap, (*d).hdr.count, (*d).hdr.inline_free) };
    debug_assert!(
        b.dom.poll(GpSeq::from_raw(snap)),
        "kfree-batch: drain block installed before its grace period completed"
    );
    debug_assert!(
        inline,
        "kfree-batch: drain block of a channel that is not inline_free"
    );
    if count == 0 {
        crate::worker::free_owned(b, d);
        return;
    }
    // Relaxed: a hint for the collectors' delay check; the block itself is published below.
    c.drain_ms.store(crate::worker::now_ms(), Ordering::Relaxed);
    // Release: the block's header and pointers are visible to a collector that swaps it out.
    c.drain.store(d, Ordering::Release);
    // The worker steals it after the drain delay if we stop retiring (pairs with its fence).
    crate::worker::kick_after_publish();
}

/// The open block of `c` is full: detach it and hand it to this CPU's slot.
#[cold]
#[inline(never)]
fn hand_over_full(b: &'static Global, c: &FrontChan) {
    // Whoever gets the non-null value owns the block (Invariant 1).
    let blk = c.block.swap(core::ptr::null_mut(), Ordering::Acquire);
    if blk.is_null() {
        return; // a collector took it; it will free it after a grace period
    }
    let may_reclaim = !rcu_core::rcu_read_lock_held();
    // SAFETY: we own `blk`.
    let inline = unsafe { (*blk).hdr.inline_free };
    // Relaxed: only we install a drain block (Invariant 4); a collector's swap to null only
    // makes us ask for one a little later.
    let drain_for = (inline && c.drain.load(Ordering::Relaxed).is_null()).then(|| c.key());
    let mut added = b.hand_over_detached(rcu_core::cpu::current_cpu(), blk, may_reclaim, drain_for);
    crate::worker::kick();
    crate::worker::free_reclaimed(b, &mut added);
    if let Some(d) = added.drain.take() {
        install_drain(b, c, d.as_ptr());
    }
}

/// Gives channel `c` up: hands its open block over and frees the rest of its drain block (it is
/// ours and ready once detached). Owner only.
fn release_chan(b: &'static Global, c: &FrontChan, may_reclaim: bool) {
    let blk = c.block.swap(core::ptr::null_mut(), Ordering::Acquire);
    if !blk.is_null() {
        let mut added = b.hand_over_detached(rcu_core::cpu::current_cpu(), blk, may_reclaim, None);
        crate::worker::free_reclaimed(b, &mut added);
        crate::worker::kick();
    }
    let d = c.drain.swap(core::ptr::null_mut(), Ordering::Acquire);
    if !d.is_null() {
        crate::worker::free_owned(b, d);
    }
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
    // Relaxed: the key is owner-written, and collectors only ever swap a block to null, so a
    // null seen here stays null (Invariant 0/1).
    let idle = |c: &FrontChan| {
        c.free.load(Ordering::Relaxed) == 0
            || (c.block.load(Ordering::Relaxed).is_null()
                && c.drain.load(Ordering::Relaxed).is_null())
    };
    let Some(ci) = (0..FRONT_CHANS).find(|&i| idle(&f.chans[i])) else {
        return Err(r);
    };
    let c = &f.chans[ci];
    // Invariant 0: both blocks are null (unused, or just released).
    c.free.store(r.free as usize, Ordering::Relaxed);
    c.ctx.store(r.ctx.cast_mut(), Ordering::Relaxed);
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
    match b.open_block(
        rcu_core::cpu::current_cpu(),
        r.free,
        r.ctx,
        r.inline_free,
        may_alloc,
    ) {
        Ok(blk) => {
            let c = &f.chans[ci];
            // Relaxed: as `drain_ms` in `install_drain`.
            c.opened_ms
                .store(crate::worker::now_ms(), Ordering::Relaxed);
            // Release: the initialised header is visible to a collector that swaps it out.
            c.block.store(blk, Ordering::Release);
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
        chans: [const { FrontChan::new() }; FRONT_CHANS],
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
                // already: then null comes back, Invariant 1). No reclaim: thread teardown.
                release_chan(b, c, false);
                // Invariant 0: both blocks are detached; the next owner starts unkeyed.
                c.free.store(0, Ordering::Relaxed);
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
        for (slot, since) in [(&c.block, &c.opened_ms), (&c.drain, &c.drain_ms)] {
            // Relaxed: hints (a stale age only delays a steal); the swap below decides.
            if slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            if !flush_all && now_ms.saturating_sub(since.load(Ordering::Relaxed)) < delay_ms {
                open_left = true;
                continue;
            }
            // Acquire pairs with the owner's Release store of the block (its header, and for a
            // drain block its pointers).
            let blk = slot.swap(core::ptr::null_mut(), Ordering::Acquire);
            if !blk.is_null() {
                stolen.push(blk);
            }
        }
    }
    if stolen.is_empty() {
        return (None, open_left);
    }
    // After every swap: a grace period for this snapshot waits for appends and drain frees in
    // flight and covers every object already appended (module docs).
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

/// Whether any front holds an open or drain block (the worker's idle check, after its fence).
pub(crate) fn any_open() -> bool {
    fronts().flat_map(|f| f.chans.iter()).any(|c| {
        !c.block.load(Ordering::Relaxed).is_null() || !c.drain.load(Ordering::Relaxed).is_null()
    })
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
