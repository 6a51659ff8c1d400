//! The process-wide engine behind the free functions: thread registration, the callback worker,
//! `rcu_barrier`, the polled API, `fork()` handling and misuse checks.
//!
//! # Implementation
//!
//! Modules, bottom to top; each uses only the ones before it (and the crate's lower layers:
//! `reader`, `gp`, `callback`, `background`, `sys`, `lowmem`, `stall`):
//!
//! 1. `state`: the domain, the callback lists, the invoked-callback count, the per-thread marks
//!    (callback thread, no-barrier scope).
//! 2. `invoker`: the per-CPU callback threads.
//! 3. `registry`: thread registration and the exit hook ("Registration", "Exit inside a
//!    section").
//! 4. `worker`: the callback worker and `rcu_barrier`'s stand-in for it ("Worker", "No worker
//!    thread", "Idle protocol", "Whose snapshots").
//! 5. `fork`: the `pthread_atfork` handlers, which reset the state of every module above.
//! 6. This module: `init` (decides the barrier mode, installs the fork handlers, allocates the
//!    lists) and the public API. Everything below that needs `init` is reached only through
//!    this module after it ran: registration through [`local_record`], the worker thread through
//!    `ensure_worker`, the stand-in through [`rcu_barrier`], and the invokers through the
//!    worker's passes.
//!
//! * **Initialisation and fork().** `init` runs once per process, marked with the process id of
//!   the runner while it runs (`INIT`), not in a `std::sync::Once`: a `fork()` while another
//!   thread runs it leaves the child the parent's id, and the child's first use runs it again
//!   (its steps are idempotent; the fork handlers are registered once) instead of waiting for a
//!   thread it does not have. A signal handler that needs the engine on the thread running
//!   `init` would wait for its own interrupted run (and every other thread behind it): a
//!   thread-local mark of the runner turns that into a panic with a message.
//! * **Short of memory.** The paths above run exactly when memory may be exhausted, and an
//!   infallible allocation failing there aborts the process, so none of them allocates
//!   infallibly: threads are started by `lowmem::spawn` (fails softly, with an `OutOfMemory`
//!   error, when the calling thread cannot allocate `lowmem::SPAWN_HEADROOM` bytes), failures
//!   and stalls are written by `lowmem::report` (a stack buffer and `write(2)`), the callback
//!   lists are allocated fallibly (at `init`, else on first use; `call_rcu` without them takes
//!   its no-memory fallback) and the stall timeout is read from the environment at `init`.
//!   `rcu_barrier`'s shared state (`BarrierWait`) lives on its caller's stack: the barrier
//!   callbacks point at it, the caller returns only once `remaining` is 0, and a callback reads
//!   the waiter's handle before its decrement and nothing of it after; an unwind out of the
//!   wait with callbacks still queued aborts (`BarrierFrame`) rather than free the frame under
//!   them. A closure too large to store inline is boxed fallibly (`Callback::try_new`; no
//!   memory: the no-memory fallback). Handing batches to an invoker moves them into its inbox
//!   without allocating when the inbox is empty, grows it fallibly otherwise, and with no memory
//!   waits for the invoker to empty it (running them here would overtake older callbacks of the
//!   list); the invokers are allocated fallibly (none: the worker invokes). A thread's first
//!   guard registers without aborting: its record is allocated fallibly, else taken from the
//!   spares `init` reserved (`reader::SPARE_RECORDS`), else the thread waits for a record to
//!   be given back or for memory (reported once); its name is read into a stack buffer; and
//!   the exit hook is touched only if `EXIT_HOOK_HEADROOM` bytes can be allocated first (the
//!   C library aborts when it cannot allocate its record of the destructor). Without the hook
//!   the thread keeps its record for good, as during thread-local teardown: quiescent once its
//!   guards are dropped, scanned, never reused; its signal handlers use it like any registered
//!   thread's. Still allocating: the recovery of a `fork()` child's orphaned batches.

mod fork;
mod invoker;
mod registry;
mod state;
mod worker;

use core::marker::PhantomData;

use crate::callback::{BarrierWait, Callback, EnqueueError};
use crate::gp::Domain;
use crate::primitive::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use crate::primitive::thread;
use crate::reader::Record;
use crate::seq::GpSeq;
use crate::sys::membarrier::Mode;

