//! One channel of a per-thread front: the lock-free protocol between the thread that appends
//! to and drains its blocks and the collectors that take them away.
//!
//! # Implementation
//!
//! A channel is a free function and its context (one per type, or per layout for types without
//! drop glue) with two block slots: the *open* block the owner appends to and the *drain* block,
//! a ready block of an `inline_free` channel the owner frees one object per retire
//! (`local.rs` says why). Appending and draining are plain stores by the owner — but the worker
//! and `kvfree_rcu_barrier` must be able to take a block from a thread that stopped retiring
//! (drain delay, barrier, thread gone after `fork()`). RCU protects both slots:
//!
//! ```text
//!   owner                                    collector (holds the busy lock)
//!   -----                                    ---------
//!   rcu_read_lock()                          b = chan.block.swap(null)
//!   b = chan.block.load()                    snap = get_state()       // after the swap
//!   b.ptrs[count] = obj; count += 1          wait_for(snap)           // waits for the owner's
//!   d = chan.drain.load()                                             //   section that saw `b`
//!   n = d.count - 1; p = d.ptrs[n]                                    //   or `d`
//!   d.count = n; free(p)  // d's GP is over  read b.count, free b.ptrs[..count]
//!   rcu_read_unlock()                        (the same for a stolen drain block)
//! ```
//!
//! An append or drain step that saw the old pointer ran inside a read-side critical section that
//! began before the grace period, so it happens-before the collector reads `count`; one after
//! the grace period's start sees null (heavy/light barrier pairing) and takes the slow path. The
//! same grace period covers the appended objects themselves (they were retired before the swap),
//! and a drain free in flight: when a collector's grace period ends, nothing popped before it is
//! still being freed. The owner and the collector write disjoint header fields (`count`/`bytes`/
//! `ptrs` vs `snap`/`next`/`handed_ms`), so there is no data race while a step is in flight.
//!
//! A full open block and an empty drain block are detached by the owner with a swap: if a
//! collector won it, the collector has the block.
//!
//! Invariants:
//! 0. The key (`free`, `ctx`) is written by the owner only, while both slots are null; a block
//!    in either slot belongs to the key's channel.
//! 1. Only the owner stores a non-null pointer into a slot; anyone may swap a slot to null, and
//!    whoever gets the non-null value owns the block.
//! 2. The owner touches a slot's block only inside one read-side critical section that loaded
//!    the pointer, and only its owner fields (`count`, `bytes`, `ptrs`).
//! 3. `drain` is null or a ready block of an `inline_free` channel with `count > 0` when
//!    installed; its budget (objects and page) stays charged until the whole block is freed.
//!
//! ## Memory orderings
//! * Slot loads by the owner are `Relaxed`: only the owner stores non-null values (Invariant 1),
//!   and a collector's swap is ordered against the owner's section by the grace period.
//! * Installing a block is a `Release` store; a collector's swap is `Acquire` (the block's header
//!   and, for a drain block, its pointers are visible to it). The owner's own detaching swap is
//!   `Acquire` for symmetry; it only ever gets back what it stored.
//! * `opened_ms`/`drain_ms` and the key are `Relaxed` hints and owner-only words: a stale age only
//!   delays a steal; the swap decides ownership.
//!
//! The channel is the unit the loom model (`tests/loom_front.rs`) runs against a real
//! [`Batcher`] and grace-period domain.

use core::ptr::NonNull;

use rcu_core::GpSeq;

use crate::block::{Block, FreeFn, BLOCK_CAPACITY};
use crate::krc::{newer, Added, Batch, Batcher, ChanKey, Pages, Processed, Refused};
use crate::primitive::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// One channel of a front (module docs, Invariants 0-3).
#[derive(Debug)]
pub struct FrontChan {
    /// The channel's free function as an address, 0 while unused (owner writes, Invariant 0).
    free: AtomicUsize,
    /// The free function's context (owner writes, Invariant 0).
    ctx: AtomicPtr<()>,
    /// The open block, or null (Invariant 1).
    block: AtomicPtr<Block>,
    /// When the open block was opened (batcher clock), for the drain delay.
    opened_ms: AtomicU64,
    /// The ready block being freed one object per retire, or null (Invariant 3).
    drain: AtomicPtr<Block>,
    /// When `drain` was installed (batcher clock): collectors steal it after the drain delay.
    drain_ms: AtomicU64,
}

