//! `call_rcu` callbacks: per-CPU segmented lists and the operations the worker runs on them.
//!
//! # Implementation
//!
//! Each CPU slot has a [`CbList`] protected by its own try-lock. A list has three segments, in
//! the order its callbacks will run:
//!
//! ```text
//!   done ──── wait[0] (snap a) ── wait[1] (snap b) ── … ── next (no snapshot yet)
//!   ready     waiting for the grace period `snap`           queued since the last harvest
//! ```
//!
//! * `enqueue` (any thread): push on `next`. If the slot of the caller's CPU is locked, try the
//!   other slots once each, and only then wait on the own slot's lock.
//! * `harvest` (the worker): under the lock, move every `wait` batch whose snapshot is done onto
//!   `done`; stamp `next` with `get_state()` taken *now* (the enqueuers' removals happen-before
//!   this through the lock) and append it to `wait` (merging with the last batch if the snapshot
//!   is equal); take `done` out for invocation. Returns the oldest snapshot still waited for, so
//!   the worker knows which grace period to drive.
//! * `entrain` (`rcu_barrier`): append a barrier callback behind the newest callback of the list:
//!   at the end of `next` if non-empty, else of the newest `wait` batch, else on `done`. Callbacks
//!   of one list run in list order, so the barrier callback runs after every callback queued
//!   before it on this list.
//!
//! Ready batches taken out of a list by a callback thread stay reachable in a [`Held`] (one per
//! thread role) until they are handed over or finished; the `fork()` child recovers from there
//! the callbacks that had not started (see the type).
//!
//! `pending` counts callbacks queued on the list and not yet *finished*: it is decremented by the
//! worker after invoking them, so `rcu_barrier` never mistakes a list whose callbacks are being
//! invoked right now for an empty one. It and `queued` are only written with the lock held, so
//! they are updated with plain load + store (one atomic read-modify-write per `call_rcu`: the
//! lock's CAS; the unlock is a Release store).
//!
//! `retired` counts the entries finished, in list order (one invoker per list); `retired +
//! pending` is therefore the number ever pushed. When `entrain` has no memory for the barrier
//! callback it returns that number, and `rcu_barrier` may instead wait until `retired` reaches
//! it: every callback queued before it has then run, without any allocation, even while new
//! callbacks keep the list from ever being empty.
//!
//! Allocations that can fail (the box of a large closure, the growth of `next`, the barrier's
//! room) first ask the `call_rcu`/`barrier` points of [`crate::fault`]: an injected refusal
//! takes the path of a real one.
//!
//! ## Invariants
//!
//! 1. Segments are only touched with the list's lock held.
//! 2. Every `wait` batch's snapshot was taken after every callback in it was enqueued; snapshots
//!    are non-decreasing from `wait[0]` to the back.
//! 3. A callback moves to `done` only when `poll(snap)` of its batch is true (asserted in debug
//!    builds again before invocation, like the kernel's `WARN_ON_ONCE` on `gp_snap`).
//!
//! ## Memory orderings
//!
//! The lock (Acquire on lock, Release on unlock) orders enqueue before harvest; the snapshot RMW
//! inside `get_state` (Release, read by the start RMW of the grace period that ends it through
//! its release sequence) orders the stamped callbacks' removals before that grace period;
//! `poll`'s Acquire orders the grace period before invocation. The snapshot is the worker's,
//! not the enqueuer's, and covers the enqueuer's removal through a happens-before chain (`gp.rs`,
//! "Covering another thread's retire"): removal, then (program order) `call_rcu`'s unlock
//! (Release), the harvest's lock (Acquire), `get_state`'s RMW — whichever CPU's list the
//! enqueue fell back to, and even when the enqueuer is inside a read-side critical section. `pending` is Relaxed: it is a
//! hint for skipping lists and is re-checked under the lock where it matters.

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use crate::gp::Domain;
use crate::primitive::cell::UnsafeCell;
use crate::primitive::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::seq::GpSeq;
use crate::sys::lock::SpinLock;

/// Words of closure state stored inline in a [`Callback`] (no allocation for small closures).
const INLINE_WORDS: usize = 2;
type InlineData = MaybeUninit<[usize; INLINE_WORDS]>;

/// Shared state of one `rcu_barrier` call, on the caller's stack (no allocation: the barrier
/// may run while memory is short). The barrier callbacks point at it; the caller neither returns
/// nor unwinds before `remaining` is 0, and a callback does not touch it after its decrement.
#[derive(Debug)]
pub(crate) struct BarrierWait {
    /// Barrier callbacks not yet run (plus one held by the caller while it entrains).
    pub(crate) remaining: AtomicUsize,
    /// The waiting thread.
    #[cfg(not(rcu_loom))]
    pub(crate) waiter: std::thread::Thread,
}

