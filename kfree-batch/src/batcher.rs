//! The process-wide batcher and what every layer above it shares: the batcher itself (created by
//! `worker`), the clock, the statistics counters, the marks of a free in progress, and the kick
//! that wakes or starts the worker thread.
//!
//! # Implementation
//!
//! This module sits below the per-thread front (`local`), the fallbacks (`park`) and the worker
//! (`worker`), which all use it; it uses only the per-CPU layer (`krc`) and rcu-core. Two things
//! belong to the worker but are reached from below, and are handed down instead of called up:
//!
//! 1. The batcher is *created* by `worker::batcher` (the creation registers the shrinker and the
//!    `fork()` handlers, which reach into every layer). Below the worker, code that runs only
//!    once a retire went through the batcher uses [`created`]; [`batcher_if_started`] tells the
//!    others.
//! 2. The worker thread's loop is given to [`set_worker_main`] by that creation, before the
//!    batcher is published; [`kick`] starts the thread with it (rcu-core's
//!    `raw::BackgroundThread`: a fork-aware start that fails softly when memory is short, is
//!    reported once per run of failures, and is retried by the next kick).
//!
//! Orderings: the batcher is published with a Release store and read with Acquire
//! ([`Created::get`]); the worker's loop likewise ([`set_worker_main`], `start_worker`); the
//! thread's handle is published by `BackgroundThread` (Release store of its running state, read
//! with Acquire by `is_running` and `unpark`). `IDLE` is Relaxed, ordered by the fences of
//! [`kick_after_publish`] and of the worker's idle check. Counters are Relaxed.

use core::ptr::{self, NonNull};

use rcu_core::raw::BackgroundThread;

use crate::krc::{Added, Batcher, Pages, Processed};
use crate::primitive::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// Pages from the kit's page layer (accounted, limited, really unmapped on free).
#[derive(Debug)]
pub(crate) struct PageLayer;

impl Pages for PageLayer {
    fn alloc(&self) -> Option<NonNull<u8>> {
        // The `block` fault point refuses like the page layer would (block pages and the
        // emergency refill's pages, which are the next blocks).
        if crate::block::inject(rcu_core::fault::Point::Block, crate::block::PAGE_SIZE) {
            return None;
        }
        // Never reclaim on the batching paths: "don't rob reclaim of memory".
        slab_backend::page::try_alloc_pages(1)
    }
    unsafe fn free(&self, p: NonNull<u8>) {
        // SAFETY: forwarded contract (a page from `try_alloc_pages(1)`, unused now).
        unsafe { slab_backend::page::free_pages(p, 1) }
    }
    fn over_limit(&self) -> bool {
        slab_backend::page::over_limit()
    }
}

pub(crate) type Global = Batcher<'static, PageLayer>;

/// The batcher, created once by `create_batcher`. Not a `OnceLock`: a `fork()` while another
/// thread creates it would leave the child's copy "being initialised" by a thread the child does
/// not have, forever; creation runs under `INIT` instead, a try-lock the child resets.
pub(crate) static BATCHER: Created = Created(AtomicPtr::new(core::ptr::null_mut()));
pub(crate) struct Created(pub(crate) AtomicPtr<Global>);

impl Created {
    /// The batcher if it was created. Acquire pairs with the Release store that publishes it.
    #[inline]
    pub(crate) fn get(&self) -> Option<&'static Global> {
        // SAFETY: a non-null pointer is a leaked `Box<Global>`, never freed.
        unsafe { self.0.load(Ordering::Acquire).as_ref() }
    }
}

/// The batcher, where it must exist: code below the worker that runs only after a retire went
/// through the batcher (which created it: module docs), such as the hand-over of a front's full
/// block.
#[inline]
pub(crate) fn created() -> &'static Global {
    match BATCHER.get() {
        Some(b) => b,
        None => not_created(),
    }
}

#[cold]
#[inline(never)]
fn not_created() -> ! {
    panic!("kfree-batch: internal error: the batcher was used before its creation")
}

/// Gives `charge` back to the batcher's pending budget (or overdraft, as it was charged). A
/// non-zero charge was made to the batcher, which therefore exists; without one there is nothing
/// to give back (a sweep of objects parked with no charge, in white-box tests).
pub(crate) fn uncharge(charge: usize) {
    if let Some(b) = BATCHER.get() {
        b.budget.uncharge(charge);
    }
}

/// The global batcher if it was created.
pub(crate) fn batcher_if_started() -> Option<&'static Global> {
    BATCHER.get()
}

/// The worker thread (`rcu-kfree`). Kicks retry a failed start at once (no back-off).
static WORKER: BackgroundThread = BackgroundThread::new(0);
/// Set by the worker before it parks; cleared by the kick that unparks it.
pub(crate) static IDLE: AtomicBool = AtomicBool::new(false);
/// The worker thread's loop (`worker`, the module above this one), set by the batcher's
/// creation before it publishes the batcher (module docs). An atomic function pointer, not a
/// `OnceLock`: a `fork()` during a `OnceLock`'s initialisation would leave it "being
/// initialised" in the child forever. Null only before the first creation, when no kick comes.
static WORKER_MAIN: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());

/// Gives the worker thread's loop to [`kick`] (from the batcher's creation).
pub(crate) fn set_worker_main(main: fn()) {
    // Release pairs with the Acquire load in `start_worker`.
    WORKER_MAIN.store(main as *mut (), Ordering::Release);
}