use registry::{exited_section_ended, LOCAL};
pub use state::{enter_no_barrier, no_barrier_reason, NoBarrierScope};
use state::{try_lists, DOMAIN, INVOKED, IN_CALLBACK, LISTS};
use worker::{stand_in_for_worker, wake_worker, IDLE, POLL_REQUEST, URGENT, WORKER};

/// `init`'s progress: 0 before it, the process id of the process whose thread runs it, or
/// [`INIT_DONE`] (`init_slow`).
static INIT: AtomicU64 = AtomicU64::new(0);
/// `INIT` once the initialisation is done (no process id).
const INIT_DONE: u64 = u64::MAX;
/// Callbacks a `call_rcu` caller ran itself after a grace period because no memory could be had.
static INLINE_FALLBACK: AtomicU64 = AtomicU64::new(0);

/// The process-wide domain (initialised), for crates that drive grace periods through the raw
/// API (`kfree-batch`).
pub fn global_domain() -> &'static Domain {
    init();
    &DOMAIN
}

/// The writer side of the asymmetric barrier in the process's mode: `membarrier
/// (PRIVATE_EXPEDITED)` when readers use compiler fences, a `fence(SeqCst)` otherwise. For other
/// crates' asymmetric protocols that pair it with a light barrier on their fast path (the slab
/// thread caches), so that the process has one implementation of it.
pub fn heavy_barrier() {
    init();
    crate::sys::membarrier::heavy(DOMAIN.mode());
}

/// Decides the barrier mode and installs the fork handlers (idempotent).
#[inline]
pub(crate) fn init() {
    // Acquire pairs with the Release store of `INIT_DONE`: the mode and the lists are set.
    if INIT.load(Ordering::Acquire) != INIT_DONE {
        init_slow();
    }
}

/// The initialisation itself, run by one thread; the others wait for it. Not a `std::sync::Once`:
/// a `fork()` while another thread runs it would leave the child's copy "running" for a thread
/// the child does not have, and every later use of the engine in the child would wait forever.
/// The runner's process id marks it instead: a fork child finds its parent's id there and runs
/// the steps again (each is idempotent; the fork handlers are registered once, `fork.rs`).
#[cold]
#[inline(never)]
fn init_slow() {
    // SAFETY: getpid has no preconditions.
    let me = u64::from(unsafe { libc::getpid() } as u32);
    loop {
        // Acquire (load and CAS): as in `init`; a runner that takes over a fork child's stale
        // mark needs nothing from the parent's partial run (the steps are idempotent).
        let cur = INIT.load(Ordering::Acquire);
        if cur == INIT_DONE {
            return;
        }
        if cur == me {
            if RUNNING_INIT.with(|r| r.get()) {
                // A signal handler interrupted this very thread's run: waiting would wait for
                // itself (the whole process then waits behind it).
                panic!(
                    "rcu-core: RCU used in a signal handler that interrupted this thread's \
                     initialisation of the engine; use RCU once (or call rcu_read_lock()) on \
                     this thread before its signal handlers do"
                );
            }
            // Another thread of this process runs it.
            std::thread::sleep(std::time::Duration::from_micros(50));
            continue;
        }
        // Not started (0), or started by the parent of this fork child (another process id):
        // ours to run.
        if INIT
            .compare_exchange(cur, me, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
        {
            break;
        }
    }
    RUNNING_INIT.with(|r| r.set(true));
    DOMAIN.set_mode(crate::sys::membarrier::probe());
    fork::install_fork_handlers();
    // Allocated here, where the caller can afford it, rather than on a later path that may
    // run short of memory (both retry fallibly when they find nothing).
    let _ = try_lists();
    DOMAIN.reserve_records(); // for threads that register with no memory
    let _ = crate::stall::stall_timeout(); // reads the environment once
                                           // Release pairs with the Acquire loads in `init` and `init_slow`.
    INIT.store(INIT_DONE, Ordering::Release);
    RUNNING_INIT.with(|r| r.set(false));
}

crate::primitive::rcu_thread_local! {
    /// Set while this thread runs `init_slow`'s steps: a signal handler on it that needs the
    /// engine would otherwise wait for its own interrupted run forever.
    static RUNNING_INIT: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// This thread's record, registering on first use.
#[inline(always)]
pub(crate) fn local_record() -> &'static Record {
    let p = LOCAL.with(|c| c.get());
    if p.is_null() {
        return register_slow();
    }
    // SAFETY: records are never freed (reader Invariant 2) and this one is owned by this thread.
    unsafe { &*p }
}

#[cold]
#[inline(never)]
fn register_slow() -> &'static Record {
    init();
    registry::register()
}