/// A deferred function, run by the worker after a grace period.
///
/// A callback that is dropped without running leaks what it captured (never double-drops); the
/// engine only does that on paths where the process is going away.
pub(crate) enum Callback {
    /// A closure too large (or too aligned) to be stored inline.
    Boxed(Box<dyn FnOnce() + Send>),
    /// A closure stored in place; `call` moves it out of `data` and runs it.
    Inline {
        call: unsafe fn(*mut InlineData),
        data: InlineData,
    },
    /// A raw function and argument (`call_rcu_raw`).
    Raw {
        call: unsafe fn(*mut ()),
        data: *mut (),
    },
    /// One CPU slot's part of an `rcu_barrier` (the caller's `BarrierWait`, see its doc).
    Barrier(core::ptr::NonNull<BarrierWait>),
}

impl core::fmt::Debug for Callback {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Callback::Boxed(_) => "Callback::Boxed",
            Callback::Inline { .. } => "Callback::Inline",
            Callback::Raw { .. } => "Callback::Raw",
            Callback::Barrier(_) => "Callback::Barrier",
        })
    }
}

// SAFETY: `Boxed` and `Inline` hold `Send` closures (enforced by `Callback::new`); `Raw` is only
// built by `call_rcu_raw`, whose contract requires `data` to be usable from the worker thread;
// `Barrier` points at a `BarrierWait` (`Sync` atomics and a `Thread` handle) that outlives it.
unsafe impl Send for Callback {}

impl Callback {
    /// Wraps a closure, inline when it fits in two words.
    pub(crate) fn new<F: FnOnce() + Send + 'static>(f: F) -> Callback {
        if core::mem::size_of::<F>() <= core::mem::size_of::<InlineData>()
            && core::mem::align_of::<F>() <= core::mem::align_of::<InlineData>()
        {
            let mut data = InlineData::uninit();
            // SAFETY: `F` fits in `data` in size and alignment (checked above); the value is
            // moved in and will be moved out exactly once by `call_inline::<F>`.
            unsafe { data.as_mut_ptr().cast::<F>().write(f) };
            Callback::Inline {
                call: call_inline::<F>,
                data,
            }
        } else {
            Callback::Boxed(Box::new(f))
        }
    }

    /// [`Callback::new`], handing `f` back instead of aborting when its box cannot be
    /// allocated (`call_rcu` then takes its no-memory fallback).
    pub(crate) fn try_new<F: FnOnce() + Send + 'static>(f: F) -> Result<Callback, F> {
        let layout = core::alloc::Layout::new::<F>();
        if (layout.size() <= core::mem::size_of::<InlineData>()
            && layout.align() <= core::mem::align_of::<InlineData>())
            || layout.size() == 0
        {
            return Ok(Callback::new(f)); // inline, or a box that allocates nothing
        }
        // The `call_rcu` fault point refuses like the allocator would.
        if crate::fault::should_fail(crate::fault::Point::CallRcu, layout.size()) {
            return Err(f);
        }
        // SAFETY: the layout has a non-zero size (checked above).
        let p = unsafe { std::alloc::alloc(layout) }.cast::<F>();
        if p.is_null() {
            return Err(f);
        }
        // SAFETY: `p` is a fresh allocation for one `F` from the global allocator with
        // `Layout::new::<F>()`, which is what `Box<F>` owns, so `Box::from_raw` may take it.
        let b: Box<dyn FnOnce() + Send> = unsafe {
            p.write(f);
            Box::from_raw(p)
        };
        Ok(Callback::Boxed(b))
    }

    /// Gives back the closure a callback was built from (`try_call_rcu` could not queue it).
    ///
    /// # Safety
    /// `self` was made by [`Callback::new`] or [`Callback::try_new`] from an `F`.
    #[cfg(not(rcu_loom))]
    pub(crate) unsafe fn into_closure<F: FnOnce() + Send + 'static>(self) -> F {
        match self {
            Callback::Inline { mut data, .. } => {
                // SAFETY: `new` wrote an `F` into `data` (the contract) and `self` is consumed,
                // so the value is moved out once and never run.
                unsafe { data.as_mut_ptr().cast::<F>().read() }
            }
            Callback::Boxed(b) => {
                // SAFETY: the box was made from a `Box<F>` (the contract), so its data pointer
                // is that allocation, with `F`'s layout.
                *unsafe { Box::from_raw(Box::into_raw(b).cast::<F>()) }
            }
            _ => unreachable!("a closure's callback is inline or boxed"),
        }
    }

    /// Runs the callback.
    pub(crate) fn invoke(self) {
        match self {
            Callback::Boxed(f) => f(),
            Callback::Inline { call, mut data } => {
                // SAFETY: `call` is `call_inline::<F>` for the `F` written into `data` by `new`,
                // and `self` is consumed, so the value is moved out only once.
                unsafe { call(&mut data) }
            }
            Callback::Raw { call, data } => {
                // SAFETY: the contract of `call_rcu_raw`: `call(data)` may run once on any thread
                // after a grace period.
                unsafe { call(data) }
            }
            Callback::Barrier(b) => {
                // SAFETY: the `BarrierWait` lives until `remaining` reaches 0 (its doc), and this
                // callback's count is not subtracted yet.
                let b = unsafe { b.as_ref() };
                // Taken before the decrement: after it the waiter may return (no allocation: a
                // reference count).
                #[cfg(not(rcu_loom))]
                let waiter = b.waiter.clone();
                // Release pairs with the waiter's Acquire load: every callback this list ran
                // before the barrier happens-before `rcu_barrier` returns.
                if b.remaining.fetch_sub(1, Ordering::Release) == 1 {
                    #[cfg(not(rcu_loom))]
                    waiter.unpark();
                }
            }
        }
    }
}

