//! One channel of a per-thread front: the lock-free protocol between the thread that puts
//! objects into its block and the collectors that take the block away.
//!
//! # Implementation
//!
//! A channel is a free function and its context (one per type, or per layout for types without
//! drop glue) with one *open block* the owner puts objects into. An open block is either a fresh
//! page being filled (`ptrs[count++] = obj`), or — for an `inline_free` channel — a ready block
//! recycled in place: its first `old` pointers are objects whose grace period is over, and each
//! put takes `ptrs[old - 1]` out and stores the new object in its slot (`local.rs` says why). Once
//! `old` reaches 0 the block holds only new objects and is filled on like a fresh one. Putting is
//! plain stores by the owner — but the worker and `kvfree_rcu_barrier` must be able to take a
//! block from a thread that stopped retiring (drain delay, barrier, thread gone after `fork()`).
//! RCU protects the slot, and a stolen block waits for two grace periods:
//!
//! ```text
//!   owner                                    collector (holds the busy lock)
//!   -----                                    ---------
//!   [maybe inside an outer section:]         b = chan.block.swap(null)
//!   unpublish obj                            s1 = get_state()         // after the swap
//!   rcu_read_lock()   // nested: no fence    stamp = s1.snap()        // one grace period more
//!   b = chan.block.load()                    wait_for(stamp):
//!   if old > 0:                                G1 (ends s1): waits for the owner's section
//!     old -= 1; p = b.ptrs[old]                  that saw `b`
//!     b.ptrs[old] = obj                        G2 (ends stamp): starts after G1 ends, so
//!   else: b.ptrs[count] = obj; count += 1        after the owner's unpublish
//!   free(p)        // p's grace period is over and p is no longer in the block
//!   rcu_read_unlock()                        read b.count, free b.ptrs[..count]
//! ```
//!
//! *The block.* A put that saw the old pointer ran inside a read-side critical section that began
//! before G1, the first grace period to start after the collector's snapshot (heavy/light barrier
//! pairing: the section's word is visible to G1's scan, else its load of the slot would have seen
//! the swap's null), so the section ends — Release unlock, Acquire scan — before G1 ends and
//! happens-before the collector reads the pointers. A put after G1's start sees null and takes
//! the slow path. A replaced object left the block inside that section, so the collector, reading
//! after the grace period, sees its successor in the slot and never frees it; the owner frees it
//! once, still inside its section, so that the free happens-before the end of G1 (a
//! `kvfree_rcu_barrier` that stole the block returns only after it).
//!
//! *The put objects* need more than G1. The only link between a put and the collector's snapshot
//! is that the owner's load of the slot read the value from *before* the swap — a read-before
//! edge, not happens-before — and nothing orders the owner's earlier *unpublish* of the object
//! before G1's start: the retire may run inside an outer read-side critical section (the nested
//! lock has no barrier: `RcuCell`'s replace-and-kfree, a map's insert or remove under a guard),
//! or, in membarrier mode, after an outermost lock whose light barrier is only a compiler fence,
//! with the unpublish still in the owner's store buffer. A reader that locks after G1's start
//! (with the new sequence, so G1 does not wait for it) may then still load the object, and G1
//! waits for the owner alone. So the stamp is the end of G2, the grace period after G1: G1 ends
//! only after its scan saw the owner's section over (the unlock's Release follows the unpublish
//! in program order), and G2's start RMW follows G1's end RMW (both by `gp_lock` holders,
//! rcu-core's Invariant 1; a G2 left in progress by `try_advance` and finished by another runner
//! keeps its start RMW). So the unpublish happens-before G2's start, which makes G2 an ordinary
//! grace period for the object: a reader that loads G2's start value (Acquire) sees the
//! unpublish, and one that began earlier is waited for. The second grace period is paid on the
//! steal path only: a block the owner detaches itself is stamped by the owner, after its
//! unpublishes in program order and before `get_state`'s RMW (`krc`), so one grace
//! period covers it.
//!
//! The owner and the collector write disjoint header fields (`count`/`bytes`/`ptrs` vs
//! `snap`/`next`/`handed_ms`), so there is no data race while a put is in flight.
//!
//! A full block (`old == 0`, `count` at capacity) is detached by the owner with a swap, made under
//! the lock of the slot it is handed to (`krc`, Invariant 6): if a collector won it, the
//! collector has the block. A block taken back to recycle is held until [`FrontChan::install`]
//! (`krc`, Invariant 5).
//!
//! Invariants:
//! 0. The key (`free`, `ctx`) is written by the owner only, while the slot is null; a block in the
//!    slot belongs to the key's channel.
//! 1. Only the owner stores a non-null pointer into the slot; anyone may swap it to null, and
//!    whoever gets the non-null value owns the block.
//! 2. The owner touches the slot's block only inside one read-side critical section that loaded
//!    the pointer, and only its owner fields (`count`, `bytes`, `ptrs`).
//! 3. `old <= count`. `ptrs[..old]` are objects of a block whose grace period was over when it
//!    was installed (a ready block of this `inline_free` channel); `ptrs[old..count]` were put
//!    since. `old` is owner-only and meaningless while the slot is null.
//! 4. A replacing put keeps the block's charge: an `inline_free` channel charges every object
//!    the same size (its layout's), so the new object takes over the charge of the one it
//!    replaces. Only filling puts charge the budget.
//! 5. A stolen block is stamped with the end of the second grace period to start after its swap
//!    (`get_state().snap()`, taken after every swap of the pass); a block its owner detaches is
//!    stamped by the owner (`get_state()`, one grace period).
//!
//! ## Memory orderings
//! * Slot loads by the owner are `Relaxed`: only the owner stores non-null values (Invariant 1),
//!   and a collector's swap is ordered against the owner's section by the grace period.
//! * Installing a block is a `Release` store; a collector's swap is `Acquire` (the block's header
//!   and pointers are visible to it). The owner's own detaching swap is `Acquire` for symmetry;
//!   it only ever gets back what it stored.
//! * `opened_ms`, `old` and the key are `Relaxed` owner-only words (`opened_ms` is a hint to
//!   collectors: a stale age only delays a steal; the swap decides).
//! * **Fork snapshots.** Between threads, the grace period orders a put before the collector's
//!   reads, so plain stores would do. But a `fork()` child's memory is a snapshot of the
//!   parent's taken while other threads run, and those threads do not exist in the child: its
//!   collector steals their open blocks and frees `ptrs[..count]` whatever state their last put
//!   was in. The snapshot holds a prefix of each such thread's stores in the order they became
//!   visible; so that order must be program order. An appending put stores the pointer, then
//!   the count with `Release` (and a collector reads `count` with `Acquire`, `block.rs`): a
//!   child that sees the new count sees the pointer, never a stale slot. A replacing put stores
//!   the new pointer, then a `Release` fence, before the caller frees the replaced object: a
//!   child that sees any of that free sees the new pointer, so it never frees the replaced
//!   object a second time. (On x86 both only keep the compiler from reordering; stores are
//!   visible in program order there.) A put caught before its count store leaves the object
//!   unfreed in the child, a replaced object caught mid-free is leaked there: the child loses
//!   only what its vanished threads were doing, as the worker's fork notes say.
//!
//! The channel is the unit the loom model (`tests/loom_front.rs`) runs against a real
//! [`Batcher`] and grace-period domain.

