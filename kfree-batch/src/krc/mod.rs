//! Per-CPU batching state ("krc" in the kernel) and the block hand-off between enqueue, drain and
//! the worker.
//!
//! # Implementation
//!
//! Each CPU slot has a [`Krc`]: a try-lock and, under it, up to [`NCHAN`] open blocks (one per
//! bulk-free function + context, the *channels*), the list of blocks handed over and not yet
//! collected, a small cache of empty pages (`krc/cache.rs`), and the slot's unspent budget
//! reservation.
//!
//! ```text
//!   enqueue ──▶ chans[c].block (open) ──full──▶ handed (stamped) ──collect──▶ worker batch
//!                     │                                                       │ poll(snap)?
//!                     └──── drain delay expired / barrier / pressure ─────────┤ yes: free now
//!                                                                             │ no: wait GP, free
//!   cache (empty pages) ◀──────────────────────── page recycled ──────────────┘
//! ```
//!
//! * **Enqueue** (any thread): try the lock of the caller's CPU slot, then the others once each;
//!   only when every slot is busy does it spin. Under the lock: find or open the channel's block
//!   (a page from the slot's cache, else — headless form only — a fresh page from the page layer
//!   without reclaim), charge the object to the slot's reservation (refilled from the global
//!   budget in chunks), store the pointer. A block that becomes full is stamped and handed over at
//!   once.
//! * **Hand-over** stamps `snap = get_state()` under the lock, after every store into the block.
//!   A per-thread front's block (`chan.rs`) is swapped out of the front under that same lock.
//! * **Producer reclaim**: a hand-over outside any read-side critical section also detaches up
//!   to [`RECLAIM_PER_HANDOVER`] ready handed blocks (and, for a front, one to recycle in place),
//!   which the producer frees (or installs) after unlocking. Those blocks are *held* (Invariant
//!   5) until then.
//! * **Collect** (the worker, whose pass is also the barrier's): under the lock, hand over
//!   channels whose delay expired (or all of them), then take the `handed` list (all of it, or
//!   the blocks older than the delay and the surplus). From then on the collector owns those
//!   blocks exclusively.
//! * **Process**: blocks whose `snap` already completed are freed at once (*ready-first*); for the
//!   rest the collector drives one grace period up to the newest snapshot, then frees them.
//!   Each freed page returns to its origin slot's cache when that cache is below its target.
//!
//! ## Invariants
//!
//! 1. Everything in `KrcInner` is touched only with the slot's lock held.
//! 2. A block is in exactly one place: a channel, a `handed` list, a collector's batch, a cache.
//! 3. A block's `snap` is taken after the last store into it (hand-over happens under the lock
//!    that every store held), so `poll(snap)` proves a grace period passed after every retire.
//! 4. Budget: see `config` (`PENDING <= cap`; pages and object bytes are charged before use).
//!    A page stays charged for as long as the batcher holds it — in a block *or in a cache* —
//!    and is released when it goes back to the page layer, so the cap bounds every byte the
//!    batcher keeps resident beyond its fixed structures, not only the blocks in use. The
//!    emergency refill uses at most half of the cap; a caller that hits the cap first empties
//!    the caches, then takes every slot's unspent reservation back (`reclaim_slot_reserves`,
//!    under each slot's lock) together with the threads' slices (`local.rs`), so reservations
//!    nobody spends never fill the cap.
//! 5. `held` counts the blocks producers hold privately (detached ready blocks not yet freed,
//!    blocks taken to recycle not yet installed). A hold begins under a slot's lock
//!    (`begin_hold`), only while no barrier runs (`barriers == 0`), and ends after the free or
//!    the install (`end_hold`).
//! 6. A front's block moves to a slot in one critical section of that slot's lock (swapped out of
//!    the front, stamped, pushed), so it is never between the two where a collector that steals
//!    the fronts *and then* collects the slots — or a `fork()`, which happens with every slot
//!    lock held — could miss it.
//!
//! ## What a barrier covers
//!
//! `kvfree_rcu_barrier` must return only after every object retired before it is freed: no
//! destructor of such an object may run after it returns. At its start such an object is in a
//! front's open block, a slot's open block or `handed` list, a collection pass's batch, a block
//! a producer holds (Invariant 5), in the middle of a front's hand-over, or parked / head-linked
//! (`worker.rs`). The barrier takes the busy lock (so a pass that took blocks earlier has freed
//! them), then `barrier_begin`: raises `barriers` and takes and releases every slot lock, after
//! which no hold can begin, and waits for `held` to drain — every held block is then freed, or
//! installed in its front. Only then does it steal the fronts and collect the slots (Invariant 6
//! covers a hand-over in flight; no block leaves a slot privately meanwhile), wait for the grace
//! period and free everything, and `barrier_end` lets producers reclaim again. Each place is
//! therefore covered by a free that completes before the barrier returns. That includes a
//! recycled block's ready object that a front's put has just taken out: the owner frees it inside
//! the read-side critical section of the put (`local.rs`), which the barrier's grace period waits
//! for whenever the barrier found the block in the front.
//!
//! A barrier called from a destructor that such a free runs (a pass, or a producer's reclaim)
//! could never return — the free it waits for is the one running it — so it panics instead
//! (`lib.rs`). The same holds one level removed: a barrier in a `call_rcu` callback waits for
//! such a free, so an `rcu_barrier` in its destructor (which waits for that callback) would never
//! return either; the free runs in rcu-core's no-barrier scope, where `rcu_barrier` panics
//! (`worker.rs`, "Where destructors run").
//!
//! ## fork()
//!
//! The prepare handler (`worker.rs`) takes every slot lock in slot order
//! ([`Batcher::fork_lock_slots`]: no path nests two slot locks and no slot critical section
//! waits for another thread, so this cannot deadlock), so the child copies every slot between
//! critical sections: a front's block being handed over is
//! either still in the front or stamped in `handed` (Invariant 6), and Invariants 1-2 hold for
//! everything in the slots. The child resets the locks and the barrier's counts (`held` and
//! `barriers` counted the parent's threads; they become the forking thread's own, 0 unless a
//! destructor forked) and sets the budget to what it finds
//! ([`Batcher::slot_charges_after_fork`] plus the fronts, `local.rs`): Invariant 4 then holds in
//! the child with equality for what exists there. A block that was outside every slot and front
//! — in a collector's batch, or held by a producer (Invariant 5) — belongs to a thread the child
//! does not have: it is neither charged nor freed there (the parent frees its own copy), and its
//! page stays charged to the page layer. A child forked from a destructor that one of our frees
//! runs keeps the parent's charges instead (the forking thread still holds its blocks).
//!
//! ## Memory orderings
//!
//! The try-lock's Acquire/Release orders enqueues before hand-over and collection; the snapshot's
//! RMW (inside `get_state`) orders the retires before the grace period; `poll`/`wait_for` have
//! Acquire semantics, ordering the grace period before the frees. Statistics are Relaxed.
//!
//! A stamp taken by another thread than the retirer (a collector handing an expired channel
//! over, a producer that fell back to another CPU's slot and whose block someone else fills up)
//! still covers the retire, because the retire happens-before it: the retirer's unpublish, then
//! in program order its store into the block and its unlock (Release); the stamper's lock
//! (Acquire), then `get_state`'s RMW. That holds whether or not the retirer is inside a
//! read-side critical section. A block a front's owner detaches is stamped under the lock by the
//! owner itself; a block a collector steals from a front has no such chain and waits for one
//! grace period more (`chan.rs`, Invariant 5).
//!
//! `held` and `barriers` are ordered by the slot locks (`begin_hold`); a hold's end is a Release
//! decrement that the barrier's Acquire load of zero pairs with, so the holder's free or install
//! happens-before the barrier's collection.