/// Whether the calling thread is inside a read-side critical section.
#[inline]
pub fn rcu_read_lock_held() -> bool {
    let p = LOCAL.with(|c| c.get());
    // SAFETY: as in `local_record`.
    !p.is_null() && unsafe { &*p }.nesting() != 0
}

/// Whether the calling thread may wait for RCU here: call [`rcu_barrier`], or anything built on
/// it (destroying a `SLAB_TYPESAFE_BY_RCU` slab cache), without it waiting for itself.
///
/// False inside a read-side critical section (a grace period would wait for the caller's own
/// reader), on a thread that runs `call_rcu` callbacks (`rcu_barrier` would wait for the
/// callback that is running; and a callback that blocks holds up every later callback of its
/// CPU), and inside a scope where a layer above declared that a callback may be waiting for the
/// caller (`raw::enter_no_barrier`: kfree-batch runs the destructors of the objects it frees in
/// one, since a callback may be waiting in `kvfree_rcu_barrier` for that very free). Code that
/// must wait can check this first and, where it returns false, defer the work to another thread
/// or report the misuse before it has changed anything. Lock-free, no allocation.
///
/// `synchronize_rcu` needs less: only to be outside a read-side critical section (it waits for
/// readers, never for callbacks), so it is also allowed in callbacks and in those scopes.
///
/// ```
/// assert!(rcu_core::may_block());
/// let g = rcu_core::rcu_read_lock();
/// assert!(!rcu_core::may_block());
/// drop(g);
/// assert!(rcu_core::may_block());
/// ```
#[inline]
pub fn may_block() -> bool {
    !rcu_read_lock_held() && !IN_CALLBACK.with(|c| c.get()) && no_barrier_reason().is_none()
}