/// Moves an `F` out of inline storage and calls it.
///
/// # Safety
/// `data` must hold an initialised `F` written by [`Callback::new`] that was not moved out yet.
unsafe fn call_inline<F: FnOnce()>(data: *mut InlineData) {
    // SAFETY: by the function contract, `data` holds an initialised, suitably aligned `F`.
    let f = unsafe { data.cast::<F>().read() };
    f()
}

/// The three segments of one list (module docs). Batches move between segments as whole
/// `Vec`s, so advancing never copies callbacks or allocates beyond a small outer slot.
#[derive(Debug, Default)]
struct Segments {
    done: Vec<Vec<Callback>>,
    wait: VecDeque<(GpSeq, Vec<Callback>)>,
    next: Vec<Callback>,
    /// Emptied batch buffers given back after invocation ([`CbList::finished`]), reused as
    /// `next`.
    spare: Vec<Vec<Callback>>,
}

/// Emptied batch buffers a list keeps for reuse. Without reuse every harvest leaves `next`
/// empty, so it grows again by doubling: a copy per doubling, and frees of large buffers, which
/// make glibc consolidate every small chunk the callbacks just freed (`malloc_consolidate`).
const MAX_SPARE: usize = 4;
/// Largest buffer (in callbacks) kept for reuse: a list holds at most
/// `MAX_SPARE × SPARE_MAX_CAP × 32 B` (4 MiB per CPU slot) while callbacks flow; the worker
/// frees the spares when it goes idle ([`CbList::trim_spare`]).
const SPARE_MAX_CAP: usize = 1 << 15;

/// Callbacks `next` may hold before enqueuers must fall back: bounds the largest allocation on
/// the `call_rcu` path (32 B per callback: 32 MiB, reached only when the worker cannot keep up)
/// and applies backpressure then. Every growth is fallible (`try_reserve`).
pub(crate) const NEXT_MAX: usize = 1 << 20;

/// Why an enqueue did not happen.
#[derive(Debug)]
pub(crate) enum EnqueueError {
    /// The list's lock is held (try another list).
    Busy(Callback),
    /// No memory to grow the list, or `next` is full (the caller must fall back).
    NoMemory(Callback),
}

/// One CPU slot's callback list.
#[derive(Debug)]
pub struct CbList {
    /// Guards `segs` (Invariant 1).
    lock: SpinLock,
    /// The segments.
    segs: UnsafeCell<Segments>,
    /// Callbacks queued here and not yet finished. Written under `lock` only; read as a hint.
    pub(crate) pending: AtomicUsize,
    /// Callbacks ever queued here (statistics). Written under `lock` only.
    pub(crate) queued: AtomicU64,
    /// Entries (callbacks and barrier callbacks) ever finished here, in list order. Written
    /// under `lock` only; `retired + pending` is the count of entries ever pushed.
    retired: AtomicU64,
}

// SAFETY: `segs` is only accessed with `lock` held (Invariant 1), and everything in it is `Send`.
unsafe impl Sync for CbList {}
// SAFETY: as above; the list owns `Send` callbacks.
unsafe impl Send for CbList {}

impl Default for CbList {
    fn default() -> Self {
        Self::new()
    }
}

