//! Collecting and freeing blocks: a collector takes handed-over blocks out of the slots
//! ([`Batcher::collect`]), frees those whose grace period is over and, after one grace period,
//! the rest; producers free the blocks they reclaimed; holds and barriers make a barrier wait for
//! the blocks producers hold.
//!
//! # Implementation
//!
//! *Collect* and *Process* in the `krc` module docs. A collector owns the blocks it took
//! exclusively; a producer's reclaimed blocks are *held* (Invariant 5) from their detachment
//! under the slot lock until they are freed or installed, and `held` and `barriers` are ordered
//! by the slot locks ([`Batcher::barrier_begin`]); a hold's end is a Release decrement that the
//! barrier's Acquire load of zero pairs with, so the holder's free or install happens-before the
//! barrier's collection. Destructors run here: never inside a read-side critical section.

use super::*;

impl<'d, P: Pages> Batcher<'d, P> {
    /// Collects handed-over blocks into `out`: every block when `flush_all`, otherwise blocks
    /// handed over at least `delay_ms` ago (their producers did not reclaim them) and the surplus
    /// beyond [`MAX_KEEP_HANDED`] per slot. Open channels older than the delay (all of them when
    /// `flush_all`) are handed over first.
    pub fn collect(
        &self,
        out: &mut Batch,
        flush_all: bool,
        now_ms: u64,
        delay_ms: u64,
    ) -> Collected {
        let mut c = Collected::default();
        for k in self.krcs.iter() {
            k.locked(|inner| {
                for ci in 0..NCHAN {
                    let ch = inner.chans[ci];
                    if ch.block.is_null() {
                        continue;
                    }
                    if flush_all || now_ms.saturating_sub(ch.opened_ms) >= delay_ms {
                        self.hand_over(inner, ci);
                    } else {
                        c.open_left = true;
                    }
                }
                while let Some((_, handed_ms)) = inner.oldest_handed() {
                    let old = now_ms.saturating_sub(handed_ms) >= delay_ms;
                    if !(flush_all || old || inner.nhanded > MAX_KEEP_HANDED) {
                        break;
                    }
                    let b = inner.pop_handed().expect("oldest exists");
                    out.push(b);
                }
                if let Some(s) = inner.newest_handed() {
                    c.newest_left = Some(newer(c.newest_left, s));
                    c.handed_left += inner.nhanded;
                }
                k.handed_n.store(inner.nhanded, Ordering::Relaxed);
            });
        }
        c
    }

    /// Frees the blocks of `batch` whose grace period is already over (*ready-first*), and
    /// returns the others with the newest snapshot among them.
    pub fn free_ready(&self, batch: &mut Batch, res: &mut Processed) -> (Batch, Option<GpSeq>) {
        let mut later = Batch::new();
        let mut newest: Option<GpSeq> = None;
        let cur = self.dom.current();
        while let Some(b) = batch.pop() {
            // SAFETY: the batch owns `b`.
            let snap = GpSeq::from_raw(unsafe { (*b).hdr.snap });
            if cur.done(snap) {
                res.ready_first += 1;
                self.free_block(b, res);
            } else {
                newest = Some(newer(newest, snap));
                later.push(b);
            }
        }
        (later, newest)
    }

    /// Frees every block of `batch`. The caller has waited for the newest snapshot among them.
    pub fn free_all(&self, batch: &mut Batch, res: &mut Processed) {
        while let Some(b) = batch.pop() {
            self.free_block(b, res);
        }
    }

    /// Frees blocks a producer reclaimed in [`Batcher::enqueue`] (call after the slot lock is
    /// released, outside any read-side critical section), releasing each one's hold once it is
    /// freed (Invariant 5).
    pub fn free_detached(&self, added: &mut Added, res: &mut Processed) {
        self.free_detached_then(added, res, || ());
    }