/// Panics if a blocking call is made where it would wait for itself.
#[track_caller]
pub(crate) fn assert_may_block(what: &str) {
    let p = LOCAL.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: as in `local_record`.
        let n = unsafe { &*p }.nesting();
        if n != 0 {
            misuse_in_reader(what, n);
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn misuse_in_reader(what: &str, nesting: u64) -> ! {
    panic!(
        "{what}() called inside an RCU read-side critical section (nesting depth {nesting}): it \
         would wait for the caller's own reader forever; drop every RcuReadGuard first"
    );
}

/// A guard for a read-side critical section; see [`rcu_read_lock`].
///
/// Not `Send`: the critical section belongs to the thread that entered it.
#[must_use = "the critical section ends when the guard is dropped"]
pub struct RcuReadGuard {
    rec: &'static Record,
    _not_send: PhantomData<*mut ()>,
}

impl core::fmt::Debug for RcuReadGuard {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RcuReadGuard")
            .field("nesting", &self.rec.nesting())
            .finish()
    }
}

/// Enters a read-side critical section; it lasts until the guard is dropped.
///
/// Objects reached through RCU-protected pointers stay valid until then. Guards nest; the
/// outermost one costs two plain stores and a compiler fence (with `membarrier`), no atomic
/// read-modify-write and no shared cache-line write. A registered thread may also take guards in
/// a signal handler.
///
/// ```
/// let guard = rcu_core::rcu_read_lock();
/// assert!(rcu_core::rcu_read_lock_held());
/// drop(guard);
/// assert!(!rcu_core::rcu_read_lock_held());
/// ```
#[inline]
pub fn rcu_read_lock() -> RcuReadGuard {
    let rec = local_record();
    DOMAIN.read_lock(rec);
    RcuReadGuard {
        rec,
        _not_send: PhantomData,
    }
}

impl Drop for RcuReadGuard {
    #[inline]
    fn drop(&mut self) {
        // `unlock` tells exactly one drop (the outermost unlock, never a signal handler's guard
        // nested in it) that it ended an exited thread's section (`registry` module docs, "Exit
        // inside a section").
        if crate::reader::unlock(self.rec) {
            exited_section_ended(self.rec);
        }
    }
}

/// Waits until every read-side critical section that began before the call has ended.
///
/// Concurrent callers share grace periods. Sleeps (after a short spin) while a reader holds it up.
///
/// # Panics
/// Inside a read-side critical section (it would wait for itself): the message says
/// "read-side critical section".
#[track_caller]
pub fn synchronize_rcu() {
    assert_may_block("synchronize_rcu");
    init();
    DOMAIN.synchronize(false);
}

/// Like [`synchronize_rcu`], minimising latency: never sleeps while waiting for readers (spins,
/// then yields).
///
/// # Panics
/// Inside a read-side critical section.
#[track_caller]
pub fn synchronize_rcu_expedited() {
    assert_may_block("synchronize_rcu_expedited");
    init();
    DOMAIN.synchronize(true);
}

/// A grace-period cookie from the polled API.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GpState(pub(crate) GpSeq);

impl GpState {
    /// The sequence value this state waits for.
    pub fn seq(self) -> GpSeq {
        self.0
    }
}

/// A cookie that polls true once a full grace period has passed after this call. Lock-free, no
/// allocation; does not start a grace period (see [`start_poll_synchronize_rcu`]).
#[inline]
pub fn get_state_synchronize_rcu() -> GpState {
    GpState(DOMAIN.get_state())
}

/// Like [`get_state_synchronize_rcu`], and makes sure the grace period will happen without anyone
/// waiting for it: the callback worker thread drives it.
///
/// Lock-free and allocation-free while the worker thread runs. When it does not (the first use
/// of the engine in a process or in a `fork()` child, if no `call_rcu` started it), this call
/// starts it, which allocates and creates a thread; call it (or `call_rcu`) once early where
/// later calls must not allocate. If the thread cannot be created, the grace period is driven by
/// [`poll_state_synchronize_rcu`] (without waiting) and [`cond_synchronize_rcu`] instead.
pub fn start_poll_synchronize_rcu() -> GpState {
    init();
    let s = DOMAIN.get_state();
    let mut cur = POLL_REQUEST.load(Ordering::Relaxed);
    while GpSeq(cur).before(s) {
        match POLL_REQUEST.compare_exchange_weak(cur, s.raw(), Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => break,
            Err(c) => cur = c,
        }
    }
    // Pairs with the worker's fence between `IDLE = true` and its re-check of POLL_REQUEST.
    fence(Ordering::SeqCst);
    // Acquire pairs with the Release store of RUNNING in `BackgroundThread::start` (the handle is
    // set).
    if WORKER.is_running() {
        wake_worker();
    } else {
        // It scans POLL_REQUEST when it starts.
        ensure_worker_backoff();
    }
    GpState(s)
}

/// Whether the grace period of `state` is over. Lock-free, no allocation.
///
/// Normally the worker thread drives the grace period that [`start_poll_synchronize_rcu`]
/// asked for. While no worker runs (its thread could not be created), a poll of such a state
/// tries to complete the grace period itself: it runs grace periods only as long as no reader
/// holds them up (one heavy barrier each), never waits for a reader, and gives up at once if
/// another thread runs one.
#[inline]
pub fn poll_state_synchronize_rcu(state: GpState) -> bool {
    DOMAIN.poll(state.0) || poll_without_worker(state.0)
}

/// The part of [`poll_state_synchronize_rcu`] for a state not done yet.
#[cold]
fn poll_without_worker(s: GpSeq) -> bool {
    // Relaxed: a hint; a worker that starts concurrently drives the request as well, and both
    // runners serialise on the grace-period lock.
    if !WORKER.is_stopped() || GpSeq(POLL_REQUEST.load(Ordering::Relaxed)).before(s) {
        return false; // the worker drives it, or nobody asked for it (get_state)
    }
    DOMAIN.try_advance(s)
}

/// Waits for the grace period of `state` unless it is already over.
///
/// # Panics
/// Inside a read-side critical section when it would have to wait.
#[track_caller]
pub fn cond_synchronize_rcu(state: GpState) {
    if DOMAIN.poll(state.0) {
        return;
    }
    assert_may_block("cond_synchronize_rcu");
    init();
    DOMAIN.wait_for(state.0, false);
}

/// Runs `f` after a grace period, on the callback invoker of the CPU the caller runs on (a
/// thread bound to that CPU, like the kernel's `rcuc/N`: memory the callback frees goes back to
/// the allocator where it was allocated). Callbacks queued on one CPU run in queue order.
///
/// Closures of up to two words are stored without allocation; larger ones are boxed, and with
/// no memory for the box the call takes the no-memory path below. Callable inside a read-side
/// critical section. `f` must not call `rcu_barrier` (it would wait for itself: it panics).
///
/// # Panics
/// Inside a read-side critical section when the callback cannot be queued (no memory, or the
/// lists are at their bound because no grace period can end): outside one the caller would wait
/// for a grace period and run `f` itself. `f` is then leaked: neither run nor dropped.
///
/// ```
/// let data = Box::new(42u64);
/// rcu_core::call_rcu(move || drop(data));
/// rcu_core::rcu_barrier(); // the callback has run
/// ```
pub fn call_rcu<F: FnOnce() + Send + 'static>(f: F) {
    // A closure too large to store inline is boxed fallibly: with no memory it takes the same
    // fallback as a callback that cannot be queued.
    match Callback::try_new(f) {
        Ok(cb) => enqueue(cb),
        Err(f) => no_memory(f),
    }
}