use core::ptr::NonNull;

/// The kit's one snapshot comparison (rcu-core's), under the name the collectors use.
pub(crate) use rcu_core::raw::newer;
use rcu_core::raw::Domain;
use rcu_core::{CachePadded, GpSeq};

use crate::block::{Block, BlockHeader, FreeFn, BLOCK_CAPACITY, PAGE_SIZE};
use crate::config::{Budget, RESERVE_CHUNK};
use crate::lock::TryLock;
use crate::primitive::cell::UnsafeCell;
use crate::primitive::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

mod cache;
mod collect;
mod fork;
mod slot;

pub(crate) use slot::*;

/// Why an enqueue could not batch the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The pending-memory cap is reached.
    Cap,
    /// No block page could be had.
    NoPage,
}

/// An object being retired: where it is, what it weighs, and how to free it.
#[derive(Clone, Copy, Debug)]
pub struct Retired {
    /// The object.
    pub obj: *mut u8,
    /// Bytes charged to the pending budget.
    pub size: usize,
    /// Its channel's bulk free function.
    pub free: FreeFn,
    /// The free function's context.
    pub ctx: *const (),
    /// The channel is a `dealloc_boxes` channel (`ctx` encodes the layout): its free runs no
    /// user code and never waits, so ready blocks may be freed one object at a time inside a
    /// producer's read-side critical section (block docs).
    pub inline_free: bool,
}