    /// [`Batcher::free_detached`], calling `ended` after each hold ends (the caller keeps count
    /// of the blocks it still holds, for a `fork()` from one of the destructors).
    pub(crate) fn free_detached_then(
        &self,
        added: &mut Added,
        res: &mut Processed,
        mut ended: impl FnMut(),
    ) {
        for b in added.reclaimed.iter_mut().filter_map(Option::take) {
            res.ready_first += 1;
            self.free_block(b.as_ptr(), res);
            self.end_hold();
            ended();
        }
    }

    /// Frees a ready block the caller owns (a recycled block that came back empty), counted as
    /// a block freed ready-first. Its hold stays with the caller.
    ///
    /// # Safety
    /// The caller owns `b` (detached from every slot and channel) and its grace period is over.
    pub(crate) unsafe fn free_owned_block(&self, b: *mut Block) -> Processed {
        let mut res = Processed {
            ready_first: 1,
            ..Processed::default()
        };
        self.free_block(b, &mut res);
        res
    }

    /// Starts holding a block privately unless a barrier runs (Invariant 5). Call with a slot's
    /// lock held: the lock orders this against a barrier's pass over the slot locks, so Relaxed
    /// suffices for both words (either the barrier's lock of this slot comes after our unlock
    /// and its load of `held` sees this hold, or it came before and our load of `barriers` sees
    /// the barrier).
    pub(super) fn begin_hold(&self) -> bool {
        self.gate.held.fetch_add(1, Ordering::Relaxed);
        if self.gate.barriers.load(Ordering::Relaxed) == 0 {
            return true;
        }
        self.gate.held.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Ends holding one block (freed, or installed in a channel). Release: the free or the
    /// install happens-before a barrier's Acquire load that sees the count drained (every
    /// later change of `held` is a read-modify-write, so it continues this release sequence).
    pub(crate) fn end_hold(&self) {
        self.gate.held.fetch_sub(1, Ordering::Release);
    }

    /// A barrier's first step: stops producers from detaching blocks and waits until every
    /// block they hold privately is freed or installed (Invariant 5). The caller then collects
    /// (steals the fronts, then collects the slots) and calls [`Batcher::barrier_end`]. Call
    /// while holding no block and no slot lock (it would wait for itself).
    pub fn barrier_begin(&self) {
        self.gate.barriers.fetch_add(1, Ordering::Relaxed);
        // Every producer that takes a slot lock after this sees `barriers`; every one that held
        // it before has counted its holds (`begin_hold`). Release/Acquire of the slot locks.
        for k in self.krcs.iter() {
            k.lock.lock();
            k.lock.unlock();
        }
        let mut i = 0;
        // Acquire pairs with `end_hold`'s Release: the holders' frees and installs are done.
        while self.gate.held.load(Ordering::Acquire) != 0 {
            crate::primitive::spin_wait(i);
            i = i.saturating_add(1);
        }
    }

    /// Lets producers detach blocks again (after the barrier's collection). Relaxed: a producer
    /// that still sees the barrier only skips one reclaim.
    pub fn barrier_end(&self) {
        self.gate.barriers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Frees a detached block's objects and recycles its page.
    pub(crate) fn free_block(&self, b: *mut Block, res: &mut Processed) {
        // SAFETY: the collector owns `b` and its grace period completed (checked by the debug
        // assertion inside `free_objects`).
        let n = unsafe { Block::free_objects(b, self.dom) };
        // SAFETY: owned.
        let (bytes, origin) = unsafe { ((*b).hdr.bytes, (*b).hdr.origin as usize) };
        // The objects' charge goes; the page's goes with the page (`recycle_page`, Invariant 4).
        self.budget.release(bytes);
        res.blocks += 1;
        res.objects += n;
        // SAFETY: `b` is an owned page of ours.
        let page = unsafe { NonNull::new_unchecked(b.cast::<u8>()) };
        self.recycle_page(origin, page);
    }
}