use core::ptr::NonNull;

use rcu_core::GpSeq;

use crate::block::{Block, FreeFn, BLOCK_CAPACITY};
use crate::krc::{newer, Added, Batch, Batcher, ChanKey, Pages, Processed, Refused};
use crate::primitive::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// One channel of a front (module docs, Invariants 0-5).
#[derive(Debug)]
pub struct FrontChan {
    /// The channel's free function, stored as a pointer (never an integer, so it keeps its
    /// provenance); null while unused (owner writes, Invariant 0).
    free: AtomicPtr<()>,
    /// The free function's context (owner writes, Invariant 0).
    ctx: AtomicPtr<()>,
    /// The open block, or null (Invariant 1).
    block: AtomicPtr<Block>,
    /// When the open block was installed (batcher clock), for the drain delay.
    opened_ms: AtomicU64,
    /// Ready objects left at the bottom of the open block (owner only, Invariant 3).
    old: AtomicU32,
}

/// What a put did ([`FrontChan::put`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The object replaced `freed`, a ready object the caller must free (outside or inside its
    /// read-side critical section: it runs no user code). `full`: the block holds only new
    /// objects and is full (detach it with [`FrontChan::hand_over`]).
    Replaced {
        /// The ready object taken out of the block.
        freed: *mut u8,
        /// The block is full.
        full: bool,
    },
    /// The object was appended (charge it to the budget). `full` as for `Replaced`.
    Appended {
        /// The block is full.
        full: bool,
    },
    /// No open block (never opened, or a collector took it): nothing was done.
    NoBlock,
    /// Appending was not allowed (no budget) and there is no ready object to replace: nothing
    /// was done.
    NoBudget,
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
            free: AtomicPtr::new(core::ptr::null_mut()),
            ctx: AtomicPtr::new(core::ptr::null_mut()),
            block: AtomicPtr::new(core::ptr::null_mut()),
            opened_ms: AtomicU64::new(0),
            old: AtomicU32::new(0),
        }
    }

    /// Whether this channel is `(free, ctx)`, `free` given as the function's address (owner
    /// only; Relaxed: owner-written fields).
    #[inline(always)]
    pub fn is(&self, free: usize, ctx: *const ()) -> bool {
        // Address comparison only: nothing is ever called through the integer.
        self.free.load(Ordering::Relaxed) as usize == free
            && self.ctx.load(Ordering::Relaxed).cast_const() == ctx
    }

    /// The channel's key (owner only): its free function's address (compared, never called)
    /// and context.
    pub(crate) fn key(&self) -> ChanKey {
        (
            self.free.load(Ordering::Relaxed) as usize,
            self.ctx.load(Ordering::Relaxed).cast_const(),
        )
    }

    /// Keys the channel for `(free, ctx)` (owner only, slot null: Invariant 0).
    pub fn set_key(&self, free: FreeFn, ctx: *const ()) {
        debug_assert!(
            self.is_idle(),
            "kfree-batch: re-keying a channel that holds a block"
        );
        self.free.store(free as *mut (), Ordering::Relaxed);
        self.ctx.store(ctx.cast_mut(), Ordering::Relaxed);
    }

    /// Marks the channel unused (owner only, slot detached).
    pub(crate) fn clear_key(&self) {
        self.free.store(core::ptr::null_mut(), Ordering::Relaxed);
    }

    /// Whether the channel is unused or holds no block. Relaxed: the key is owner-written, and
    /// collectors only ever swap the slot to null, so a null seen by the owner stays null.
    pub(crate) fn is_idle(&self) -> bool {
        self.free.load(Ordering::Relaxed).is_null() || self.block.load(Ordering::Relaxed).is_null()
    }

    /// Whether the slot holds a block (a hint for the worker's idle check).
    pub(crate) fn has_blocks(&self) -> bool {
        !self.block.load(Ordering::Relaxed).is_null()
    }

    /// In a `fork()` child (one thread): the budget bytes the open block holds, its page and
    /// its objects (`bytes`, which its free releases), or 0 without a block.
    ///
    /// # Safety
    /// No other thread runs (the owner may not exist: its puts stopped wherever the fork found
    /// them, and `bytes` is what the block's free will release).
    pub(crate) unsafe fn charge_after_fork(&self) -> usize {
        let blk = self.block.load(Ordering::Relaxed);
        if blk.is_null() {
            return 0;
        }
        // SAFETY: a block in the slot is live until a collector swaps it out; none runs.
        crate::block::PAGE_SIZE + unsafe { (*blk).hdr.bytes }
    }

    /// Owner: opens a fresh block for the channel from `b` (a page of slot `cpu`'s cache, else a
    /// new page if `may_alloc`) and publishes it as the open block (the slot must be null).
    /// `free` is the channel's free function (the caller's object matched the key).
    pub fn open<P: Pages>(
        &self,
        b: &Batcher<'_, P>,
        cpu: usize,
        free: FreeFn,
        inline_free: bool,
        may_alloc: bool,
        now_ms: u64,
    ) -> Result<(), Refused> {
        let (key, ctx) = self.key();
        debug_assert!(
            key != 0 && key == free as usize,
            "kfree-batch: opening a block for another channel's free function"
        );
        // The block records the caller's `free` (a function pointer with its provenance); the
        // key's address is only compared against it.
        let blk = b.open_block(cpu, free, ctx, inline_free, may_alloc)?;
        self.publish(blk, 0, now_ms);
        Ok(())
    }

    /// Owner: makes `blk` the open block with `old` ready objects at its bottom.
    fn publish(&self, blk: *mut Block, old: u32, now_ms: u64) {
        debug_assert!(
            self.block.load(Ordering::Relaxed).is_null(),
            "kfree-batch: a channel already has an open block"
        );
        self.old.store(old, Ordering::Relaxed);
        self.opened_ms.store(now_ms, Ordering::Relaxed);
        // Release: the initialised header (and a recycled block's pointers) is visible to a
        // collector that swaps it out.
        self.block.store(blk, Ordering::Release);
    }

    /// Owner: puts `obj` (charged `size` bytes if appended) into the open block: in place of
    /// its last ready object if it has one, else appended if `may_append` (the caller holds
    /// `size` bytes of budget). See [`Put`].
    ///
    /// # Safety
    /// The caller owns the channel and is inside a read-side critical section that lasts until
    /// after the call (Invariant 2).
    #[inline(always)]
    pub unsafe fn put(&self, obj: *mut u8, size: usize, may_append: bool) -> Put {
        // Relaxed: only the owner stores non-null values (Invariant 1); a collector's swap is
        // ordered by the grace period (module docs).
        let Some(blk) = NonNull::new(self.block.load(Ordering::Relaxed)) else {
            return Put::NoBlock;
        };
        let blk = blk.as_ptr();
        let old = self.old.load(Ordering::Relaxed);
        // SAFETY: Invariant 2: we loaded the pointer inside this critical section, so a collector
        // that swapped it out waits for us before reading; we touch only owner fields, through
        // field pointers (a collector may be writing `snap`/`handed_ms` of the same header).
        unsafe {
            let h = core::ptr::addr_of_mut!((*blk).hdr);
            let ptrs = core::ptr::addr_of_mut!((*blk).ptrs).cast::<*mut u8>();
            if old != 0 {
                // Invariant 3: `ptrs[old - 1]` is ready; it leaves the block in this section.
                let i = old - 1;
                let slot = ptrs.add(i as usize);
                let freed = slot.read();
                slot.write(obj);
                // Release fence: the new pointer is stored before anything the caller's free of
                // `freed` stores, also for a `fork()` child that snapshots this put midway
                // (Memory orderings).
                fence(Ordering::Release);
                self.old.store(i, Ordering::Relaxed);
                let full = i == 0 && *core::ptr::addr_of!((*h).count) as usize == BLOCK_CAPACITY;
                return Put::Replaced { freed, full };
            }
            if !may_append {
                return Put::NoBudget;
            }
            let count = core::ptr::addr_of_mut!((*h).count);
            let n = *count;
            ptrs.add(n as usize).write(obj);
            *core::ptr::addr_of_mut!((*h).bytes) += size;
            // Release: the pointer (and its charge) is stored before the count that covers it,
            // also for a `fork()` child that snapshots this put midway (Memory orderings).
            crate::primitive::store_release_u32(count, n + 1);
            Put::Appended {
                full: n as usize + 1 == BLOCK_CAPACITY,
            }
        }
    }

    /// Owner: detaches the open block (full, or the channel is given up) and hands it to slot
    /// `cpu` of `b`, swapping it out under the slot's lock (a barrier finds it in the front or
    /// in the slot: `krc`, Invariant 6). With `may_reclaim`, ready blocks of that slot come
    /// back in the result for the caller to free ([`Batcher::free_detached`]), and, with
    /// `want_next` too, for an `inline_free` channel, the oldest ready block of the channel to
    /// recycle in place ([`Added::take_recycle`]; the caller must [`FrontChan::install`] it).
    /// Returns `None` if a collector took the block first.
    pub fn hand_over<P: Pages>(
        &self,
        b: &Batcher<'_, P>,
        cpu: usize,
        may_reclaim: bool,
        want_next: bool,
    ) -> Option<Added> {
        let recycle_for = (may_reclaim && want_next).then(|| self.key());
        // Whoever gets the non-null value owns the block (Invariant 1).
        let detach = || NonNull::new(self.block.swap(core::ptr::null_mut(), Ordering::Acquire));
        b.hand_over_detached(cpu, detach, may_reclaim, recycle_for)
    }

    /// Owner: installs `d`, a ready block of this channel (from [`Added::take_recycle`]), as the
    /// open block, to be recycled in place (the slot must be null); an empty one is freed
    /// instead. Either way the block's hold ends here (`krc`, Invariant 5). Returns what was
    /// freed here.
    pub fn install<P: Pages>(
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
            "kfree-batch: block recycled before its grace period completed"
        );
        debug_assert!(
            inline,
            "kfree-batch: recycling a block of a channel that is not inline_free"
        );
        let res = if count == 0 {
            // SAFETY: owned, and its grace period is over (checked above).
            unsafe { b.free_owned_block(d) }
        } else {
            self.publish(d, count, now_ms);
            Processed::default()
        };
        // After the publication: a barrier that sees the hold end steals the block.
        b.end_hold();
        res
    }

    /// Collector: swaps out the open block if installed at least `delay_ms` before `now_ms` (any
    /// age when `flush_all`) into `stolen`. Returns whether a younger block was left. Stamp the
    /// stolen blocks with [`stamp_stolen`] after every swap of the pass.
    pub fn steal(&self, stolen: &mut Batch, flush_all: bool, now_ms: u64, delay_ms: u64) -> bool {
        // Relaxed: hints (a stale age only delays a steal); the swap below decides.
        if self.block.load(Ordering::Relaxed).is_null() {
            return false;
        }
        if !flush_all && now_ms.saturating_sub(self.opened_ms.load(Ordering::Relaxed)) < delay_ms {
            return true;
        }
        // Acquire pairs with the owner's Release store of the block (its header and pointers).
        let blk = self.block.swap(core::ptr::null_mut(), Ordering::Acquire);
        if !blk.is_null() {
            stolen.push(blk);
        }
        false
    }
}

/// Collector: stamps the blocks of `stolen` (taken by [`FrontChan::steal`]) with one state and
/// moves them to `out`. The state ends with the *second* grace period after the swaps: the first
/// (from a snapshot taken after every swap) waits for the puts in flight, the second (it starts
/// after the first ends, so after the owners' unpublishes) for the readers that may still have
/// loaded the put objects (module docs, Invariant 5). Returns the state: the caller waits for it
/// before freeing.
pub fn stamp_stolen<P: Pages>(
    b: &Batcher<'_, P>,
    mut stolen: Batch,
    out: &mut Batch,
    now_ms: u64,
) -> Option<GpSeq> {
    if stolen.is_empty() {
        return None;
    }
    // `get_state()` (an RMW of the sequence) is taken after every swap: its grace period
    // G1 waits for every put that saw a stolen block. `snap()` of that idle state is the end of
    // the next grace period G2, which starts only after G1 ended (Invariant 5).
    let snap = b.domain().get_state().snap();
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