/// What an enqueue did besides storing the pointer (the caller may need to wake the worker).
#[derive(Debug, Default)]
pub struct Added {
    /// A full block was handed over.
    pub handed: bool,
    /// A new block was opened (the worker must drain it after the delay).
    pub opened: bool,
    /// Handed blocks whose grace period had completed, detached for the caller to free
    /// ([`Batcher::free_detached`]) after the slot lock is released.
    pub(crate) reclaimed: [Option<NonNull<Block>>; RECLAIM_PER_HANDOVER],
    /// A ready block of an `inline_free` channel for the caller's front to recycle in place
    /// (only when asked for: [`Batcher::hand_over_detached`] with `recycle_for`).
    pub(crate) recycle: Option<NonNull<Block>>,
    /// No block to recycle came back, but the slot holds [`EXPEDITE_WAITING`] handed blocks:
    /// the snapshot of the oldest one of the channel, for [`Batcher::expedite_ready_of`].
    pub(crate) expedite: Option<GpSeq>,
}

impl Added {
    /// The ready block handed back for the caller's front to recycle in place, if any
    /// ([`crate::raw::FrontChan::install`]).
    pub fn take_recycle(&mut self) -> Option<NonNull<Block>> {
        self.recycle.take()
    }
}

/// A detached list of blocks owned by one collector.
#[derive(Debug)]
pub struct Batch {
    head: *mut Block,
    len: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch {
            head: core::ptr::null_mut(),
            len: 0,
        }
    }
    /// Blocks in the batch.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the batch holds no block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) fn push(&mut self, b: *mut Block) {
        // SAFETY: the batch owns `b` (Invariant 2).
        unsafe { (*b).hdr.next = self.head };
        self.head = b;
        self.len += 1;
    }
    pub(crate) fn pop(&mut self) -> Option<*mut Block> {
        let b = NonNull::new(self.head)?.as_ptr();
        // SAFETY: the batch owns `b`.
        self.head = unsafe { (*b).hdr.next };
        self.len -= 1;
        Some(b)
    }
}

/// What [`Batcher::collect`] left in the slots.
#[derive(Clone, Copy, Debug, Default)]
pub struct Collected {
    /// Partial blocks younger than the delay remain open.
    pub open_left: bool,
    /// Handed blocks left for their producers' ready-first reclaim.
    pub handed_left: usize,
    /// Newest snapshot among those blocks (the worker drives grace periods up to it).
    pub newest_left: Option<GpSeq>,
}

/// What a collection pass freed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Processed {
    /// Blocks freed.
    pub blocks: usize,
    /// Objects freed from blocks.
    pub objects: usize,
    /// Blocks freed without waiting for a new grace period.
    pub ready_first: usize,
}

/// Page source for blocks: the page layer, or the heap inside loom models.
pub trait Pages {
    /// A fresh page without reclaim, or `None`.
    fn alloc(&self) -> Option<NonNull<u8>>;
    /// Gives a page back.
    ///
    /// # Safety
    /// `p` came from `alloc` and is no longer used.
    unsafe fn free(&self, p: NonNull<u8>);
    /// Whether the source is over its limit: freed pages then go back instead of into a cache.
    fn over_limit(&self) -> bool {
        false
    }
}