impl CbList {
    /// An empty list.
    pub fn new() -> CbList {
        CbList {
            lock: SpinLock::new(),
            segs: UnsafeCell::new(Segments::default()),
            pending: AtomicUsize::new(0),
            queued: AtomicU64::new(0),
            retired: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the segments with the lock held.
    fn locked<R>(&self, f: impl FnOnce(&mut Segments) -> R) -> R {
        self.lock.lock();
        let r = self.with_segs(f);
        self.lock.unlock();
        r
    }

    /// Runs `f` on the segments; the lock must be held.
    fn with_segs<R>(&self, f: impl FnOnce(&mut Segments) -> R) -> R {
        // SAFETY: the caller holds `lock` (Invariant 1), so no other reference to the segments
        // exists.
        self.segs.with_mut(|p| f(unsafe { &mut *p }))
    }

    /// Appends `cb` if the lock is free.
    pub(crate) fn try_enqueue(&self, cb: Callback) -> Result<(), EnqueueError> {
        if !self.lock.try_lock() {
            return Err(EnqueueError::Busy(cb));
        }
        let r = self.push_locked(cb);
        self.lock.unlock();
        r.map_err(EnqueueError::NoMemory)
    }

    /// Appends `cb`, waiting for the lock; gives it back when no memory can be had.
    pub(crate) fn enqueue(&self, cb: Callback) -> Result<(), Callback> {
        self.lock.lock();
        let r = self.push_locked(cb);
        self.lock.unlock();
        r
    }

    #[inline]
    fn push_locked(&self, cb: Callback) -> Result<(), Callback> {
        let cb = self.with_segs(|s| {
            // Growth only (`len == capacity`): the fault point is off the common path.
            if s.next.len() == s.next.capacity()
                && (s.next.len() >= NEXT_MAX
                    || crate::fault::should_fail(
                        crate::fault::Point::CallRcu,
                        core::mem::size_of::<Callback>(),
                    )
                    || s.next.try_reserve(1).is_err())
            {
                return Some(cb);
            }
            s.next.push(cb);
            None
        });
        if let Some(cb) = cb {
            return Err(cb);
        }
        // Plain load + store: only lock holders write these (module docs).
        self.pending
            .store(self.pending.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.queued
            .store(self.queued.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Worker step (module docs). Appends ready callbacks to `ready` and returns the newest
    /// snapshot still waited for (one grace period up to it makes every waiting batch ready).
    pub(crate) fn harvest(&self, dom: &Domain, ready: &mut Vec<Vec<Callback>>) -> Option<GpSeq> {
        self.harvest_counted(dom, ready).0
    }

    /// [`CbList::harvest`], also returning how many callbacks are left waiting for a grace
    /// period on this list (the worker's batching decision; ready ones do not count).
    pub(crate) fn harvest_counted(
        &self,
        dom: &Domain,
        ready: &mut Vec<Vec<Callback>>,
    ) -> (Option<GpSeq>, usize) {
        self.locked(|s| {
            let cur = dom.current();
            while let Some((snap, _)) = s.wait.front() {
                // A full `done` list (no memory for its outer slot) waits for the next round.
                if !cur.done(*snap) || s.done.try_reserve(1).is_err() {
                    break;
                }
                let (_, batch) = s.wait.pop_front().expect("front exists");
                s.done.push(batch);
            }
            if !s.next.is_empty() && s.wait.try_reserve(1).is_ok() {
                // Invariant 2: taken after the lock made every enqueue in `next` visible.
                let snap = dom.get_state();
                let fresh = s.spare.pop().unwrap_or_default();
                let batch = core::mem::replace(&mut s.next, fresh);
                s.wait.push_back((snap, batch));
            }
            debug_assert!(ready.is_empty());
            core::mem::swap(ready, &mut s.done);
            let waiting = s.next.len() + s.wait.iter().map(|(_, b)| b.len()).sum::<usize>();
            (s.wait.back().map(|(snap, _)| *snap), waiting)
        })
    }

    /// Appends a barrier callback behind the newest callback; returns `Ok(false)` (and does
    /// nothing) if nothing queued here is unfinished, `Err(target)` if no memory could be had:
    /// every entry queued so far is finished once [`CbList::retired_reaches`]`(target)` (the
    /// caller retries, or waits for that without an allocation).
    pub(crate) fn entrain(&self, barrier: &BarrierWait) -> Result<bool, u64> {
        self.locked(|s| {
            if self.pending.load(Ordering::Relaxed) == 0 {
                return Ok(false);
            }
            // Entries finish in list order, so once `retired` reaches every entry pushed so far,
            // the callbacks queued before this call have all run.
            let target =
                self.retired.load(Ordering::Relaxed) + self.pending.load(Ordering::Relaxed) as u64;
            // The `barrier` fault point refuses like the allocator would (the caller retries).
            if crate::fault::should_fail(
                crate::fault::Point::Barrier,
                core::mem::size_of::<Callback>(),
            ) {
                return Err(target);
            }
            let room = if !s.next.is_empty() {
                s.next.try_reserve(1)
            } else if let Some((_, batch)) = s.wait.back_mut() {
                batch.try_reserve(1)
            } else {
                s.done.try_reserve(1)
            };
            if room.is_err() {
                return Err(target);
            }
            // Counted before it becomes visible to the worker (the lock orders both).
            barrier.remaining.fetch_add(1, Ordering::Relaxed);
            self.pending
                .store(self.pending.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            let cb = Callback::Barrier(core::ptr::NonNull::from(barrier));
            if !s.next.is_empty() {
                s.next.push(cb);
            } else if let Some((_, batch)) = s.wait.back_mut() {
                batch.push(cb);
            } else {
                // One-element batch: `Vec::with_capacity(1)` is the only allocation left here.
                let mut one = Vec::new();
                if one.try_reserve_exact(1).is_err() {
                    barrier.remaining.fetch_sub(1, Ordering::Relaxed);
                    self.pending
                        .store(self.pending.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                    return Err(target);
                }
                one.push(cb);
                s.done.push(one);
            }
            Ok(true)
        })
    }

    /// Queues a closure (white-box API for models and tests; the engine uses `try_enqueue`).
    #[doc(hidden)]
    pub fn enqueue_fn<F: FnOnce() + Send + 'static>(&self, f: F) {
        if self.enqueue(Callback::new(f)).is_err() {
            panic!("CbList::enqueue_fn: out of memory in a model");
        }
    }

    /// One worker step on this list alone: harvest, invoke what is ready, and return how many
    /// callbacks ran and the oldest snapshot still waited for (white-box API).
    #[doc(hidden)]
    pub fn process(&self, dom: &Domain) -> (usize, Option<GpSeq>) {
        let mut ready = Vec::new();
        let need = self.harvest(dom, &mut ready);
        let n = invoke_batches(&mut ready, &AtomicU64::new(0));
        self.finished(n, &mut ready);
        (n, need)
    }

    /// Frees the list's spare batch buffers (the worker, when it goes idle).
    pub(crate) fn trim_spare(&self) {
        let spare = self.locked(|s| core::mem::take(&mut s.spare));
        drop(spare);
    }

    /// Whether callbacks wait in this list's segments (not yet harvested as ready; checked under
    /// the lock). Callbacks handed to an invoker and not finished yet do not count (`pending`
    /// does).
    pub(crate) fn has_queued_locked(&self) -> bool {
        self.locked(|s| !s.next.is_empty() || !s.wait.is_empty() || !s.done.is_empty())
    }

    /// Whether `target` entries of this list have finished ([`CbList::entrain`]'s fallback).
    /// Read under the lock: the lock's Acquire pairs with the Release unlock of the
    /// `finished` that counted them, so their callbacks' effects happen-before the caller's
    /// return.
    pub(crate) fn retired_reaches(&self, target: u64) -> bool {
        self.locked(|_| self.retired.load(Ordering::Relaxed) >= target)
    }

    /// Marks `n` callbacks of this list finished and takes back the emptied batch buffers of
    /// `ran` for reuse (up to [`MAX_SPARE`]; the rest are freed after unlocking).
    pub(crate) fn finished(&self, n: usize, ran: &mut Vec<Vec<Callback>>) {
        self.locked(|s| {
            self.pending
                .store(self.pending.load(Ordering::Relaxed) - n, Ordering::Relaxed);
            self.retired.store(
                self.retired.load(Ordering::Relaxed) + n as u64,
                Ordering::Relaxed,
            );
            // Grown fallibly: the worker finishes callbacks when memory may be short (without
            // room, the buffers are simply freed).
            while s.spare.len() < MAX_SPARE && s.spare.try_reserve(1).is_ok() {
                let Some(v) = ran.pop() else { break };
                debug_assert!(v.is_empty());
                if v.capacity() != 0 && v.capacity() <= SPARE_MAX_CAP {
                    s.spare.push(v);
                }
            }
        });
        ran.clear();
    }

    /// Takes the lock for `fork()` (prepare handler).
    #[cfg(not(rcu_loom))]
    pub(crate) fn fork_lock(&self) {
        self.lock.lock();
    }

    /// Releases the lock after `fork()` in the parent.
    #[cfg(not(rcu_loom))]
    pub(crate) fn fork_unlock(&self) {
        self.lock.unlock();
    }

    /// Resets the lock in the `fork()` child (the prepare handler held it; the child's copy of
    /// the holder is the forking thread itself, so the segments are consistent).
    #[cfg(not(rcu_loom))]
    pub(crate) fn fork_reset(&self) {
        self.lock.reset_after_fork();
    }
}

/// Invokes the callbacks of `ready`'s batches, leaving the batches empty (callbacks whose grace
/// period is over), isolating panics so that
/// one bad callback cannot stop the worker. Returns how many ran. `invoked` counts the callbacks
/// other than barriers; it is brought up to date *before* each barrier callback runs, so that
/// statistics read after `rcu_barrier` include every callback queued before it.
pub(crate) fn invoke_batches(ready: &mut [Vec<Callback>], invoked: &AtomicU64) -> usize {
    let n = ready.iter().map(Vec::len).sum();
    let mut unflushed = 0u64;
    // Drained in place: the emptied buffers go back to their list (`CbList::finished`).
    for cb in ready.iter_mut().flat_map(|v| v.drain(..)) {
        invoke_counted(cb, invoked, &mut unflushed);
    }
    invoked.fetch_add(unflushed, Ordering::Relaxed);
    n
}

/// Runs one callback for [`invoke_batches`] / [`Held::invoke`]: flushes `unflushed` into
/// `invoked` before a barrier callback, and isolates a panic.
fn invoke_counted(cb: Callback, invoked: &AtomicU64, unflushed: &mut u64) {
    if matches!(cb, Callback::Barrier(_)) {
        invoked.fetch_add(*unflushed, Ordering::Relaxed);
        *unflushed = 0;
    } else {
        *unflushed += 1;
    }
    #[cfg(not(rcu_loom))]
    {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb.invoke()))
        {
            // Borrowed, and written without allocating (`lowmem`): the worker may be short of
            // memory.
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("<non-string panic>");
            crate::lowmem::report(format_args!(
                "rcu: a call_rcu callback panicked (ignored, worker continues): {msg}"
            ));
        }
    }
    #[cfg(rcu_loom)]
    cb.invoke();
}

#[cfg(not(rcu_loom))]
crate::primitive::rcu_thread_local! {
    /// The [`Held`] whose callbacks the calling thread is invoking right now (null otherwise):
    /// tells the `fork()` child handler whether the forking thread is that holder (a callback
    /// that forks keeps running its batch in the child).
    static INVOKING: core::cell::Cell<*const Held> = const { core::cell::Cell::new(core::ptr::null()) };
}

/// Ready batches a callback thread (the worker, an invoker, or an `rcu_barrier` caller standing
/// in for the worker) took out of a list or an inbox, kept where the `fork()` child handler can
/// reach them: in a child, the callbacks of a thread that does not exist there are recovered
/// from here instead of being lost with that thread's stack.
///
/// Only the holder thread changes `batches`, always with `lock` held (the `fork()` prepare
/// handler takes it, so a fork never sees a half-done move); while invoking, the holder reads
/// the callbacks out in order *without* the lock and counts them in `taken` before running each.
/// In the child, the callbacks at positions `taken..` never started in the parent; the one at
/// `taken - 1` was running (or about to run) at the fork and is not run again.
///
/// *Pausing.* Between [`pause_invocation`] and [`resume_invocation`] no holder starts a
/// callback: it waits at the gate before counting the next one in `taken`, with `busy` false.
/// A fork made while paused therefore finds every holder between two callbacks, and its child
/// runs each callback the parent had not started exactly once (none is "about to run"). This is
/// what liburcu's `call_rcu_before_fork()` / `call_rcu_after_fork_*()` hooks promise.
#[cfg(not(rcu_loom))]
#[derive(Debug)]
pub(crate) struct Held {
    lock: SpinLock,
    batches: UnsafeCell<Vec<Vec<Callback>>>,
    /// Callbacks of `batches` (counted in order across batches) moved out for invocation.
    taken: AtomicUsize,
    /// The list the batches came from (meaningful while `batches` is not empty).
    list: AtomicUsize,
    /// Set in a `fork()` child when the holder thread does not exist there. Relaxed, like
    /// `taken` and `list` when the child reads them: the child handler runs on the only thread
    /// of the child, and threads the child starts later see its stores through their spawn.
    orphaned: crate::primitive::sync::atomic::AtomicBool,
    /// True while the holder is in [`Held::invoke`] past the pause gate (a callback may be
    /// running); false while it waits at the gate or does not invoke.
    busy: crate::primitive::sync::atomic::AtomicBool,
}

/// Callers of [`pause_invocation`] not yet resumed: while non-zero, no holder starts a callback.
#[cfg(not(rcu_loom))]
static PAUSED: AtomicUsize = AtomicUsize::new(0);

/// Stops every [`Held`] from starting callbacks until [`resume_invocation`]; the caller then
/// waits for the running ones with [`Held::wait_idle`].
#[cfg(not(rcu_loom))]
pub(crate) fn pause_invocation() {
    PAUSED.fetch_add(1, Ordering::Relaxed);
    // Pairs with the fence in `Held::gate` (store-buffering): either the holder sees PAUSED
    // and waits, or the `busy` load in `wait_idle` after this sees its `true`. Without it both
    // could miss each other and a callback start while the caller believes all are paused.
    crate::primitive::sync::atomic::fence(Ordering::SeqCst);
}

/// Undoes one [`pause_invocation`]; nothing without one (liburcu's `after_fork` hooks are
/// harmless without `before_fork`).
#[cfg(not(rcu_loom))]
pub(crate) fn resume_invocation() {
    // Relaxed: the waiting holders poll; nothing is published through this store.
    let _ = PAUSED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1));
}

// SAFETY: `batches` is only changed by the holder with `lock` held, and read without the lock
// only by the holder itself (or by the single-threaded `fork()` child); callbacks are `Send`.
#[cfg(not(rcu_loom))]
unsafe impl Sync for Held {}

#[cfg(not(rcu_loom))]
impl Held {
    /// Nothing held.
    pub(crate) const fn new() -> Held {
        Held {
            lock: SpinLock::new(),
            batches: UnsafeCell::new(Vec::new()),
            taken: AtomicUsize::new(0),
            list: AtomicUsize::new(0),
            orphaned: crate::primitive::sync::atomic::AtomicBool::new(false),
            busy: crate::primitive::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The pause gate (type docs): returns with `busy` true and no pause in effect.
    fn gate(&self) {
        loop {
            self.busy.store(true, Ordering::Relaxed);
            // Pairs with the fence in `pause_invocation` (see there).
            crate::primitive::sync::atomic::fence(Ordering::SeqCst);
            if PAUSED.load(Ordering::Relaxed) == 0 {
                return;
            }
            // Release pairs with the Acquire load in `wait_idle`: the callbacks run so far
            // happen-before the pauser's return.
            self.busy.store(false, Ordering::Release);
            while PAUSED.load(Ordering::Relaxed) != 0 {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }

    /// Waits until this holder runs no callback (after [`pause_invocation`]); returns at once
    /// if the caller is the holder itself (a callback that pauses).
    pub(crate) fn wait_idle(&self) {
        if INVOKING.with(|c| core::ptr::eq(c.get(), self)) {
            return;
        }
        // Acquire pairs with the Release stores of `busy` in `gate` and `invoke`.
        while self.busy.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// Runs `f` on the batches with the lock held (holder only), recording that they belong to
    /// list `list`. `f` must not leave callbacks that were taken for invocation in the batches.
    pub(crate) fn with_batches<R>(
        &self,
        list: usize,
        f: impl FnOnce(&mut Vec<Vec<Callback>>) -> R,
    ) -> R {
        self.lock.lock();
        self.list.store(list, Ordering::Relaxed);
        // SAFETY: we hold `lock`, and only the holder (the caller) changes the batches.
        let r = self.batches.with_mut(|b| f(unsafe { &mut *b }));
        self.lock.unlock();
        r
    }

    /// Whether nothing is held (holder only).
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Callbacks held (holder only).
    pub(crate) fn len(&self) -> usize {
        // SAFETY: only the holder (the caller) changes the batches.
        self.batches
            .with(|b| unsafe { &*b }.iter().map(Vec::len).sum())
    }

    /// Invokes every held callback in order (holder only; see the type docs) and returns how
    /// many ran; the batches keep their (moved-out) elements until [`Held::finish`].
    pub(crate) fn invoke(&self, invoked: &AtomicU64) -> usize {
        let prev = INVOKING.with(|c| c.replace(self));
        self.gate();
        let mut unflushed = 0u64;
        let mut n = 0usize;
        // SAFETY: only the holder (the caller) changes the batches, and not while invoking; the
        // outer vector is not touched by anyone else meanwhile (the fork handlers only take and
        // release the lock in the parent).
        let nb = self.batches.with(|b| unsafe { &*b }.len());
        for k in 0..nb {
            // SAFETY: as above; batch `k` exists and its buffer is stable while we read it.
            let (ptr, len) = self
                .batches
                .with(|b| unsafe { ((&*b)[k].as_ptr(), (&*b)[k].len()) });
            for j in 0..len {
                // SAFETY: `j < len`; each element is read exactly once (in this loop), and the
                // batch's length is set to 0 in `finish` before the buffer is reused, so the
                // moved-out element is never dropped or read again.
                let cb = unsafe { ptr.add(j).read() };
                // Relaxed: a hint; `gate` decides with its fence.
                if PAUSED.load(Ordering::Relaxed) != 0 {
                    self.gate();
                }
                n += 1;
                self.taken.store(n, Ordering::Relaxed);
                // Orders the count before the callback's own stores (a store-store barrier, free
                // on x86): a fork child sees a prefix of this thread's stores, so if it sees any
                // effect of this callback it also sees it counted (and does not run it again).
                crate::primitive::sync::atomic::fence(Ordering::Release);
                invoke_counted(cb, invoked, &mut unflushed);
            }
        }
        invoked.fetch_add(unflushed, Ordering::Relaxed);
        // Release: as in `gate`.
        self.busy.store(false, Ordering::Release);
        INVOKING.with(|c| c.set(prev));
        n
    }

    /// After [`Held::invoke`]: forgets the moved-out callbacks, marks `n` finished on `list`
    /// and gives the emptied buffers back to it (holder only).
    pub(crate) fn finish(&self, list: &CbList, n: usize) {
        let mut spent = Vec::new();
        self.lock.lock();
        self.batches.with_mut(|b| {
            // SAFETY: we hold `lock`, and only the holder (the caller) changes the batches.
            let b = unsafe { &mut *b };
            for v in b.iter_mut() {
                // SAFETY: every element was moved out by `invoke`; truncating the length
                // without dropping is what keeps them from being dropped twice.
                unsafe { v.set_len(0) };
            }
            core::mem::swap(b, &mut spent);
        });
        self.taken.store(0, Ordering::Relaxed);
        // Under `lock`, so a fork sees the callbacks either held or finished, never both.
        list.finished(n, &mut spent);
        self.lock.unlock();
    }

    /// `fork()` prepare handler.
    pub(crate) fn fork_lock(&self) {
        self.lock.lock();
    }

    /// `fork()` parent handler.
    pub(crate) fn fork_unlock(&self) {
        self.lock.unlock();
    }

    /// `fork()` child handler: resets the lock; unless the forking thread is the holder (a
    /// callback forked), marks what is held as orphaned. Returns whether the forking thread is
    /// the holder. No allocation.
    pub(crate) fn fork_child(&self) -> bool {
        self.lock.reset_after_fork();
        if INVOKING.with(|c| core::ptr::eq(c.get(), self)) {
            return true;
        }
        // The holder does not exist here: a callback it was running at the fork is not
        // running in the child, and `wait_idle` must not wait for it.
        self.busy.store(false, Ordering::Relaxed);
        // SAFETY: the child runs this handler alone.
        let any = self
            .batches
            .with(|b| unsafe { &*b }.iter().any(|v| !v.is_empty()));
        self.orphaned.store(any, Ordering::Relaxed);
        false
    }

    /// Whether the `fork()` child handler orphaned what is held here.
    pub(crate) fn is_orphaned(&self) -> bool {
        self.orphaned.load(Ordering::Relaxed)
    }

    /// In a `fork()` child, by the thread now acting as the holder: takes the orphaned
    /// callbacks that never started, in order, and marks the started ones finished on their
    /// list. Returns the list index and the batches.
    pub(crate) fn take_orphaned(
        &self,
        lists: &[crate::util::CachePadded<CbList>],
    ) -> Option<(usize, Vec<Vec<Callback>>)> {
        if !self.orphaned.swap(false, Ordering::Relaxed) {
            return None;
        }
        let mut skip = self.taken.swap(0, Ordering::Relaxed);
        let started = skip;
        let i = self.list.load(Ordering::Relaxed);
        let mut out = self.with_batches(i, core::mem::take);
        for v in out.iter_mut() {
            let len = v.len();
            let gone = skip.min(len);
            if gone != 0 {
                // SAFETY: the first `gone` elements were moved out by the parent's holder (they
                // must not be dropped); the rest are moved to the front and stay owned once.
                unsafe {
                    let p = v.as_mut_ptr();
                    core::ptr::copy(p.add(gone), p, len - gone);
                    v.set_len(len - gone);
                }
            }
            skip -= gone;
        }
        out.retain(|v| !v.is_empty());
        lists[i].finished(started, &mut Vec::new());
        Some((i, out))
    }
}