/// [`call_rcu`] that never waits and never panics: `Err(f)` gives the closure back when it
/// cannot be queued (no memory for its box or its place on a list, or the lists are at their
/// bound), where `call_rcu` would wait for a grace period and run it itself. For callers that
/// must not wait (they may hold locks a reader waits for) and have another way out.
pub fn try_call_rcu<F: FnOnce() + Send + 'static>(f: F) -> Result<(), F> {
    let cb = Callback::try_new(f)?;
    // SAFETY: `cb` was made from an `F` just above.
    try_enqueue(cb).map_err(|back| unsafe { back.into_closure::<F>() })
}

/// Runs `f(data)` after a grace period, without allocating (on an invoker thread, as
/// [`call_rcu`]).
///
/// # Safety
/// `f(data)` must be sound to call exactly once, from another thread, at any time after a grace
/// period (for example `data` is a `Box::into_raw` of a `Send` value and `f` frees it).
pub unsafe fn call_rcu_raw(f: unsafe fn(*mut ()), data: *mut ()) {
    enqueue(Callback::Raw { call: f, data });
}

fn enqueue(cb: Callback) {
    if let Err(back) = try_enqueue(cb) {
        no_memory(move || back.invoke());
    }
}

/// Queues `cb` on a list, or gives it back when no list has room for it.
fn try_enqueue(cb: Callback) -> Result<(), Callback> {
    let Some(lists) = try_lists() else {
        return Err(cb);
    };
    let n = lists.len();
    // No `%` on this path (two integer divisions per call before): `current_cpu() <
    // possible_cpus() == n`, and the branch keeps it safe regardless.
    let cpu = crate::cpu::current_cpu();
    let home = if cpu < n { cpu } else { cpu % n };
    let mut cb = cb;
    for i in 0..n.min(4) {
        let j = home + i; // < 2n
        match lists[if j < n { j } else { j - n }].try_enqueue(cb) {
            Ok(()) => {
                enqueued();
                return Ok(());
            }
            Err(EnqueueError::Busy(back)) => cb = back,
            Err(EnqueueError::NoMemory(back)) => return Err(back),
        }
    }
    lists[home].enqueue(cb)?;
    enqueued();
    Ok(())
}

/// `call_rcu` could not queue the callback (no memory, or the list is full because the worker is
/// behind): the caller waits for a grace period and runs it itself — never an abort, never an
/// early call. Inside a reader it cannot wait: it panics, and leaks the callback rather than let
/// the unwind drop its captures (readers may still use what the callback was to free).
#[cold]
#[inline(never)]
fn no_memory<F: FnOnce()>(cb: F) {
    let p = LOCAL.with(|c| c.get());
    // SAFETY: as in `local_record`.
    if !p.is_null() && unsafe { &*p }.nesting() != 0 {
        // Leaked: dropping a boxed closure would drop its captures before any grace period.
        core::mem::forget(cb);
        panic!(
            "call_rcu: no memory to queue a callback inside an RCU read-side critical section; \
             waiting for a grace period here would wait for this reader forever (queue it after \
             the guard is dropped, or free memory first)"
        );
    }
    init();
    ensure_worker_or_wake();
    DOMAIN.synchronize(false);
    INLINE_FALLBACK.fetch_add(1, Ordering::Relaxed);
    cb();
}

#[inline]
fn ensure_worker_or_wake() {
    // Acquire pairs with the Release store of RUNNING in `BackgroundThread::start` (the handle is
    // set).
    if !WORKER.is_running() {
        ensure_worker();
    } else {
        wake_worker();
    }
}

/// After a callback is on a list: make sure the worker will see it.
#[inline]
fn enqueued() {
    if !WORKER.is_running() {
        ensure_worker_backoff();
    } else if IDLE.load(Ordering::Relaxed) {
        wake_worker();
    }
}