/// The batcher core: per-CPU slots, the budget and the grace-period domain.
pub struct Batcher<'d, P: Pages> {
    krcs: Box<[CachePadded<Krc>]>,
    pub(crate) budget: Budget,
    pub(crate) cap: usize,
    pub(crate) pages_per_cpu: usize,
    pub(crate) dom: &'d Domain,
    pub(crate) pages: P,
    /// Milliseconds clock, read when a block is opened or handed over and before a producer's
    /// own grace period.
    clock: fn() -> u64,
    /// A producer's grace period failed (a reader blocked it): none is tried before this time
    /// (`clock`). Relaxed: a hint.
    expedite_after_ms: AtomicU64,
    /// Grace periods producers ran themselves (statistics, Relaxed).
    pub(crate) expedited: AtomicU64,
    /// The barrier's counts, on their own cache line (written at every producer's reclaim).
    gate: CachePadded<Gate>,
}

/// What a barrier waits for (Invariant 5).
struct Gate {
    /// Blocks producers hold privately: detached ready blocks not yet freed, ready blocks taken
    /// to recycle and not yet installed.
    held: AtomicUsize,
    /// Barriers waiting for `held` to drain or collecting; while non-zero, producers detach no
    /// block.
    barriers: AtomicUsize,
}

impl<P: Pages> core::fmt::Debug for Batcher<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Batcher")
            .field("slots", &self.krcs.len())
            .field("cap", &self.cap)
            .finish()
    }
}

impl<'d, P: Pages> Batcher<'d, P> {
    /// A batcher with `ncpu` slots, a pending `cap`, `pages_per_cpu` cached pages, grace periods
    /// from `dom`, pages from `pages`, and a millisecond `clock` for the drain delay.
    pub fn new(
        ncpu: usize,
        cap: usize,
        pages_per_cpu: usize,
        dom: &'d Domain,
        pages: P,
        clock: fn() -> u64,
    ) -> Self {
        assert!(
            ncpu <= crate::block::MAX_SLOTS,
            "kfree-batch: at most {} CPU slots",
            crate::block::MAX_SLOTS
        );
        Batcher {
            krcs: (0..ncpu.max(1))
                .map(|_| CachePadded::new(Krc::new()))
                .collect(),
            budget: Budget::new(),
            cap,
            pages_per_cpu,
            dom,
            pages,
            clock,
            expedite_after_ms: AtomicU64::new(0),
            expedited: AtomicU64::new(0),
            gate: CachePadded::new(Gate {
                held: AtomicUsize::new(0),
                barriers: AtomicUsize::new(0),
            }),
        }
    }

