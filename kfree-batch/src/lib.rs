//! # kfree-batch: the `kvfree_rcu` batcher
//!
//! `kfree_rcu(obj)` frees `obj` after a grace period, like `call_rcu(move || drop(obj))`, but
//! without a callback per object: pointers are batched in per-CPU, page-sized blocks (8 bytes per
//! object), each block waits for one grace period, and blocks whose grace period has already
//! passed are freed at once. What no userspace reclamation scheme gives, it gives: a **hard bound
//! on memory waiting for a grace period** ([`Config::pending_cap`]), and a defined behaviour when
//! memory runs out.
//!
//! Concepts: a reader is inside a *read-side critical section* while it holds an
//! `rcu_core::RcuReadGuard`; an object a writer has unpublished may still be read until a *grace
//! period* has passed (every critical section running at the unpublish has ended). `kfree_rcu` is
//! the retire path for plain memory; `rcu_core::call_rcu` (run code), `rcu_core::synchronize_rcu`
//! (wait) and `SLAB_TYPESAFE_BY_RCU` caches (reuse at once, readers revalidate) are the others.
//!
//! By task:
//!
//! * [`kfree_rcu`] (headless: any `Box<T>`), [`kfree_rcu_head`] (types embedding an [`RcuHead`]),
//!   [`kfree_rcu_cache`] (objects of a `KmemCache`, freed back in bulk), [`kfree_rcu_kmalloc`];
//!   [`kfree_rcu_raw`] and [`kfree_rcu_head_raw`] take the object as the raw pointer readers
//!   found it by, with no `Box` made while they may still hold it; [`kfree_rcu_raw_charged`]
//!   also charges the heap memory the object owns (a `Vec`'s buffer) to the pending cap.
//! * [`kvfree_rcu_barrier`]: returns once everything retired before it is freed.
//! * [`stats`], [`configure`].
//!
//! When no block page can be had, or the pending cap is reached:
//!
//! | caller            | headless (`kfree_rcu`)                         | with `RcuHead`                   |
//! |-------------------|-----------------------------------------------|----------------------------------|
//! | outside a reader  | no page: parks the object in pre-reserved per-thread slots, and when all [`PARK_SLOTS`] are taken waits for *one* grace period that frees them all (`park_waits`); cap: waits for a grace period, frees (`fallback_sync`) | no page: links through its head, charged like a batched object; cap: runs one collection pass (one grace period that frees every pending head-linked object and slot block), then links |
//! | inside a reader   | parks the object; past the slots, spills it into system-allocator memory (`spilled`); the worker frees both after the grace period | links through its head (past the cap: `overdraft_bytes`) |
//!
//! Before any of these, a caller whose reserve was refused takes back the budget that other
//! threads and CPU slots reserved and did not spend (one grace period for all the threads'
//! slices: `reserve_reclaims`). Everything held counts: outside readers against the cap; inside
//! a reader, past the cap, in `overdraft_bytes` (such a caller can neither wait nor free early),
//! given back when the objects are freed.
//!
//! ## Where objects are freed
//!
//! Blocks whose grace period is over are freed by the thread that retires into the same CPU
//! slot, not by a background thread, so the memory goes back to the allocator's cache of the
//! thread that allocated it (a cross-thread free costs several times a local one in glibc). For
//! `Box<T>` where `T` has no drop glue, freeing is only the allocator's `dealloc`: such a ready
//! block is recycled in place, *one object per `kfree_rcu` call* — the new object takes the slot
//! of a ready one, which is freed ([`KfreeStats::freed_inline`]) — and that keeps the allocator's
//! thread cache (glibc's tcache holds 7 chunks per size) in balance: each retire hands back the
//! chunk its caller's next allocation takes. Objects with destructors are freed a
//! block at a time, never inside a read-side critical section. The worker frees what a thread
//! left behind when it stopped retiring (after the drain delay) and [`kvfree_rcu_barrier`] frees
//! everything. Destructors therefore run on the worker, on the thread calling
//! [`kvfree_rcu_barrier`], or on a retiring thread (its ready-first reclaim, or the fallback in
//! the table above), never from the page layer's shrinker: under memory pressure the batcher
//! gives its cached pages back and lets the worker free what is ready. A destructor may retire
//! objects and wait for grace periods (`rcu_core::synchronize_rcu`); one run by the worker, a
//! barrier, a ready-first reclaim or a park drain must not call [`kvfree_rcu_barrier`] (it would
//! wait for the very free that runs it: it panics), nor `rcu_core::rcu_barrier` (a `call_rcu`
//! callback may be waiting in `kvfree_rcu_barrier` for that free, and the barrier would wait for
//! the callback: it panics, and `rcu_core::may_block` returns false there). Dropping a
//! `SLAB_TYPESAFE_BY_RCU` `KmemCache` in such a destructor is fine: its destroy, which waits with
//! `rcu_barrier`, goes to a thread of its own (`KmemCache::destroy` called there panics).
//!
//! Nothing is ever lost and nothing is freed early, and retiring never panics. Under a zero page
//! budget a retiring thread waits for one grace period per [`PARK_SLOTS`] objects (thousands of
//! objects per second with a reader holding 50 ms sections), not one per object. A thread that
//! retires more than [`PARK_SLOTS`] headless objects inside *one* read-side critical section
//! while no batching memory can be had keeps the rest in memory from the system allocator (with
//! objects retired past the cap inside a reader, the one memory the pending cap does not bound —
//! counted in `overdraft_bytes` — freed once the section's grace period ends), reported once
//! through `rcu_core`'s stall hook; only a failure of that allocation aborts, like any Rust
//! allocation.
//!
//! ```
//! use kfree_batch::{kfree_rcu, kvfree_rcu_barrier, stats};
//! for i in 0..1000u64 {
//!     kfree_rcu(Box::new([i; 4]));
//! }
//! kvfree_rcu_barrier();
//! let s = stats();
//! assert!(s.freed >= 1000 && s.queued >= 1000);
//! ```
//!
//! # Implementation: modules
//!
//! Bottom to top; a module uses the ones above it in this list, never one below it:
//!
//! 1. `primitive`, `lock`, `block` (the page-sized blocks), `slice` (a thread's budget slice),
//!    `park_slot`, `config` (configuration and the pending budget), `head` (the `RcuHead` stack).
//! 2. `krc`: the per-CPU slots and the [`raw::Batcher`] over them (`krc/slot.rs` one slot,
//!    `krc/cache.rs` its page cache, `krc/collect.rs` collecting and freeing, `krc/fork.rs`).
//! 3. `chan`: a per-thread front channel, its open block and the lock-free protocol by which a
//!    collector takes it.
//! 4. `batcher`: the process-wide batcher, the counters and the kick that wakes or starts the
//!    worker thread (which it is handed by the batcher's creation, not calls).
//! 5. `park`: the fallbacks when no block can be had (park slots, spill).
//! 6. `local`: the per-thread fronts.
//! 7. `worker`: the batcher's creation, the worker thread, collection passes, barrier, shrinker,
//!    `fork()` handlers, statistics.
//! 8. This file: the API.
//!
//! So one `kfree_rcu` reads top-down: the API puts into the thread's front (`local`, `chan`);
//! a full or missing block goes to the CPU slot (`krc`); without a block it falls back to
//! `park` or to waiting for a grace period; `batcher::kick` wakes the worker.