/// Stops callback invocation: returns once no callback thread runs a callback (the caller's own,
/// if it is a callback that calls this, excepted), and none starts one until
/// [`resume_callbacks`]. For liburcu's `call_rcu_before_fork()`: a `fork()` made while paused
/// finds every callback thread between two callbacks, so the child runs each callback the parent
/// had not started exactly once (without it, one that a thread had taken but not yet entered
/// runs in neither copy of the child's memory). Pauses nest. A callback that waits for the
/// caller while paused waits forever, and so does `rcu_barrier` in the paused process.
#[cfg(not(rcu_loom))]
pub fn pause_callbacks() {
    crate::callback::pause_invocation();
    worker::WORKER_HELD.wait_idle();
    invoker::wait_idle();
}

/// Ends one [`pause_callbacks`] (in the parent after a `fork()`, or in the child); does nothing
/// when no pause is in effect.
#[cfg(not(rcu_loom))]
pub fn resume_callbacks() {
    crate::callback::resume_invocation();
}

/// Waits until every callback queued (by any thread) before this call has run.
///
/// On an idle engine this returns at once; with pending callbacks it takes about one grace
/// period after they are ready. If the callback worker thread cannot be created (thread limit,
/// no memory), the caller runs the grace periods and the callbacks itself, retrying the thread
/// meanwhile.
///
/// # Panics
/// Inside a read-side critical section, from a `call_rcu` callback, or inside a scope where a
/// callback may be waiting for the caller (see [`may_block`]): all would wait forever.
#[track_caller]
pub fn rcu_barrier() {
    assert_may_block("rcu_barrier");
    if IN_CALLBACK.with(|c| c.get()) {
        panic!("rcu_barrier() called from a call_rcu callback: it would wait for itself forever");
    }
    if let Some(why) = no_barrier_reason() {
        panic!(
            "rcu_barrier() called {why}: a call_rcu callback may be waiting for the code that \
             runs this, and the barrier would wait for that callback forever; wait for a grace \
             period (synchronize_rcu) or defer the barrier to another thread"
        );
    }
    let Some(lists) = LISTS.get() else {
        return; // nothing was ever queued
    };
    // The worker's passes below (and the invoker threads they start) run after `init`.
    init();
    // On the stack: no allocation, since a barrier may be what frees memory. The callbacks
    // entrained below point at it, so it must not go away before `remaining` is 0.
    let barrier = BarrierWait {
        remaining: AtomicUsize::new(1),
        waiter: std::thread::current(),
    };
    let frame = BarrierFrame(&barrier);
    let mut entrained = false;
    for l in lists.iter() {
        // Entraining only fails when no memory can be had; the worker frees memory as it runs
        // callbacks, and we are outside any reader, so wait and retry. Meanwhile the list's
        // callbacks that were queued at the first failure may all finish (it needs no memory):
        // that is what the barrier callback would have waited for, so it ends the wait too —
        // a list that never empties (self-reposting callbacks) with no memory cannot hang it.
        let mut tries = 0u32;
        let mut target = None;
        loop {
            match l.entrain(&barrier) {
                Ok(e) => {
                    entrained |= e;
                    break;
                }
                Err(t) => {
                    let t = *target.get_or_insert(t);
                    if l.retired_reaches(t) {
                        break;
                    }
                    tries += 1;
                    ensure_worker_or_wake();
                    // No worker thread (it could not be created): do its work here, as the
                    // wait below does, or nobody runs what the target waits for.
                    if !WORKER.is_running() && stand_in_for_worker(lists) {
                        continue;
                    }
                    std::thread::sleep(std::time::Duration::from_micros(100 << tries.min(6)));
                }
            }
        }
    }
    if !entrained {
        core::mem::forget(frame); // no callback points at `barrier`
        return;
    }
    URGENT.fetch_add(1, Ordering::Relaxed);
    // Acquire pairs with the Release store of RUNNING in `BackgroundThread::start`.
    if !WORKER.is_running() {
        ensure_worker();
    }
    wake_worker();
    // The worker may be in its batching delay (not idle): cut it short.
    WORKER.unpark();
    let _urgent = UrgentGuard;
    // Drop our own count; the last barrier callback unparks us.
    if barrier.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        return;
    }
    let mut nap = std::time::Duration::from_millis(1);
    // Acquire pairs with the Release decrement in the barrier callbacks.
    while barrier.remaining.load(Ordering::Acquire) != 0 {
        // Acquire pairs with the Release store of RUNNING in `BackgroundThread::start`.
        if WORKER.is_running() {
            thread::park();
            continue;
        }
        // No worker (its thread could not be created, or one is being started): try again,
        // and meanwhile do its work here, so that the barrier never waits for a thread that
        // may never exist.
        ensure_worker();
        if WORKER.is_running() {
            wake_worker();
            WORKER.unpark();
        } else if stand_in_for_worker(lists) {
            nap = std::time::Duration::from_millis(1);
        } else {
            // Another thread starts the worker or stands in for it, or what is left runs on an
            // invoker.
            thread::park_timeout(nap);
            nap = (nap * 2).min(std::time::Duration::from_millis(50));
        }
    }
    // Callbacks queued while we stood in (their `call_rcu` saw the worker "starting") need a
    // worker after we return.
    if WORKER.is_stopped() {
        ensure_worker_backoff();
    }
}