    /// The grace-period domain the batcher waits on.
    pub fn domain(&self) -> &'d Domain {
        self.dom
    }

    /// Batches `obj` (of `size` bytes) on CPU slot `cpu` (or another free one). `may_alloc`: whether a fresh
    /// page may be mapped when the slot's cache is empty (headless form only).
    #[inline]
    pub fn enqueue(
        &self,
        cpu: usize,
        r: Retired,
        may_alloc: bool,
        may_reclaim: bool,
    ) -> Result<Added, Refused> {
        let n = self.krcs.len();
        // No `%` per object (an integer division costs ~25 cycles): `cpu` is normally `< n`.
        let home = if cpu < n { cpu } else { cpu % n };
        let mut spins = 0u32;
        loop {
            for j in 0..n {
                let idx = if home + j < n { home + j } else { home + j - n };
                let k = &self.krcs[idx];
                if k.lock.try_lock() {
                    let r = k.with(|inner| self.add(k, inner, idx, r, may_alloc, may_reclaim));
                    k.lock.unlock();
                    return r;
                }
            }
            // Every slot is busy (more threads than CPUs, all inside enqueue): wait a moment.
            crate::primitive::spin_wait(spins);
            spins = spins.saturating_add(1);
        }
    }

    #[inline]
    fn add(
        &self,
        k: &Krc,
        inner: &mut KrcInner,
        origin: usize,
        r: Retired,
        may_alloc: bool,
        may_reclaim: bool,
    ) -> Result<Added, Refused> {
        let Retired {
            obj,
            size,
            free,
            ctx,
            inline_free,
        } = r;
        let mut added = Added::default();
        let found = inner.chans.iter().position(|c| {
            // SAFETY: open blocks belong to the slot (Invariant 2) and we hold its lock.
            !c.block.is_null() && unsafe { same_channel(&(*c.block).hdr, free as usize, ctx) }
        });
        let ci = match found {
            Some(ci) => {
                self.charge(inner, size)?;
                ci
            }
            None => {
                // A cached page is already charged (Invariant 4); a fresh one is charged here.
                let page = if let Some(p) = self.take_cached(k, inner) {
                    if let Err(e) = self.charge(inner, size) {
                        // SAFETY: the page just came from this slot's cache.
                        unsafe { inner.push_cache(k, p, origin) };
                        return Err(e);
                    }
                    p
                } else {
                    self.charge(inner, size + PAGE_SIZE)?;
                    match may_alloc.then(|| self.pages.alloc()).flatten() {
                        Some(p) => {
                            inner.reserve_left -= PAGE_SIZE;
                            p
                        }
                        // The reservation stays with the slot (still counted; Invariant 4).
                        None => return Err(Refused::NoPage),
                    }
                };
                let ci = match inner.chans.iter().position(|c| c.block.is_null()) {
                    Some(ci) => ci,
                    None => {
                        // Evict the oldest channel: hand its block over.
                        let oldest = (0..NCHAN)
                            .min_by_key(|&i| inner.chans[i].opened_ms)
                            .unwrap_or(0);
                        self.hand_over(inner, oldest);
                        added.handed = true;
                        oldest
                    }
                };
                // SAFETY: `page` is a page we own.
                let b = unsafe { Block::init(page, free, ctx, origin, inline_free) };
                inner.chans[ci] = Chan {
                    block: b,
                    opened_ms: (self.clock)(),
                };
                added.opened = true;
                ci
            }
        };
        inner.reserve_left -= size;
        let b = inner.chans[ci].block;
        // SAFETY: `b` is the channel's open block (not full: full blocks are handed over at once)
        // and we hold the slot's lock.
        let full = unsafe {
            let h = &mut (*b).hdr;
            let i = h.count as usize;
            debug_assert!(i < BLOCK_CAPACITY);
            core::ptr::addr_of_mut!((*b).ptrs)
                .cast::<*mut u8>()
                .add(i)
                .write(obj);
            h.count += 1;
            h.bytes += size;
            h.count as usize == BLOCK_CAPACITY
        };
        // Relaxed load+store: only the lock holder writes (statistics).
        k.queued
            .store(k.queued.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if full {
            self.hand_over(inner, ci);
            added.handed = true;
        }
        if added.handed {
            if may_reclaim {
                self.reclaim_ready(inner, &mut added, false, None);
            }
            k.handed_n.store(inner.nhanded, Ordering::Relaxed);
        }
        Ok(added)
    }

    /// Gives every slot's unspent reservation back to the budget (under each slot's lock);
    /// returns the bytes. Call holding no slot lock.
    pub(crate) fn reclaim_slot_reserves(&self) -> usize {
        let got: usize = self
            .krcs
            .iter()
            .map(|k| k.locked(|inner| core::mem::take(&mut inner.reserve_left)))
            .sum();
        self.budget.release(got);
        got
    }

    /// Makes sure the slot's reservation covers `need` bytes.
    #[inline]
    fn charge(&self, inner: &mut KrcInner, need: usize) -> Result<(), Refused> {
        if inner.reserve_left >= need {
            return Ok(());
        }
        let missing = need - inner.reserve_left;
        let got = self
            .budget
            .reserve(missing, RESERVE_CHUNK, self.cap)
            .ok_or(Refused::Cap)?;
        inner.reserve_left += got;
        Ok(())
    }

    /// Stamps channel `ci`'s block and moves it to `handed` (Invariant 3).
    fn hand_over(&self, inner: &mut KrcInner, ci: usize) {
        let b = inner.chans[ci].block;
        debug_assert!(!b.is_null());
        // Taken under the lock, after every store into the block (Invariant 3).
        let snap = self.dom.get_state();
        // SAFETY: the slot owns `b` and we hold its lock.
        unsafe {
            (*b).hdr.snap = snap.raw();
            (*b).hdr.handed_ms = (self.clock)();
        }
        inner.push_handed(b);
        inner.chans[ci] = NO_CHAN;
    }

    /// Opens a block for channel `(free, ctx)` outside any slot: a page from slot `cpu`'s cache,
    /// else (if `may_alloc`) from the page layer, charged to the budget (used by the per-thread
    /// fronts).
    pub(crate) fn open_block(
        &self,
        cpu: usize,
        free: FreeFn,
        ctx: *const (),
        inline_free: bool,
        may_alloc: bool,
    ) -> Result<*mut Block, Refused> {
        let origin = cpu % self.krcs.len();
        let k = &self.krcs[origin];
        // A cached page is already charged (Invariant 4); a fresh one is charged here.
        let page = match k.locked(|inner| self.take_cached(k, inner)) {
            Some(p) => p,
            None => {
                self.budget
                    .reserve(PAGE_SIZE, PAGE_SIZE, self.cap)
                    .ok_or(Refused::Cap)?;
                match may_alloc.then(|| self.pages.alloc()).flatten() {
                    Some(p) => p,
                    None => {
                        self.budget.release(PAGE_SIZE);
                        return Err(Refused::NoPage);
                    }
                }
            }
        };
        // SAFETY: `page` is a page we own.
        Ok(unsafe { Block::init(page, free, ctx, origin, inline_free) })
    }

    /// Hands a front's open block (full, or its thread gives the channel up) to slot `cpu`:
    /// `detach` takes it from the front *under the slot's lock* (so a collector that steals the
    /// fronts and then collects the slots finds it in one place or the other, never in between:
    /// Invariant 6), and it is stamped there, after every store into it (the owner's stores
    /// happen-before). Returns `None` if `detach` found no block (a collector took it). With
    /// `may_reclaim`, ready handed blocks of that slot are detached for the caller to free, as in
    /// [`Batcher::enqueue`], except that the caller is a front that recycles ready `inline_free`
    /// blocks itself (`local.rs`): with `recycle_for`, if the handed block is `inline_free`, the
    /// oldest ready block of that channel goes to [`Added::take_recycle`].
    pub(crate) fn hand_over_detached(
        &self,
        cpu: usize,
        detach: impl FnOnce() -> Option<NonNull<Block>>,
        may_reclaim: bool,
        recycle_for: Option<ChanKey>,
    ) -> Option<Added> {
        let idx = cpu % self.krcs.len();
        let k = &self.krcs[idx];
        k.locked(|inner| {
            let b = detach()?.as_ptr();
            let mut added = Added {
                handed: true,
                ..Added::default()
            };
            let snap = self.dom.get_state();
            // SAFETY: `detach` gave us `b`; it becomes the slot's.
            let inline = unsafe {
                (*b).hdr.snap = snap.raw();
                (*b).hdr.handed_ms = (self.clock)();
                (*b).hdr.inline_free
            };
            inner.push_handed(b);
            if may_reclaim {
                let recycle_for = recycle_for.filter(|_| inline);
                self.reclaim_ready(inner, &mut added, true, recycle_for);
            }
            k.handed_n.store(inner.nhanded, Ordering::Relaxed);
            Some(added)
        })
    }

    /// A producer's own grace period, when the worker lags: runs `snap`'s grace period without
    /// waiting ([`Domain::try_advance`]) unless a recent attempt was blocked by a reader, and
    /// then takes the oldest ready block of channel `key` from slot `cpu` (to recycle in place).
    /// Call outside any read-side critical section (inside one, the attempt fails).
    pub(crate) fn expedite_ready_of(
        &self,
        cpu: usize,
        key: ChanKey,
        snap: GpSeq,
    ) -> Option<NonNull<Block>> {
        if !self.dom.poll(snap) {
            let now = (self.clock)();
            if now < self.expedite_after_ms.load(Ordering::Relaxed) {
                return None;
            }
            if !self.dom.try_advance(snap) {
                self.expedite_after_ms
                    .store(now + EXPEDITE_BACKOFF_MS, Ordering::Relaxed);
                return None;
            }
            self.expedited.fetch_add(1, Ordering::Relaxed);
        }
        let k = &self.krcs[cpu % self.krcs.len()];
        k.locked(|inner| {
            // The block is held until installed (Invariant 5); none while a barrier runs.
            if !self.begin_hold() {
                return None;
            }
            let b = inner.take_ready_where(self.dom.current(), |h| recycles_as(h, key));
            k.handed_n.store(inner.nhanded, Ordering::Relaxed);
            if b.is_none() {
                self.end_hold();
            }
            b.and_then(NonNull::new)
        })
    }

    /// Ready-first on the caller's path: detaches up to [`RECLAIM_PER_HANDOVER`] of the slot's
    /// oldest handed blocks whose grace period is over, for the caller to free after unlocking —
    /// so objects are freed by the thread that allocated them (no cross-thread free).
    ///
    /// A `front` caller recycles ready `inline_free` blocks itself, so those are freed in bulk
    /// only past [`BULK_FREE_BACKLOG`] handed blocks (in the steady state the front frees one object
    /// per retire); with `recycle_for`, the oldest ready block of that channel goes to
    /// [`Added::take_recycle`].
    ///
    /// Every block detached here is held (Invariant 5) until the caller frees it
    /// ([`Batcher::free_detached`]) or installs it ([`crate::raw::FrontChan::install`]); while a
    /// barrier runs nothing is detached.
    fn reclaim_ready(
        &self,
        inner: &mut KrcInner,
        added: &mut Added,
        front: bool,
        recycle_for: Option<ChanKey>,
    ) {
        if !self.begin_hold() {
            return;
        }
        let mut taken = 0;
        self.take_ready(inner, added, front, recycle_for, &mut taken);
        // One count was taken for the first block; the others join it while it is held (the
        // count never drops to zero meanwhile, so Relaxed suffices: Invariant 5).
        match taken {
            0 => self.end_hold(),
            n => {
                self.gate.held.fetch_add(n - 1, Ordering::Relaxed);
            }
        }
    }

    /// The body of [`Batcher::reclaim_ready`]; counts the blocks it detaches in `taken`.
    fn take_ready(
        &self,
        inner: &mut KrcInner,
        added: &mut Added,
        front: bool,
        recycle_for: Option<ChanKey>,
        taken: &mut usize,
    ) {
        let cur = self.dom.current();
        if let Some(key) = recycle_for {
            added.recycle = inner
                .take_ready_where(cur, |h| recycles_as(h, key))
                .and_then(NonNull::new);
            *taken += usize::from(added.recycle.is_some());
            if added.recycle.is_none() && inner.nhanded >= EXPEDITE_WAITING {
                added.expedite = inner.oldest_snap_where(|h| recycles_as(h, key));
            }
        }
        if front && inner.nhanded <= BULK_FREE_BACKLOG && inner.nhanded_plain == 0 {
            return; // nothing this caller would take: spare the walk over the ready blocks
        }
        for slot in added.reclaimed.iter_mut() {
            let backlog = inner.nhanded > BULK_FREE_BACKLOG;
            match inner.take_ready_where(cur, |h| !front || !h.inline_free || backlog) {
                Some(b) => {
                    *slot = NonNull::new(b);
                    *taken += 1;
                }
                None => break,
            }
        }
    }

    /// The page source.
    pub fn pages(&self) -> &P {
        &self.pages
    }

    /// Whether any slot has a handed-over block whose grace period has not completed (checked
    /// under each slot's lock).
    pub(crate) fn has_handed_waiting(&self) -> bool {
        self.krcs
            .iter()
            .any(|k| k.locked(|inner| inner.newest_handed().is_some_and(|s| !self.dom.poll(s))))
    }

    /// Whether any slot has an open channel or a handed block (checked under each slot's lock:
    /// the worker's idle protocol).
    pub(crate) fn any_open_locked(&self) -> bool {
        self.krcs.iter().any(|k| {
            k.locked(|inner| {
                !inner.handed.is_null() || inner.chans.iter().any(|c| !c.block.is_null())
            })
        })
    }

    /// Handed-over blocks not yet collected (racy sum, for the shrinker's count).
    pub(crate) fn handed_estimate(&self) -> usize {
        self.krcs
            .iter()
            .map(|k| k.handed_n.load(Ordering::Relaxed))
            .sum()
    }

    /// Objects queued on every slot (statistics).
    pub(crate) fn queued(&self) -> u64 {
        self.krcs
            .iter()
            .map(|k| k.queued.load(Ordering::Relaxed))
            .sum()
    }
}

/// Whether a block of header `h` may be recycled in place by a front channel keyed `key`.
fn recycles_as(h: &BlockHeader, key: ChanKey) -> bool {
    h.inline_free && same_channel(h, key.0, key.1)
}

/// Whether a block header belongs to channel `(free, ctx)`.
#[inline]
fn same_channel(h: &BlockHeader, free: usize, ctx: *const ()) -> bool {
    // Compared as addresses: a function duplicated across codegen units only costs a second
    // channel, never a wrong free.
    h.free as usize == free && h.ctx == ctx
}