pub(crate) static FREED: AtomicU64 = AtomicU64::new(0);
pub(crate) static FALLBACK_SYNC: AtomicU64 = AtomicU64::new(0);
pub(crate) static HEAD_QUEUED: AtomicU64 = AtomicU64::new(0);
pub(crate) static BLOCKS_FREED: AtomicU64 = AtomicU64::new(0);
pub(crate) static READY_FIRST: AtomicU64 = AtomicU64::new(0);
pub(crate) static GPS_WAITED: AtomicU64 = AtomicU64::new(0);
pub(crate) static BLOCKS_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the first call (a monotonic clock for drain delays).
pub(crate) fn now_ms() -> u64 {
    rcu_core::raw::monotonic_ns() / 1_000_000
}

/// Wakes the worker if it is idle; starts it if it does not run.
#[inline]
pub(crate) fn kick() {
    // Acquire (in `is_running`) pairs with the Release store that publishes the handle.
    if !WORKER.is_running() {
        start_worker();
    } else if IDLE.load(Ordering::Relaxed) && IDLE.swap(false, Ordering::Relaxed) {
        unpark_worker();
    }
}

/// `kick` after a lock-free publication (heads, parks): the fence pairs with the worker's fence
/// between `IDLE = true` and its re-check.
pub(crate) fn kick_after_publish() {
    fence(Ordering::SeqCst);
    kick();
}

#[cold]
fn start_worker() {
    // Acquire pairs with the Release store in `set_worker_main`.
    let p = WORKER_MAIN.load(Ordering::Acquire);
    if p.is_null() {
        return; // no batcher yet, so nothing to collect (module docs)
    }
    // SAFETY: a non-null value was stored by `set_worker_main` from a `fn()`; function and data
    // pointers have the same size and representation on the targets this crate builds for.
    let main = unsafe { core::mem::transmute::<*mut (), fn()>(p) };
    // Fails softly when memory is short (`rcu_core::lowmem`): no heap for std's spawn, or no
    // room for a stack. The next kick retries.
    WORKER.start(format_args!("rcu-kfree"), main, |e| {
        // Written without allocating (memory may be what is missing); once per failure run.
        rcu_core::lowmem::report(format_args!(
            "kfree-batch: cannot start the worker ({}); blocks wait for the next retry",
            rcu_core::lowmem::OsError(e)
        ));
    });
}

/// Unparks the worker thread if it runs (the worker's own batching pause is cut short too).
pub(crate) fn unpark_worker() {
    WORKER.unpark();
}

/// In a `fork()` child: the worker thread does not exist there; the next kick starts one.
pub(crate) fn worker_reset_after_fork() {
    WORKER.reset_after_fork();
}

crate::primitive::rcu_thread_local! {
    /// Depth of the frees this thread runs: collection passes and a producer's own ready-first
    /// reclaim (destructors of freed objects run inside them).
    pub(crate) static FREEING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the caller runs inside a free of the batcher (a destructor of a freed object).
pub(crate) fn in_free() -> bool {
    FREEING.with(|w| w.get() != 0)
}

/// Why `rcu_barrier` may not wait inside a free of the batcher (rcu-core's scope; the text
/// follows "called" in its panic message).
pub(crate) const NO_BARRIER_WHY: &str = "from the destructor of an object kfree-batch is freeing";

/// Runs `f`, a free of the batcher, marked as such on this thread ([`in_free`]) and as a scope
/// where `rcu_barrier` may not wait (`rcu_core::raw::enter_no_barrier`): a `call_rcu` callback
/// may be waiting in `kvfree_rcu_barrier` for this free (a pass holds `BUSY`; a barrier waits for
/// a producer's held blocks), so a destructor here that waited for callbacks would wait for
/// itself. `rcu_core::may_block` is false inside, so a typesafe slab cache dropped by a
/// destructor here is destroyed on a thread of its own.
pub(crate) fn freeing<R>(f: impl FnOnce() -> R) -> R {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            FREEING.with(|w| w.set(w.get() - 1));
        }
    }
    FREEING.with(|w| w.set(w.get() + 1));
    let _m = Mark;
    let _scope = rcu_core::raw::enter_no_barrier(NO_BARRIER_WHY);
    f()
}

/// Adds what was freed outside a collection pass to the statistics.
pub(crate) fn count_freed(res: &Processed) {
    if res.blocks != 0 {
        FREED.fetch_add(res.objects as u64, Ordering::Relaxed);
        BLOCKS_FREED.fetch_add(res.blocks as u64, Ordering::Relaxed);
        READY_FIRST.fetch_add(res.ready_first as u64, Ordering::Relaxed);
    }
}

crate::primitive::rcu_thread_local! {
    /// Blocks this thread holds while it frees them (`free_reclaimed`): what the `fork()` child
    /// handler restores `held` to when a destructor forked (`krc`, Invariant 5).
    pub(crate) static HOLDING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Frees the blocks a producer reclaimed inline and counts them.
pub(crate) fn free_reclaimed(b: &Global, a: &mut Added) {
    let n = a.reclaimed.iter().filter(|r| r.is_some()).count();
    if n == 0 {
        return;
    }
    let mut res = Processed::default();
    // Added, not set: a destructor may retire and free reclaimed blocks of its own (nested);
    // each hold that ends takes one off, so the count is back where it was after the call.
    HOLDING.with(|h| h.set(h.get() + n));
    freeing(|| b.free_detached_then(a, &mut res, || HOLDING.with(|h| h.set(h.get() - 1))));
    count_freed(&res);
}