/// Keeps `rcu_barrier`'s stack frame (its `BarrierWait`) from going away while barrier
/// callbacks point at it: dropped with `remaining` not 0 only by an unwind out of the wait,
/// which must not free the frame under those callbacks, so it aborts.
struct BarrierFrame<'a>(&'a BarrierWait);

impl Drop for BarrierFrame<'_> {
    fn drop(&mut self) {
        // Acquire: as the wait loop's load (pairs with the callbacks' Release decrements).
        if self.0.remaining.load(Ordering::Acquire) != 0 {
            crate::lowmem::report(format_args!(
                "rcu: rcu_barrier unwound while its barrier callbacks were queued; aborting \
                 (they point into its stack frame)"
            ));
            std::process::abort();
        }
    }
}

/// Ends an `rcu_barrier`'s urgency when it returns (or unwinds).
struct UrgentGuard;
impl Drop for UrgentGuard {
    fn drop(&mut self) {
        URGENT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`ensure_worker`], unless a start failed less than `worker::WORKER_RETRY_NS` ago (for
/// `call_rcu` and `start_poll_synchronize_rcu`, which would otherwise try on every call).
#[cold]
fn ensure_worker_backoff() {
    // Relaxed (in `may_retry`): a back-off hint.
    if WORKER.may_retry() {
        ensure_worker();
    }
}

/// Starts the worker if it is not running (first use, or in a `fork()` child), after `init`.
#[cold]
fn ensure_worker() {
    init();
    worker::start();
}

/// Engine statistics (see [`stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpStats {
    /// Grace periods completed.
    pub grace_periods: u64,
    /// Heavy barriers (membarrier calls or writer fences) issued by grace periods.
    pub heavy_barriers: u64,
    /// Callbacks queued with `call_rcu`/`call_rcu_raw`.
    pub callbacks_queued: u64,
    /// Callbacks invoked (excluding `rcu_barrier`'s own), by the worker or by a caller.
    pub callbacks_invoked: u64,
    /// Callbacks a `call_rcu` caller ran itself after waiting for a grace period, because no
    /// memory could be had to queue them (included in `callbacks_invoked`).
    pub callbacks_inline_fallback: u64,
    /// Reader records (threads that ever took a guard, minus reuse).
    pub reader_records: usize,
    /// The barrier mode in force.
    pub mode: Mode,
}

/// A snapshot of the engine's counters.
pub fn stats() -> GpStats {
    init();
    GpStats {
        grace_periods: DOMAIN.grace_periods.load(Ordering::Relaxed),
        heavy_barriers: DOMAIN.heavy_barriers.load(Ordering::Relaxed),
        callbacks_queued: LISTS.get().map_or(0, |ls| {
            ls.iter()
                .map(|l| l.queued.load(Ordering::Relaxed))
                .sum::<u64>()
        }) + INLINE_FALLBACK.load(Ordering::Relaxed),
        callbacks_invoked: INVOKED.load(Ordering::Relaxed)
            + INLINE_FALLBACK.load(Ordering::Relaxed),
        callbacks_inline_fallback: INLINE_FALLBACK.load(Ordering::Relaxed),
        reader_records: DOMAIN.registry.len(),
        mode: DOMAIN.mode(),
    }
}

/// The barrier mode the process uses (decided at first use).
pub fn barrier_mode() -> Mode {
    init();
    DOMAIN.mode()
}