impl Default for FrontChan {
    fn default() -> Self {
        FrontChan::new()
    }
}

impl FrontChan {
    /// An unused channel.
    pub fn new() -> FrontChan {
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
    pub fn is(&self, free: usize, ctx: *const ()) -> bool {
        self.free.load(Ordering::Relaxed) == free
            && self.ctx.load(Ordering::Relaxed).cast_const() == ctx
    }

    /// The channel's key (owner only).
    pub(crate) fn key(&self) -> ChanKey {
        (
            self.free.load(Ordering::Relaxed),
            self.ctx.load(Ordering::Relaxed).cast_const(),
        )
    }

    /// Keys the channel for `(free, ctx)` (owner only, both slots null: Invariant 0).
    pub fn set_key(&self, free: FreeFn, ctx: *const ()) {
        debug_assert!(
            self.is_idle(),
            "kfree-batch: re-keying a channel that holds blocks"
        );
        self.free.store(free as usize, Ordering::Relaxed);
        self.ctx.store(ctx.cast_mut(), Ordering::Relaxed);
    }

    /// Marks the channel unused (owner only, both slots detached).
    pub(crate) fn clear_key(&self) {
        self.free.store(0, Ordering::Relaxed);
    }

    /// Whether the channel is unused or holds no block. Relaxed: the key is owner-written, and
    /// collectors only ever swap a slot to null, so a null seen by the owner stays null.
    pub(crate) fn is_idle(&self) -> bool {
        self.free.load(Ordering::Relaxed) == 0
            || (self.block.load(Ordering::Relaxed).is_null()
                && self.drain.load(Ordering::Relaxed).is_null())
    }

    /// Whether either slot holds a block (a hint for the worker's idle check).
    pub(crate) fn has_blocks(&self) -> bool {
        !self.block.load(Ordering::Relaxed).is_null()
            || !self.drain.load(Ordering::Relaxed).is_null()
    }

    /// Whether the drain slot is empty (owner only; a collector's swap to null only makes the
    /// owner ask for a drain block a little later).
    #[inline]
    pub(crate) fn drain_is_empty(&self) -> bool {
        self.drain.load(Ordering::Relaxed).is_null()
    }

    /// Owner: opens a block for the channel from `b` (a page of slot `cpu`'s cache, else a new
    /// page if `may_alloc`) and publishes it as the open block.
    pub fn open<P: Pages>(
        &self,
        b: &Batcher<'_, P>,
        cpu: usize,
        inline_free: bool,
        may_alloc: bool,
        now_ms: u64,
    ) -> Result<(), Refused> {
        let (free, ctx) = self.key();
        debug_assert!(
            free != 0,
            "kfree-batch: opening a block on an unkeyed channel"
        );
        // SAFETY: a keyed channel's `free` is the address of a `FreeFn` (Invariant 0).
        let free: FreeFn = unsafe { core::mem::transmute::<usize, FreeFn>(free) };
        let blk = b.open_block(cpu, free, ctx, inline_free, may_alloc)?;
        self.opened_ms.store(now_ms, Ordering::Relaxed);
        // Release: the initialised header is visible to a collector that swaps it out.
        self.block.store(blk, Ordering::Release);
        Ok(())
    }

    /// Owner: appends `obj` (charged `size` bytes) to the open block. `None`: there is no open
    /// block (never opened, or a collector took it); `Some(full)`: appended, and whether the
    /// block is now full (detach it with [`FrontChan::hand_over`]).
    ///
    /// # Safety
    /// The caller owns the channel and is inside a read-side critical section that lasts until
    /// after the call (Invariant 2).
    #[inline(always)]
    pub unsafe fn append(&self, obj: *mut u8, size: usize) -> Option<bool> {
        // Relaxed: only the owner stores non-null values (Invariant 1); a collector's swap is
        // ordered by the grace period (module docs).
        let blk = NonNull::new(self.block.load(Ordering::Relaxed))?.as_ptr();
        // SAFETY: Invariant 2: we loaded the pointer inside this critical section, so a collector
        // that swapped it out waits for us before reading; we touch only owner fields, through
        // field pointers (a collector may be writing `snap`/`handed_ms` of the same header).
        unsafe {
            let h = core::ptr::addr_of_mut!((*blk).hdr);
            let count = core::ptr::addr_of_mut!((*h).count);
            let i = *count as usize;
            core::ptr::addr_of_mut!((*blk).ptrs)
                .cast::<*mut u8>()
                .add(i)
                .write(obj);
            *count += 1;
            *core::ptr::addr_of_mut!((*h).bytes) += size;
            Some(*count as usize == BLOCK_CAPACITY)
        }
    }

    /// Owner: takes the last object of the drain block and passes it, with the block's context,
    /// to `free_one`. `None`: no drain block; `Some(emptied)`: one object freed, and whether the
    /// drain block is now empty (finish it with [`FrontChan::take_drain`]).
    ///
    /// # Safety
    /// As [`FrontChan::append`]; and `free_one` may run inside a read-side critical section: it
    /// runs no user code and never waits (the drain block's grace period is over, Invariant 3).
    #[inline(always)]
    pub unsafe fn drain_one(&self, free_one: impl FnOnce(*mut u8, *const ())) -> Option<bool> {
        // Relaxed as in `append`.
        let d = NonNull::new(self.drain.load(Ordering::Relaxed))?.as_ptr();
        // SAFETY: Invariants 2 and 3: loaded inside this section, ready, non-empty (an emptied
        // block is detached by the owner before its next step); owner fields only.
        unsafe {
            let h = core::ptr::addr_of_mut!((*d).hdr);
            let count = core::ptr::addr_of_mut!((*h).count);
            let n = *count - 1;
            let p = core::ptr::addr_of!((*d).ptrs)
                .cast::<*mut u8>()
                .add(n as usize)
                .read();
            // `p` leaves `count` before it is freed: a collector frees `ptrs[..count]` only.
            *count = n;
            free_one(p, (*h).ctx);
            Some(n == 0)
        }
    }

    /// Owner: detaches the open block (full, or the channel is given up) and hands it to slot
    /// `cpu` of `b`. With `may_reclaim`, ready blocks of that slot come back in the result for
    /// the caller to free ([`Batcher::free_detached`]), and, with `want_drain` too, when this
    /// channel drains and its drain slot is empty, the oldest ready block of the channel for
    /// [`FrontChan::install_drain`] ([`Added::take_drain`]; the caller must install or free
    /// it). Returns `None` if a collector took the block first.
    pub fn hand_over<P: Pages>(
        &self,
        b: &Batcher<'_, P>,
        cpu: usize,
        may_reclaim: bool,
        want_drain: bool,
    ) -> Option<Added> {
        // Whoever gets the non-null value owns the block (Invariant 1).
        let blk = self.block.swap(core::ptr::null_mut(), Ordering::Acquire);
        if blk.is_null() {
            return None; // a collector took it; it frees it after a grace period
        }
        // SAFETY: we own `blk`.
        let inline = unsafe { (*blk).hdr.inline_free };
        let drain_for =
            (may_reclaim && want_drain && inline && self.drain_is_empty()).then(|| self.key());
        Some(b.hand_over_detached(cpu, blk, may_reclaim, drain_for))
    }

    /// Owner: installs `d`, a ready block of this channel (from [`Added::take_drain`] or a slot),
    /// as the drain block; an empty one is freed instead. Returns what was freed here.
    pub fn install_drain<P: Pages>(
        &self,
        b: &Batcher<'_, P>,
        d: NonNull<Block>,
        now_ms: u64,
    ) -> Processed {
        let d = d.as_ptr();
        // SAFETY: the caller owns `d` (detached from its slot).
        let (snap, count, inline) =
            unsafe { ((*d).hdr.snap, (*d).hdr.count, (*d).hdr.inline_free) };
        debug_assert!(
            b.domain().poll(GpSeq::from_raw(snap)),
            "kfree-batch: drain block installed before its grace period completed"
        );
        debug_assert!(
            inline,
            "kfree-batch: drain block of a channel that is not inline_free"
        );
        debug_assert!(
            self.drain_is_empty(),
            "kfree-batch: a drain block is installed already"
        );
        if count == 0 {
            // SAFETY: owned, and its grace period is over (checked above).
            return unsafe { b.free_owned_block(d) };
        }
        self.drain_ms.store(now_ms, Ordering::Relaxed);
        // Release: the block's header and pointers are visible to a collector that swaps it out.
        self.drain.store(d, Ordering::Release);
        Processed::default()
    }

    /// Owner: the drain block was emptied (or the channel is given up): detaches it and frees
    /// what is left of it with its page, unless a collector took it first. Returns what was
    /// freed here.
    pub fn take_drain<P: Pages>(&self, b: &Batcher<'_, P>) -> Processed {
        // Whoever gets the non-null value owns the block (Invariant 1).
        let d = self.drain.swap(core::ptr::null_mut(), Ordering::Acquire);
        if d.is_null() {
            return Processed::default();
        }
        // SAFETY: owned, and ready (Invariant 3).
        unsafe { b.free_owned_block(d) }
    }

    /// Owner: installs the oldest ready block of this channel from slot `cpu`, if there is one
    /// (the drain slot must be empty). Returns whether a block was installed, and what was freed.
    pub fn refill_drain<P: Pages>(
        &self,
        b: &Batcher<'_, P>,
        cpu: usize,
        now_ms: u64,
    ) -> (bool, Processed) {
        match b.take_ready_of(cpu, self.key()) {
            Some(next) => {
                let res = self.install_drain(b, next, now_ms);
                (res.blocks == 0, res)
            }
            None => (false, Processed::default()),
        }
    }

    /// Collector: swaps out the open block if opened at least `delay_ms` before `now_ms` and the
    /// drain block if installed that long ago (both when `flush_all`) into `stolen`. Returns
    /// whether a younger block was left. Stamp the stolen blocks with [`stamp_stolen`] after
    /// every swap of the pass.
    pub fn steal(&self, stolen: &mut Batch, flush_all: bool, now_ms: u64, delay_ms: u64) -> bool {
        let mut left = false;
        for (slot, since) in [
            (&self.block, &self.opened_ms),
            (&self.drain, &self.drain_ms),
        ] {
            // Relaxed: hints (a stale age only delays a steal); the swap below decides.
            if slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            if !flush_all && now_ms.saturating_sub(since.load(Ordering::Relaxed)) < delay_ms {
                left = true;
                continue;
            }
            // Acquire pairs with the owner's Release store of the block (its header, and for a
            // drain block its pointers).
            let blk = slot.swap(core::ptr::null_mut(), Ordering::Acquire);
            if !blk.is_null() {
                stolen.push(blk);
            }
        }
        left
    }
}

/// Collector: stamps the blocks of `stolen` (taken by [`FrontChan::steal`]) with one snapshot
/// taken after every swap, and moves them to `out`. Returns the snapshot: the caller waits for
/// it before freeing, which waits for the appends and drain frees in flight and covers every
/// object already appended (module docs).
pub fn stamp_stolen<P: Pages>(
    b: &Batcher<'_, P>,
    mut stolen: Batch,
    out: &mut Batch,
    now_ms: u64,
) -> Option<GpSeq> {
    if stolen.is_empty() {
        return None;
    }
    let snap = b.domain().get_state();
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
    newest
}