#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(rcu_loom, allow(dead_code, unused_imports))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "kfree-batch supports Linux only: its worker uses gettid(2) and prctl(2), and it builds on \
     rcu-core (membarrier(2), futex(2)) and slab-backend (mmap(2))"
);

mod block;
mod chan;
mod config;
mod head;
mod krc;
#[cfg(not(rcu_loom))]
mod local;
mod lock;
mod primitive;

#[cfg(not(rcu_loom))]
mod batcher;
#[cfg(not(rcu_loom))]
mod park;
mod park_slot;
mod slice;
#[cfg(not(rcu_loom))]
mod worker;

pub use config::{
    config, configure, counted_cap, parse_size, Config, ConfigError, ParseSizeError,
    DEFAULT_DRAIN_DELAY, DEFAULT_GP_BATCH, DEFAULT_PAGES_PER_CPU, DEFAULT_PENDING_CAP,
};
pub use head::{HasRcuHead, RcuHead};

#[cfg(not(rcu_loom))]
pub use api::*;
#[cfg(not(rcu_loom))]
pub use park::PARK_SLOTS;

/// The batching core with explicit slots, pages and grace-period domain, for the loom model and
/// white-box tests. Not a stable API.
#[doc(hidden)]
pub mod raw {
    pub use crate::block::Block;
    pub use crate::block::FreeFn;
    pub use crate::chan::{stamp_stolen, FrontChan, Put};
    pub use crate::krc::{Added, Batch, Batcher, Collected, Pages, Processed, Refused, Retired};
    pub use crate::park_slot::ParkSlot;
    pub use crate::slice::Slice;
    #[cfg(not(rcu_loom))]
    pub use crate::worker::{
        batcher_creation_paused, pause_batcher_creation, resume_batcher_creation, with_slot_locked,
    };
}

/// Pointers per block (505 with 4 KiB pages).
pub const BLOCK_CAPACITY: usize = block::BLOCK_CAPACITY;

#[cfg(not(rcu_loom))]
mod api {
    use core::ptr::NonNull;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use slab_backend::KmemCache;

    use crate::batcher::{kick, kick_after_publish};
    use crate::block::FreeFn;
    use crate::head::{drop_via_head, HasRcuHead};
    use crate::krc::{Refused, Retired};
    use crate::park;
    use crate::worker::{self, batcher, HEADS};

    pub use crate::worker::KfreeStats;

    /// Frees a batch of `Box<T>`s. A destructor that panics is contained here, per object,
    /// and reported: the box's memory is still released (a `Box` deallocates when its
    /// contents' drop unwinds) and the rest of the batch is freed, as a `Vec` drops its other
    /// elements.
    unsafe fn free_boxes<T>(_ctx: *const (), objs: &[*mut u8]) {
        for &p in objs {
            // SAFETY: every pointer of a `free_boxes::<T>` channel is a retired `Box<T>` whose
            // grace period is over (FreeFn contract).
            let b = unsafe { Box::from_raw(p.cast::<T>()) };
            #[cfg(not(rcu_loom))]
            if core::mem::needs_drop::<T>() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(b)));
                if r.is_err() {
                    // Written without allocating: frees run when memory is short.
                    rcu_core::lowmem::report(format_args!(
                        "kfree-batch: a destructor panicked while freeing an object; the panic \
                         is contained and the rest of its batch is freed"
                    ));
                }
                continue;
            }
            drop(b);
        }
    }

    /// Frees a batch of objects of the `KmemCache<T>` at `ctx` (an `Arc` strong count held per
    /// object by `kfree_rcu_cache`). Giving an object back may discard an empty slab, which
    /// drops the `T`s of a cache with a constructor: when `T` needs drop, objects go back one by
    /// one, a destructor that panics is contained per object and reported, as in `free_boxes`,
    /// and the rest of the batch goes back to the cache; every strong count is given back.
    /// Otherwise no user code can run, and the batch goes back in bulk.
    unsafe fn free_cache_objs<T: Send + 'static>(ctx: *const (), objs: &[*mut u8]) {
        let cache = ctx.cast::<KmemCache<T>>();
        if !core::mem::needs_drop::<T>() {
            // No user code can run: the bulk path.
            // SAFETY: `*mut u8` and `NonNull<T>` have the same layout, and every pointer is
            // non-null (checked at retire).
            let ptrs = unsafe {
                core::slice::from_raw_parts(objs.as_ptr().cast::<NonNull<T>>(), objs.len())
            };
            // SAFETY: the cache is alive (we hold strong counts); the objects came from it,
            // were retired once and their grace period is over.
            unsafe { (*cache).free_bulk(ptrs) };
        } else {
            for &p in objs {
                // SAFETY: every pointer is non-null (checked at retire).
                let p = unsafe { NonNull::new_unchecked(p.cast::<T>()) };
                // SAFETY: the cache is alive (we hold strong counts); the object came from it,
                // was retired once and its grace period is over.
                let free = || unsafe { (*cache).free(p) };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(free)).is_err() {
                    // Written without allocating: frees run when memory is short.
                    rcu_core::lowmem::report(format_args!(
                        "kfree-batch: a destructor panicked while a cache object was freed; \
                         the panic is contained and the rest of its batch is freed"
                    ));
                }
            }
        }
        if objs.is_empty() {
            return;
        }
        // SAFETY: one strong count was taken per object in `kfree_rcu_cache`, and one is put
        // per object below.
        let put = || unsafe { Arc::decrement_strong_count(cache) };
        // All of these counts are held at once, so only the last one put here can be the
        // cache's last: its destroy drops the `T`s left in the slabs, contained likewise.
        for _ in 1..objs.len() {
            put();
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(put)).is_err() {
            rcu_core::lowmem::report(format_args!(
                "kfree-batch: a destructor panicked while a cache released by its last freed \
                 object was destroyed; the panic is contained"
            ));
        }
    }

    /// Frees a batch of kmalloc blocks.
    unsafe fn free_kmalloc(_ctx: *const (), objs: &[*mut u8]) {
        // SAFETY: same layout; non-null checked at retire.
        let ptrs =
            unsafe { core::slice::from_raw_parts(objs.as_ptr().cast::<NonNull<u8>>(), objs.len()) };
        // SAFETY: every pointer came from `kmalloc`, was retired once, its grace period is over.
        unsafe { slab_backend::kfree_bulk(ptrs) };
    }

    /// How a retire may fall back.
    #[derive(Clone, Copy)]
    enum Form {
        /// Headless: may map a page inline; parks (or, inside a reader, spills) without memory.
        Headless,
        /// Embedded head: never maps inline; links through the head.
        Head(crate::head::HeadFree, usize),
    }

    #[inline(always)]
    fn retire(
        obj: *mut u8,
        size: usize,
        free: FreeFn,
        ctx: *const (),
        inline_free: bool,
        form: Form,
    ) {
        let r = Retired {
            obj,
            size,
            free,
            ctx,
            inline_free,
        };
        // The thread's own open block first: plain stores inside a read-side critical section.
        if crate::local::put_fast(&r) {
            return;
        }
        retire_via_front(r, form);
    }

    /// The front's slow paths (register, claim a channel, open a block, refill the budget
    /// slice), then the per-CPU path and the fallbacks.
    #[cold]
    #[inline(never)]
    fn retire_via_front(r: Retired, form: Form) {
        let b = batcher();
        let headless = matches!(form, Form::Headless);
        let Err(r) = crate::local::try_retire(b, r, headless) else {
            return;
        };
        slow_retire(b, r, headless, form);
    }

    /// The per-CPU path (the front refused: cap, no page, thread teardown), then the fallbacks.
    #[cold]
    #[inline(never)]
    fn slow_retire(b: &'static crate::batcher::Global, r: Retired, headless: bool, form: Form) {
        if headless {
            // Park slots are reserved when the thread's front registers (its first retire,
            // before any pressure); a thread without them (that reservation failed, or no front
            // during thread-local teardown) tries again here.
            park::reserve();
        }
        let cpu = rcu_core::cpu::current_cpu();
        // Ready-first reclaim runs destructors: never inside a read-side critical section.
        let may_reclaim = !rcu_core::rcu_read_lock_held();
        let (obj, size, free, ctx) = (r.obj, r.size, r.free, r.ctx);
        let (mut released_caches, mut reclaimed) = (false, false);
        loop {
            match b.enqueue(cpu, r, headless, may_reclaim) {
                Ok(mut a) => {
                    if a.handed || a.opened {
                        kick();
                    }
                    if a.handed {
                        crate::batcher::free_reclaimed(b, &mut a);
                    }
                    return;
                }
                // Cached pages count against the cap: give them back before waiting.
                Err(Refused::Cap) if !released_caches && b.release_caches_for_cap() => {
                    released_caches = true;
                }
                // Unspent reservations (other CPUs' reserves, idle threads' slices: one grace
                // period for all of them, outside a reader) go back before anyone waits.
                Err(Refused::Cap)
                    if !reclaimed
                        && crate::local::reclaim_reservations(b, rcu_core::may_block()) != 0 =>
                {
                    reclaimed = true;
                }
                Err(why) => return fallback(b, obj, size, free, ctx, form, why),
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn fallback(
        b: &'static crate::batcher::Global,
        obj: *mut u8,
        size: usize,
        free: FreeFn,
        ctx: *const (),
        form: Form,
        why: Refused,
    ) {
        let in_reader = rcu_core::rcu_read_lock_held();
        if let Form::Head(drop_fn, off) = form {
            // Charged like a batched object: to the budget, waiting for room outside a reader;
            // inside one, past the budget, to the overdraft (it cannot wait).
            let overdraft = if in_reader {
                Some(crate::config::is_overdraft(
                    b.budget.charge_in_reader(size, b.cap),
                ))
            } else {
                charge_or_collect(b, size).then_some(false)
            };
            if let Some(overdraft) = overdraft {
                // SAFETY: `obj` is a retired object of the head's type, its head at `off`; the
                // head's free returns the `size` charged here (both are the heap footprint).
                unsafe { HEADS.push(obj.add(off).cast(), drop_fn, overdraft, size) };
                crate::batcher::HEAD_QUEUED.fetch_add(1, Ordering::Relaxed);
                kick_after_publish();
                return;
            }
        }
        worker::FALLBACK_QUEUED.fetch_add(1, Ordering::Relaxed);
        if in_reader {
            // Taken after the caller's unpublish (it has a fence): the parked or spilled object
            // is freed once this state completes, after the caller's own section too.
            let snap = b.dom.get_state();
            // Charged to the budget when it has room, else to the overdraft; held either way (it
            // cannot wait here).
            let charge = b.budget.charge_in_reader(size, b.cap);
            if !park::park(obj, free, ctx, snap, charge) {
                // Every slot taken: system-allocator memory until the grace period (legal RCU:
                // a writer may unlink and retire any number of objects under one guard).
                park::spill(obj, free, ctx, snap, charge);
            }
            kick_after_publish();
            return;
        }
        // Outside a reader with no page (the budget has room): park, charged like a batched
        // object, and when every slot is taken wait for ONE grace period that frees them all —
        // one grace period per `PARK_SLOTS` objects instead of one per object. A destructor run
        // by that drain that retires again does not drain recursively.
        if why == Refused::NoPage && b.budget.reserve(size, size, b.cap).is_some() {
            loop {
                let snap = b.dom.get_state();
                if park::park(obj, free, ctx, snap, size) {
                    kick_after_publish();
                    return;
                }
                if park::in_own_sweep() || !park::drain_own(b.dom) {
                    break;
                }
            }
            b.budget.release(size);
        }
        // The pending cap is reached (or no park slots): wait for a grace period ourselves and
        // free (kernel: synchronize_rcu() + kvfree() in the caller). The blocks that fill the cap
        // wait for grace periods too, so once those pass the next retires batch again.
        rcu_core::synchronize_rcu();
        // SAFETY: `obj` was unpublished by the caller before the grace period we just waited for.
        unsafe { free(ctx, &[obj]) };
        crate::batcher::FALLBACK_SYNC.fetch_add(1, Ordering::Relaxed);
        crate::batcher::FREED.fetch_add(1, Ordering::Relaxed);
        kick();
    }

    /// Outside a read-side critical section: charges `size` to the budget, and when the cap is
    /// reached takes unspent reservations back, hands the caller's own open blocks over and runs
    /// one collection pass — one grace period that frees every head-linked object and every
    /// block of the slots, not one per object — before trying again. Returns whether the charge
    /// was taken. A destructor run by a free of the batcher does not run a pass (the pass may be
    /// the one running it), nor does a thread that may not block (a `call_rcu` callback).
    fn charge_or_collect(b: &'static crate::batcher::Global, size: usize) -> bool {
        let charge = || b.budget.reserve(size, size, b.cap).is_some();
        if charge() {
            return true;
        }
        if !rcu_core::may_block() {
            return false;
        }
        if crate::local::reclaim_reservations(b, true) != 0 && charge() {
            return true;
        }
        if crate::batcher::in_free() || park::in_own_sweep() {
            return false;
        }
        // Our own open blocks hold part of the cap too (a cached page let the object batch):
        // hand them over so that the pass collects them with the slots' blocks.
        crate::local::hand_over_own(b);
        worker::pass(b, worker::Flush::Slots);
        // The worker may have refilled its page caches with the room the pass made.
        charge() || (b.release_caches_for_cap() && charge())
    }

    /// Bytes a `Box<T>` really occupies in the heap, charged to the pending budget so that the cap
    /// bounds resident memory, not just `size_of::<T>()` (glibc's chunk, page-rounded for an
    /// allocation served by its own mapping: `config::heap_footprint`).
    const fn heap_bytes<T>() -> usize {
        crate::config::heap_footprint(core::mem::size_of::<T>(), core::mem::align_of::<T>())
    }

    /// Frees `obj` after a grace period (headless: `T` needs no field). Callable inside a
    /// read-side critical section. Never loses the object, never frees it early.
    ///
    /// When no batching memory can be had it parks the object (waiting for one grace period per
    /// [`crate::PARK_SLOTS`] parked objects outside a reader), spills it inside a read-side
    /// critical section past the park slots, or, at the pending cap outside a reader, waits for a
    /// grace period and frees it itself (counted in [`KfreeStats::fallback_sync`]); see the crate
    /// docs.
    ///
    /// The `Box` is turned into a raw pointer at once and no `Box` is made again until the grace
    /// period has passed. A caller that holds the object only as a raw pointer (the usual case:
    /// it was published as one) should call [`kfree_rcu_raw`] rather than re-make a `Box` of an
    /// object readers may still hold.
    #[inline(always)]
    pub fn kfree_rcu<T: Send + 'static>(obj: Box<T>) {
        // SAFETY: a `Box<T>` allocation, given up here; the caller's ownership of the box means
        // nothing else will free it.
        unsafe { kfree_rcu_raw(Box::into_raw(obj)) }
    }

    /// [`kfree_rcu`] for an object held as a raw pointer: frees `*ptr` (drops the `T`, then
    /// deallocates, as `Box<T>` would) after a grace period. Readers that found the object
    /// before the call may go on reading it until then: no `Box` (which would assert it is the
    /// only pointer to the object) is made before the grace period has passed.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicPtr, Ordering};
    /// let slot = AtomicPtr::new(Box::into_raw(Box::new(1u64)));
    /// let old = slot.swap(Box::into_raw(Box::new(2)), Ordering::AcqRel);
    /// // SAFETY: from `Box::into_raw`, unpublished by the swap, retired once.
    /// unsafe { kfree_batch::kfree_rcu_raw(old) };
    /// # let last = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
    /// # unsafe { kfree_batch::kfree_rcu_raw(last) };
    /// # kfree_batch::kvfree_rcu_barrier();
    /// ```
    ///
    /// # Safety
    /// * `ptr` is non-null and was allocated for a `T` by the global allocator with `T`'s layout
    ///   (`Layout::new::<T>()`, as by `Box::<T>::into_raw`; for a zero-sized `T`, the dangling
    ///   pointer `Box::into_raw` returns), and holds a valid `T`;
    /// * it is unpublished: no new reader can reach it (readers that found it before the call
    ///   may still be reading it);
    /// * ownership passes to the call: after it, the caller (and everyone else) makes no new
    ///   reference to the object and never uses, frees or retires it again.
    #[inline(always)]
    pub unsafe fn kfree_rcu_raw<T: Send + 'static>(ptr: *mut T) {
        debug_assert!(!ptr.is_null(), "kfree_rcu_raw: null pointer");
        let (free, ctx, inline_free) = box_channel::<T>();
        retire(
            ptr.cast::<u8>(),
            heap_bytes::<T>(),
            free,
            ctx,
            inline_free,
            Form::Headless,
        );
    }

    /// [`kfree_rcu_raw`] for an object that owns more heap memory than `size_of::<T>()` (a
    /// `Vec`'s buffer, a `Box<[T]>`, a `String`), which its drop frees after the grace period:
    /// `owned_bytes` of it are charged to the pending budget on top of the object's own chunk.
    /// Without that charge the cap ([`crate::Config::pending_cap`]) sees only the small
    /// object, and memory waiting for a grace period grows without bound while grace periods
    /// are slow (a long reader, a starved worker): an array of a few KiB retired as a 24-byte
    /// `Box<Vec<_>>` is charged 32 bytes.
    ///
    /// `owned_bytes` is an estimate (a `Vec`'s `capacity() * size_of::<E>()` plus its allocator
    /// chunk overhead); over-counting only makes the cap bite earlier. When the cap is reached
    /// the caller falls back as for any retire (crate docs): outside a reader it waits for a
    /// grace period and frees the object itself.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicPtr, Ordering};
    /// let slot = AtomicPtr::new(Box::into_raw(Box::new(vec![0u64; 512])));
    /// let old = slot.swap(Box::into_raw(Box::new(vec![1u64; 512])), Ordering::AcqRel);
    /// // SAFETY: from `Box::into_raw`, unpublished by the swap, retired once.
    /// unsafe {
    ///     let owned = (*old).capacity() * 8;
    ///     kfree_batch::kfree_rcu_raw_charged(old, owned);
    /// }
    /// # let last = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
    /// # unsafe { kfree_batch::kfree_rcu_raw(last) };
    /// # kfree_batch::kvfree_rcu_barrier();
    /// ```
    ///
    /// # Safety
    /// As for [`kfree_rcu_raw`].
    #[inline]
    pub unsafe fn kfree_rcu_raw_charged<T: Send + 'static>(ptr: *mut T, owned_bytes: usize) {
        debug_assert!(!ptr.is_null(), "kfree_rcu_raw_charged: null pointer");
        // Always the dropping channel of `T`, never the in-place recycling one: a replacing put
        // keeps the block's charge, which is right only if every object of the channel is
        // charged alike (chan.rs Invariant 4), and these charges differ per object.
        retire(
            ptr.cast::<u8>(),
            heap_bytes::<T>().saturating_add(owned_bytes),
            free_boxes::<T>,
            core::ptr::null(),
            false,
            Form::Headless,
        );
    }

    /// The channel of `Box<T>`: without drop glue (and non-zero size) the free is the global
    /// allocator's `dealloc` alone, shared by every such type of `T`'s layout and recycled in
    /// place one object per retire (block docs); otherwise `T`'s own drop.
    #[inline(always)]
    fn box_channel<T>() -> (FreeFn, *const (), bool) {
        if const { !core::mem::needs_drop::<T>() && core::mem::size_of::<T>() != 0 } {
            (
                crate::block::dealloc_boxes,
                const { crate::block::encode_layout(core::alloc::Layout::new::<T>()) },
                true,
            )
        } else {
            (free_boxes::<T>, core::ptr::null(), false)
        }
    }

    /// Frees `obj`, which embeds an [`crate::RcuHead`], after a grace period. Never maps memory
    /// on the caller's path: without a cached page it links the object through its head (never
    /// allocates). The object is charged to the pending budget either way: at the cap, outside a
    /// read-side critical section, the caller waits for one grace period that frees every
    /// pending head-linked object; inside one it never waits (past the cap the object counts in
    /// `overdraft_bytes`).
    ///
    /// The `Box` is turned into a raw pointer at once (see [`kfree_rcu_head_raw`]).
    #[inline]
    pub fn kfree_rcu_head<T: HasRcuHead>(obj: Box<T>) {
        // SAFETY: a `Box<T>` allocation, given up here; the caller's ownership of the box means
        // nothing else will free it.
        unsafe { kfree_rcu_head_raw(Box::into_raw(obj)) }
    }

    /// [`kfree_rcu_head`] for an object held as a raw pointer: frees `*ptr` after a grace
    /// period, linking it through its [`crate::RcuHead`] when no page can be had. No `Box` is
    /// made before the grace period has passed.
    ///
    /// # Safety
    /// As for [`kfree_rcu_raw`]: `ptr` is a non-null `Box<T>` allocation (global allocator,
    /// `T`'s layout) holding a valid `T`, unpublished, and owned by the call from then on. The
    /// object's `RcuHead` field may be written by the call (readers never look at it: the
    /// [`HasRcuHead`] contract).
    #[inline]
    pub unsafe fn kfree_rcu_head_raw<T: HasRcuHead>(ptr: *mut T) {
        debug_assert!(!ptr.is_null(), "kfree_rcu_head_raw: null pointer");
        let (free, ctx, inline_free) = box_channel::<T>();
        retire(
            ptr.cast::<u8>(),
            heap_bytes::<T>(),
            free,
            ctx,
            inline_free,
            Form::Head(drop_via_head::<T>, T::RCU_HEAD_OFFSET),
        );
    }

    /// Returns `obj` to `cache` after a grace period (objects of one cache are freed back in
    /// bulk).
    ///
    /// # Safety
    /// `obj` was allocated from `cache`, is no longer reachable by new readers, and is retired
    /// once.
    #[inline]
    pub unsafe fn kfree_rcu_cache<T: Send + 'static>(cache: &Arc<KmemCache<T>>, obj: NonNull<T>) {
        let ctx = Arc::into_raw(Arc::clone(cache)).cast::<()>();
        retire(
            obj.as_ptr().cast(),
            core::mem::size_of::<T>(),
            free_cache_objs::<T>,
            ctx,
            false,
            Form::Headless,
        );
    }

    /// Frees kmalloc memory after a grace period.
    ///
    /// # Safety
    /// `p` came from `slab_backend::kmalloc`, is no longer reachable by new readers, and is
    /// retired once.
    #[inline]
    pub unsafe fn kfree_rcu_kmalloc(p: NonNull<u8>) {
        // SAFETY: `p` is a live kmalloc block (caller's contract).
        let size = unsafe { slab_backend::ksize(p) };
        retire(
            p.as_ptr(),
            size,
            free_kmalloc,
            core::ptr::null(),
            false,
            Form::Headless,
        );
    }

    /// Waits until every object retired (through any path) before the call is freed: no
    /// destructor of such an object runs after it returns (also those a retiring thread is
    /// running at the time: it waits for them, so do not call it holding a lock that such a
    /// destructor takes).
    ///
    /// # Panics
    /// Inside a read-side critical section (it would wait for itself): the message says
    /// "read-side critical section". From the destructor of an object kfree-batch is freeing
    /// (it would wait for that free): the message says "from the destructor".
    #[track_caller]
    pub fn kvfree_rcu_barrier() {
        if rcu_core::rcu_read_lock_held() {
            panic!(
                "kvfree_rcu_barrier() called inside an RCU read-side critical section: it would \
                 wait for the caller's own reader forever; drop every RcuReadGuard first"
            );
        }
        if crate::batcher::in_free() || park::in_own_sweep() {
            panic!(
                "kvfree_rcu_barrier() called from the destructor of an object being freed by \
                 kfree-batch: it would wait forever for the free that runs it"
            );
        }
        worker::barrier();
    }

    /// A snapshot of the batcher's counters.
    pub fn stats() -> KfreeStats {
        worker::stats()
    }
}
