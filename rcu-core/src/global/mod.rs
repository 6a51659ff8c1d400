//! The process-wide engine behind the free functions: thread registration, the callback worker,
//! `rcu_barrier`, the polled API, `fork()` handling and misuse checks.
//!
//! # Implementation
//!
//! * **Registration.** A thread's first guard claims a record ([`crate::reader::Registry`]) and
//!   caches it in a `const`-initialised thread-local without destructor (one `fs:`-relative load
//!   on the fast path). A second thread-local with a destructor (the *exit hook*) gives the
//!   record back at thread exit. A thread that takes its first guard while its thread-locals are
//!   being destroyed, or with no heap to register the hook ("Short of memory"), keeps its
//!   record for good (it is then scanned, quiescent, forever; it cannot be reused).
//! * **Exit inside a section.** A guard that was never dropped (leaked, or stored in a
//!   thread-local whose destructor runs after the exit hook) keeps its section open: references
//!   read under a leaked guard are `&'static` and may have left the thread. So the exit hook,
//!   finding nesting above zero, reports the exit once (`StallKind::ExitedInCriticalSection`),
//!   marks the record `exited` and its word (the `EXITED` mark added to the nesting field: the
//!   snapshot and the depth stay as they are) and leaves it owned, with the thread's `LOCAL` as
//!   it is (reader Invariant 5). Grace periods wait for it like for any reader, and the stall
//!   reporter names it while they do. A guard dropped later by another thread-local destructor
//!   unlocks its own record (never another thread's: the record was not handed out), and the
//!   outermost such unlock gives the record back. A leaked guard's section never ends: grace
//!   periods (and the callbacks waiting for them) wait forever, as crossbeam-epoch does for a
//!   leaked guard — never an abort, since storing a guard in a thread-local is legal.
//!
//!   *Exactly one give-back, with signal handlers.* A registered thread's signal handlers may
//!   take guards, also while that late destructor drops the last one. The outermost unlock
//!   (`reader::unlock`) is: U1 load the word (nesting field `EXITED + 1`); U2 clear `exited`;
//!   U3 store `word = 0` (Release: ends the section and removes the mark in one store); then
//!   [`exited_section_ended`]: L1 `LOCAL = null`; a signal fence; R1 `owned = false`
//!   (Release, `Registry::release`); nothing touches the record after R1. A handler that takes
//!   and drops a guard at each boundary:
//!   - before U3: the word is marked with depth 1, so its guard nests (reader Invariant 4) and
//!     its unlock, finding `EXITED + 2`, is not outermost: it gives nothing back;
//!   - between U3 and L1: the word is 0 and unmarked, and the record is still this thread's:
//!     the handler's outermost lock and unlock use it like any section of this thread and find
//!     nesting 1, so they give nothing back;
//!   - between L1 and R1, or after R1: `LOCAL` is null, so the handler never sees the record,
//!     owned or free; its guard registers the thread anew, like a guard on any thread after its
//!     exit hook ran: the new record (possibly this one again once R1 made it free, then claimed
//!     by the CAS like any free record) is kept for good, thread-local teardown being under way.
//!
//!   So the record is given back once, by the interrupted drop, and no thread ever locks a record
//!   it does not own. The decision rests on the word alone, which only single stores change, so
//!   no handler can compete for it (reader Invariant 6); and the fast path's outermost unlock
//!   tests only the word it loaded. One limit, shared with every thread whose exit hook has run:
//!   a guard taken in a handler *after L1* registers, which may allocate (a new record, the
//!   thread's name) and is not async-signal-safe; the guarantee for handlers is for registered
//!   threads.
//! * **Worker.** One thread (`rcu-cb-worker`), started by the first `call_rcu`,
//!   `start_poll_synchronize_rcu` or `rcu_barrier` that finds it not running (in a process, or in
//!   a `fork()` child). Loop: harvest each list with pending callbacks, hand what is ready to
//!   that list's invoker (a thread bound to the list's CPU, `invoker.rs`; the worker invokes
//!   them itself if no invoker can run, after the batches still waiting in that invoker's
//!   inbox), drive the newest waited-for snapshot with [`Domain::wait_for`], and park when no
//!   list holds callbacks. Callbacks accumulate for [`GP_BATCH_DELAY`] before a grace period is
//!   started for them, unless someone waits (`rcu_barrier`, a poll request) or many are queued.
//!   A list's ready batches are harvested straight into `WORKER_HELD` ([`Held`]), where they
//!   stay until handed over or finished, so that a `fork()` child can find them.
//! * **No worker thread.** If the thread cannot be created (`RLIMIT_NPROC`, no memory), the
//!   failure is reported once; `call_rcu` and `start_poll_synchronize_rcu` retry at most every
//!   [`WORKER_RETRY_NS`], `rcu_barrier` on every round of its wait. Meanwhile an `rcu_barrier`
//!   caller does the worker's passes itself ([`stand_in_for_worker`]): the `NONE → STARTING` CAS
//!   of the worker state is the token that makes one thread at a time do them, and its
//!   Acquire/Release pair orders one holder's work before the next one's (and before a worker
//!   thread started later). `poll_state_synchronize_rcu` of a requested state drives grace
//!   periods with [`Domain::try_advance`] (never waiting for a reader) while the state is `NONE`;
//!   `cond_synchronize_rcu` waits for its own. So nothing waits for a thread that may never
//!   exist.
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
//! * **Idle protocol.** The worker stores `IDLE = true`, then re-checks every list *under its lock*
//!   (callbacks still in its segments; those handed to invokers are theirs)
//!   and the poll requests, then parks. An enqueuer checks `IDLE` after unlocking its list: if the
//!   worker's check of that list came first, the enqueuer's lock acquisition made `IDLE = true`
//!   visible; if it came second, the worker saw the callback. Polled requests use a `SeqCst` fence
//!   pair instead (Dekker).
//! * **Whose snapshots.** The grace periods the worker drives end snapshots taken by the worker at
//!   harvest, which cover the enqueuers' removals through the list locks (`callback.rs`), or by
//!   a `start_poll_synchronize_rcu` caller itself, after its removals; none rests on a
//!   read-before edge alone (`gp.rs`, "Covering another thread's retire").
//! * **fork().** `pthread_atfork` handlers (registered once, no allocation in them): *prepare*
//!   takes, in this order, the held-batches locks (worker's, then each invoker's), every callback
//!   list's lock and every invoker inbox's lock — the order in which the worker and the invokers
//!   nest them; none is held across a wait or a callback, so this cannot deadlock; *parent*
//!   releases them; *child* resets them, clears the records of threads that do not exist in the
//!   child (except those of threads that exited inside a section: their sections stay open,
//!   the forking thread may hold references read under them, see below), resets the
//!   grace-period lock and its count of waiting callers (`nwait`) and the
//!   count of urgent `rcu_barrier` callers, marks the worker and the invokers as not running
//!   (the next use restarts them) and marks the batches their threads held as orphaned. What a
//!   child keeps: every callback queued in the parent and not started there before the fork
//!   runs in the child too (each process frees its own copy), in its list's order: those still
//!   in a list, in an invoker's inbox, or held by the worker or an invoker (the worker's next
//!   pass puts orphaned batches back into the inbox, an invoker's in front, the worker's
//!   behind). A callback that was running in the parent at the moment of the fork is not run in
//!   the child (its effects up to that moment are in the child's memory, as for any other
//!   thread of the parent); neither are those that had already run. If the forking thread is
//!   itself a callback thread (a callback called `fork()`), it keeps its role and its batch in
//!   the child.
//!
//!   *Exited sections in the child: never early.* A record marked `exited` has a guard that was
//!   leaked or sits in a thread-local destroyed after the exit hook; the child cannot tell which
//!   (both leave nesting above zero and `exited` set, and nothing counts guards). A leaked
//!   guard's references are `&'static` and may have reached the forking thread before the fork,
//!   so the child keeps every such section open, forever, as the parent does for a leaked guard.
//!   The price: if the process forks while a thread that exited inside a section has not yet
//!   dropped its thread-local guard, the section ends in the parent a moment later but never in
//!   the child. Every grace period of that child waits (`synchronize_rcu`, `rcu_barrier`, the
//!   worker's callbacks, the polled API never reports it done), and the stall reporter names the
//!   exited thread (`ReaderStall`, its name and nesting). Ending it would need to know that no
//!   leaked guard remains, which no state of the record shows; waiting too long is the failure
//!   mode that cannot free memory still in use.

use core::cell::Cell;
use core::marker::PhantomData;
use std::sync::{Once, OnceLock};

use crate::callback::{BarrierWait, Callback, CbList, EnqueueError, Held};
use crate::gp::Domain;
use crate::primitive::cell::UnsafeCell;
use crate::primitive::rcu_thread_local;
use crate::primitive::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use crate::primitive::thread;
use crate::reader::Record;
use crate::seq::GpSeq;
use crate::stall::{StallKind, StallReport};
use crate::sys::membarrier::Mode;
use crate::util::CachePadded;

/// The global domain.
static DOMAIN: Domain = Domain::new_const();
/// Decides the barrier mode and installs the fork handlers, once.
static INIT: Once = Once::new();
/// Per-CPU callback lists (allocated once, never freed: lock-free paths reach them).
static LISTS: OnceLock<Box<[CachePadded<CbList>]>> = OnceLock::new();

/// Worker state: `NONE` → `STARTING` (one thread won the CAS) → `RUNNING`.
static WORKER_STATE: AtomicU32 = AtomicU32::new(WORKER_NONE);
const WORKER_NONE: u32 = 0;
const WORKER_STARTING: u32 = 1;
const WORKER_RUNNING: u32 = 2;
/// The worker's handle; written by the starter before the Release store of `RUNNING`, read by
/// wakers after an Acquire load of `RUNNING`.
static WORKER_THREAD: WorkerSlot = WorkerSlot(UnsafeCell::new(None));
/// Set by the worker right before it parks (idle protocol in the module docs).
static IDLE: AtomicBool = AtomicBool::new(false);
/// The batches the worker (or an `rcu_barrier` caller standing in for it) harvested and has not
/// handed over or finished yet, where the `fork()` child handler can reach them.
static WORKER_HELD: Held = Held::new();
/// Set by the `fork()` child handler when it found callbacks of the parent's callback threads
/// (`Held`) to recover; the next worker pass puts them back in order.
static ORPHANS: AtomicBool = AtomicBool::new(false);
/// A failed worker start was reported (cleared when one succeeds).
static WORKER_REPORTED: AtomicBool = AtomicBool::new(false);
/// After a failed worker start: `call_rcu` and `start_poll_synchronize_rcu` do not try again
/// before this time (`monotonic_ns`); `rcu_barrier` always does.
static WORKER_RETRY_AT_NS: AtomicU64 = AtomicU64::new(0);
/// Back-off between worker start attempts made by `call_rcu` / `start_poll_synchronize_rcu`.
const WORKER_RETRY_NS: u64 = 10_000_000;
/// Highest snapshot asked for by `start_poll_synchronize_rcu` (raw `GpSeq`).
static POLL_REQUEST: AtomicU64 = AtomicU64::new(0);
/// Callbacks invoked (statistics; queued counts live in the lists).
static INVOKED: AtomicU64 = AtomicU64::new(0);
/// Callbacks a `call_rcu` caller ran itself after a grace period because no memory could be had.
static INLINE_FALLBACK: AtomicU64 = AtomicU64::new(0);
/// `rcu_barrier` calls waiting right now: the worker then skips its batching delay.
static URGENT: AtomicUsize = AtomicUsize::new(0);
/// How long the worker lets callbacks accumulate before starting a grace period for them
/// (liburcu's worker naps 10 ms; the kernel batches for jiffies). Skipped when urgent.
const GP_BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(1);
/// Callbacks waiting above which the worker does not delay (bounds memory held by callbacks).
const GP_BATCH_MAX: usize = 1 << 16;

struct WorkerSlot(UnsafeCell<Option<std::thread::Thread>>);
// SAFETY: the slot is written only by the thread that won the `NONE → STARTING` CAS, before its
// Release store of `RUNNING`, and read only after an Acquire load of `RUNNING`.
unsafe impl Sync for WorkerSlot {}

rcu_thread_local! {
    /// This thread's record, or null before registration. No destructor, so always accessible.
    static LOCAL: Cell<*const Record> = const { Cell::new(core::ptr::null()) };
}
rcu_thread_local! {
    /// Gives the record back at thread exit (its destructor).
    static EXIT: ExitHook = const { ExitHook };
}
rcu_thread_local! {
    /// Set while the worker runs callbacks (misuse check for `rcu_barrier` in a callback).
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

rcu_thread_local! {
    /// Why `rcu_barrier` may not wait on this thread now (the innermost [`NoBarrierScope`]), or
    /// `None` outside every such scope.
    static NO_BARRIER: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// A scope of the calling thread in which no `call_rcu` callback may be waited for: see
/// [`enter_no_barrier`]. Ends when dropped (also by an unwind); not `Send`.
#[must_use = "the scope ends when the value is dropped"]
#[derive(Debug)]
pub struct NoBarrierScope {
    prev: Option<&'static str>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NoBarrierScope {
    fn drop(&mut self) {
        NO_BARRIER.with(|c| c.set(self.prev));
    }
}

/// Declares that, until the returned scope is dropped, the calling thread runs code that a
/// `call_rcu` callback may be waiting for (a layer above holds a lock, or runs a free, that a
/// callback may need). `rcu_barrier` would wait for that callback, and the callback for the
/// caller: so inside the scope [`may_block`] returns false (code that would call `rcu_barrier`
/// defers the work to another thread) and [`rcu_barrier`] panics, with `why` in its message
/// (written to follow "called", e.g. "from a destructor run by X"). Grace periods may still be
/// waited for: `synchronize_rcu` waits for readers, never for callbacks. Scopes nest; lock-free,
/// no allocation.
pub fn enter_no_barrier(why: &'static str) -> NoBarrierScope {
    NoBarrierScope {
        prev: NO_BARRIER.with(|c| c.replace(Some(why))),
        _not_send: PhantomData,
    }
}

/// The reason given to the innermost [`enter_no_barrier`] scope of the calling thread, if any.
pub fn no_barrier_reason() -> Option<&'static str> {
    NO_BARRIER.with(Cell::get)
}

/// Marks the calling thread as one that runs callbacks (`rcu_barrier` from it panics).
pub(crate) fn mark_callback_thread() {
    init();
    IN_CALLBACK.with(|c| c.set(true));
}

/// The counter of invoked callbacks (statistics).
pub(crate) fn invoked_counter() -> &'static AtomicU64 {
    &INVOKED
}

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
pub(crate) fn init() {
    INIT.call_once(|| {
        DOMAIN.set_mode(crate::sys::membarrier::probe());
        install_fork_handlers();
        // Allocated here, where the caller can afford it, rather than on a later path that may
        // run short of memory (both retry fallibly when they find nothing).
        let _ = try_lists();
        DOMAIN.reserve_records(); // for threads that register with no memory
        let _ = crate::stall::stall_timeout(); // reads the environment once
    });
}

/// The callback lists, allocated on first use; `None` if there is no memory for them (the
/// allocation is fallible: `call_rcu` then takes its no-memory fallback instead of aborting).
fn try_lists() -> Option<&'static [CachePadded<CbList>]> {
    if let Some(l) = LISTS.get() {
        return Some(l);
    }
    let n = crate::cpu::possible_cpus();
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.extend((0..n).map(|_| CachePadded::new(CbList::new())));
    // `into_boxed_slice` does not reallocate: the capacity is the length.
    Some(LISTS.get_or_init(|| v.into_boxed_slice()))
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
    let rec = DOMAIN.register();
    let mut name = [0u8; 17];
    rec.set_identity(crate::sys::gettid(), thread_name(&mut name));
    // Touch the exit hook so its destructor is registered; during thread-local teardown this
    // fails and the record simply stays owned (module docs). The C library aborts the process
    // if it cannot allocate its record of the destructor, so with no heap to spare the hook is
    // not touched at all, and the record stays owned the same way (module docs, "Short of
    // memory").
    if crate::lowmem::heap_headroom(EXIT_HOOK_HEADROOM) {
        let _ = EXIT.try_with(|_| ());
    }
    LOCAL.with(|c| c.set(rec));
    rec
}

/// Heap the calling thread must be able to allocate before it touches the exit hook (whose
/// first touch makes the C library allocate its record of the destructor).
const EXIT_HOOK_HEADROOM: usize = 1024;

/// The calling thread's name from the kernel (works during thread-local teardown, unlike std).
fn thread_name(buf: &mut [u8; 17]) -> Option<&str> {
    // SAFETY: PR_GET_NAME writes at most 16 bytes including the NUL into a 16-byte buffer.
    let r = unsafe {
        libc::prctl(
            libc::PR_GET_NAME,
            buf.as_mut_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(16);
    // The kernel cuts names at 15 bytes, possibly inside a character: keep the valid prefix.
    let name = &buf[..end];
    Some(match core::str::from_utf8(name) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&name[..e.valid_up_to()]).unwrap_or_default(),
    })
}

/// Destructor of `EXIT`: gives the record back, unless the thread is inside a section (module
/// docs, "Exit inside a section").
struct ExitHook;
impl Drop for ExitHook {
    fn drop(&mut self) {
        let p = LOCAL.with(|c| c.get());
        if p.is_null() {
            return;
        }
        // SAFETY: as in `local_record`.
        let rec = unsafe { &*p };
        let nesting = rec.nesting();
        if nesting != 0 {
            // The section stays open and the record owned (reader Invariant 5); `LOCAL` keeps
            // pointing at it, so later thread-local destructors nest on it. Relaxed: read only by
            // this thread (its guards' drops) and by a single-threaded fork child.
            rec.exited.store(true, Ordering::Relaxed);
            crate::reader::mark_exited(rec);
            crate::stall::report(&StallReport {
                kind: StallKind::ExitedInCriticalSection,
                thread_name: rec.name(),
                tid: rec.tid.load(Ordering::Relaxed),
                duration: std::time::Duration::ZERO,
                gp: DOMAIN.current(),
                nesting,
            });
            return;
        }
        LOCAL.with(|c| c.set(core::ptr::null()));
        DOMAIN.unregister(rec);
    }
}

/// The outermost guard of a thread that exited inside its section was dropped (by a
/// thread-local destructor after the exit hook): the section is over, give the record back.
/// Called once per such section (`reader::unlock` found the exit mark in the word). Detaches
/// `LOCAL` first, then gives the record back: a signal handler that runs in between finds no
/// record and never the freed one (module docs, "Exit inside a section").
#[cold]
#[inline(never)]
fn exited_section_ended(rec: &'static Record) {
    LOCAL.with(|c| {
        debug_assert!(
            core::ptr::eq(c.get(), rec),
            "an exited thread's record changed"
        );
        c.set(core::ptr::null());
    });
    // Signal fence: the store to `LOCAL` above is done before the record can be seen free (by
    // its next owner, or by a handler of this thread). Without it a handler could find `LOCAL`
    // still pointing at a record that another thread owns, and lock that thread's word. (The
    // Release store in `unregister` orders it for other threads already.)
    crate::primitive::sync::atomic::compiler_fence(Ordering::SeqCst);
    DOMAIN.unregister(rec);
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
        // nested in it) that it ended an exited thread's section (module docs, "Exit inside a
        // section").
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
    // Acquire pairs with the Release store of RUNNING in `ensure_worker` (the handle is set).
    if WORKER_STATE.load(Ordering::Acquire) == WORKER_RUNNING {
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
    if WORKER_STATE.load(Ordering::Relaxed) != WORKER_NONE
        || GpSeq(POLL_REQUEST.load(Ordering::Relaxed)).before(s)
    {
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
    let Some(lists) = try_lists() else {
        return no_memory(move || cb.invoke());
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
            Ok(()) => return enqueued(),
            Err(EnqueueError::Busy(back)) => cb = back,
            Err(EnqueueError::NoMemory(back)) => return no_memory(move || back.invoke()),
        }
    }
    match lists[home].enqueue(cb) {
        Ok(()) => enqueued(),
        Err(back) => no_memory(move || back.invoke()),
    }
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
    // Acquire pairs with the Release store of RUNNING in `ensure_worker` (the handle is set).
    if WORKER_STATE.load(Ordering::Acquire) != WORKER_RUNNING {
        ensure_worker();
    } else {
        wake_worker();
    }
}

/// After a callback is on a list: make sure the worker will see it.
#[inline]
fn enqueued() {
    if WORKER_STATE.load(Ordering::Acquire) != WORKER_RUNNING {
        ensure_worker_backoff();
    } else if IDLE.load(Ordering::Relaxed) {
        wake_worker();
    }
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
        // callbacks, and we are outside any reader, so wait and retry.
        let mut tries = 0u32;
        loop {
            match l.entrain(&barrier) {
                Ok(e) => {
                    entrained |= e;
                    break;
                }
                Err(()) => {
                    tries += 1;
                    ensure_worker_or_wake();
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
    // Acquire pairs with the Release store of RUNNING in `ensure_worker`.
    if WORKER_STATE.load(Ordering::Acquire) != WORKER_RUNNING {
        ensure_worker();
    }
    wake_worker();
    // The worker may be in its batching delay (not idle): cut it short.
    unpark_worker();
    let _urgent = UrgentGuard;
    // Drop our own count; the last barrier callback unparks us.
    if barrier.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        return;
    }
    let mut nap = std::time::Duration::from_millis(1);
    // Acquire pairs with the Release decrement in the barrier callbacks.
    while barrier.remaining.load(Ordering::Acquire) != 0 {
        // Acquire pairs with the Release store of RUNNING in `ensure_worker`.
        if WORKER_STATE.load(Ordering::Acquire) == WORKER_RUNNING {
            thread::park();
            continue;
        }
        // No worker (its thread could not be created, or one is being started): try again,
        // and meanwhile do its work here, so that the barrier never waits for a thread that
        // may never exist.
        ensure_worker();
        if WORKER_STATE.load(Ordering::Acquire) == WORKER_RUNNING {
            wake_worker();
            unpark_worker();
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
    if WORKER_STATE.load(Ordering::Relaxed) == WORKER_NONE {
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

/// One worker pass run by an `rcu_barrier` caller while no worker thread exists: harvests the
/// lists, hands ready callbacks to the invokers or runs them here, and waits for the grace period
/// the remaining ones need. Holding `STARTING` makes the caller the only thread doing the
/// worker's job (the state machine's `NONE → STARTING` CAS is the token). Returns whether it
/// made progress (`false` also if another thread holds the token).
#[cold]
fn stand_in_for_worker(lists: &'static [CachePadded<CbList>]) -> bool {
    // Acquire: the previous holder's work on the lists and `WORKER_HELD` happens-before ours.
    if WORKER_STATE
        .compare_exchange(
            WORKER_NONE,
            WORKER_STARTING,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false;
    }
    /// Gives the token back (and the caller's callback-thread mark) even if a stall hook panics.
    struct Token(bool);
    impl Drop for Token {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(self.0));
            // Release pairs with the next holder's Acquire CAS.
            WORKER_STATE.store(WORKER_NONE, Ordering::Release);
        }
    }
    // Callbacks run here must not call `rcu_barrier` either (it would wait for itself).
    let _token = Token(IN_CALLBACK.with(|c| c.replace(true)));
    let pass = worker_pass(lists);
    if let Some(s) = pass.need {
        DOMAIN.wait_for(s, false);
    }
    pass.ran != 0 || pass.need.is_some()
}

/// Ends an `rcu_barrier`'s urgency when it returns (or unwinds).
struct UrgentGuard;
impl Drop for UrgentGuard {
    fn drop(&mut self) {
        URGENT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wakes the worker if it is parked (or about to park).
fn wake_worker() {
    if IDLE.load(Ordering::Relaxed) && IDLE.swap(false, Ordering::Relaxed) {
        unpark_worker();
    }
}

fn unpark_worker() {
    // Acquire pairs with the Release store of RUNNING after the handle was written.
    if WORKER_STATE.load(Ordering::Acquire) == WORKER_RUNNING {
        WORKER_THREAD.0.with(|p| {
            // SAFETY: RUNNING was observed with Acquire, so the slot is initialised and no longer
            // written (WorkerSlot's contract).
            if let Some(t) = unsafe { &*p } {
                t.unpark();
            }
        });
    }
}

/// [`ensure_worker`], unless a start failed less than [`WORKER_RETRY_NS`] ago (for
/// `call_rcu` and `start_poll_synchronize_rcu`, which would otherwise try on every call).
#[cold]
fn ensure_worker_backoff() {
    // Relaxed: a back-off hint.
    if crate::util::monotonic_ns() >= WORKER_RETRY_AT_NS.load(Ordering::Relaxed) {
        ensure_worker();
    }
}

/// Starts the worker if it is not running (first use, or in a `fork()` child).
#[cold]
fn ensure_worker() {
    // Acquire: a winner after a failed start (Release store of NONE) sees that attempt's state;
    // losers return without touching the handle.
    if WORKER_STATE
        .compare_exchange(
            WORKER_NONE,
            WORKER_STARTING,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return; // running, or another thread is starting it (it scans the lists on start)
    }
    init();
    // Fails softly when memory is short (`lowmem`, point 2): the start is retried later.
    let spawned = crate::lowmem::spawn(format_args!("rcu-cb-worker"), worker_main);
    match spawned {
        Ok(handle) => {
            let t = handle.thread().clone();
            drop(handle); // detach
                          // SAFETY: we won the NONE → STARTING CAS, so we are the only writer, and readers wait
                          // for RUNNING (WorkerSlot's contract).
            WORKER_THREAD.0.with_mut(|p| unsafe { *p = Some(t) });
            // Release publishes the handle to `unpark_worker`.
            WORKER_STATE.store(WORKER_RUNNING, Ordering::Release);
            WORKER_REPORTED.store(false, Ordering::Relaxed);
            // The worker may have parked before the handle existed; a spurious unpark is harmless.
            unpark_worker();
        }
        Err(e) => {
            WORKER_RETRY_AT_NS.store(
                crate::util::monotonic_ns().saturating_add(WORKER_RETRY_NS),
                Ordering::Relaxed,
            );
            WORKER_STATE.store(WORKER_NONE, Ordering::Release);
            if !WORKER_REPORTED.swap(true, Ordering::Relaxed) {
                // Written without allocating: memory may be what is missing.
                crate::lowmem::report(format_args!(
                    "rcu: cannot start the call_rcu worker thread ({}); callbacks stay queued \
                     until rcu_barrier runs them, polled grace periods complete when polled, and \
                     later calls retry",
                    crate::lowmem::OsError(&e)
                ));
            }
        }
    }
}

/// The callback worker's loop (module docs).
fn worker_main() {
    // Not the affinity of whichever thread happened to start us.
    crate::sys::cpu::unbind();
    init();
    IN_CALLBACK.with(|c| c.set(true));
    // Started without lists only when they could not be allocated (a polled grace period's
    // start): wait for memory.
    let lists = loop {
        if let Some(l) = try_lists() {
            break l;
        }
        thread::park_timeout(std::time::Duration::from_millis(10));
    };
    let mut delayed = false;
    loop {
        let WorkerPass {
            need,
            ran,
            waiting,
            poll_wanted,
        } = worker_pass(lists);
        if let Some(s) = need {
            if !DOMAIN.poll(s) {
                // Batching: let callbacks accumulate once before paying for a grace period
                // (each one IPIs every running thread), unless someone waits for it.
                let urgent =
                    poll_wanted || URGENT.load(Ordering::Relaxed) != 0 || waiting > GP_BATCH_MAX;
                if !urgent && !delayed {
                    delayed = true;
                    thread::park_timeout(GP_BATCH_DELAY);
                    continue; // re-harvest: callbacks queued meanwhile join this grace period
                }
                DOMAIN.wait_for(s, false);
            }
            delayed = false;
            continue;
        }
        delayed = false;
        if ran != 0 {
            continue;
        }
        // Idle protocol (module docs).
        IDLE.store(true, Ordering::Relaxed);
        // Pairs with the fence in start_poll_synchronize_rcu.
        fence(Ordering::SeqCst);
        // Callbacks handed to invokers are theirs: only those still in a list keep us awake.
        let busy = lists.iter().any(|l| l.has_queued_locked())
            || !DOMAIN.poll(GpSeq(POLL_REQUEST.load(Ordering::Relaxed)));
        if busy {
            IDLE.store(false, Ordering::Relaxed);
            continue;
        }
        // Going idle: give the batch buffers kept for reuse back to the allocator.
        for l in lists.iter() {
            l.trim_spare();
        }
        while IDLE.load(Ordering::Relaxed) {
            thread::park();
        }
    }
}

/// What one [`worker_pass`] found.
struct WorkerPass {
    /// The newest snapshot callbacks or a poll request wait for.
    need: Option<GpSeq>,
    /// Callbacks handed over or run.
    ran: usize,
    /// Callbacks still waiting for a grace period (the batching bound).
    waiting: usize,
    /// A `start_poll_synchronize_rcu` request is not done.
    poll_wanted: bool,
}

/// One pass of the worker over the lists (module docs), by the worker thread or by an
/// `rcu_barrier` caller standing in for it (either way the only thread doing it).
fn worker_pass(lists: &'static [CachePadded<CbList>]) -> WorkerPass {
    if ORPHANS.swap(false, Ordering::Relaxed) {
        recover_orphans(lists);
    }
    let mut need: Option<GpSeq> = None;
    let mut ran = 0usize;
    let mut waiting = 0usize;
    for (i, l) in lists.iter().enumerate() {
        if l.pending.load(Ordering::Relaxed) == 0 {
            continue;
        }
        // Harvested straight into `WORKER_HELD` (held lock, then the list's lock: the `fork()`
        // prepare handler's order), so a fork never loses them. Only callbacks still waiting for
        // a grace period count toward the batching bound (handed ones belong to the invokers).
        let (snap, left) = WORKER_HELD.with_batches(i, |ready| l.harvest_counted(&DOMAIN, ready));
        waiting += left;
        if let Some(s) = snap {
            need = Some(newer(need, s));
        }
        let ready = WORKER_HELD.len();
        if ready != 0 || crate::invoker::stale(i) {
            // To the list's invoker on its CPU (invoker module docs); ourselves if none can run
            // (then the inbox's older batches come first).
            if crate::invoker::hand(lists, i, &WORKER_HELD) {
                ran += ready;
            } else {
                let n = WORKER_HELD.invoke(&INVOKED);
                WORKER_HELD.finish(l, n);
                ran += n;
            }
        }
    }
    let req = GpSeq(POLL_REQUEST.load(Ordering::Relaxed));
    let poll_wanted = !DOMAIN.poll(req);
    if poll_wanted {
        need = Some(newer(need, req));
    }
    WorkerPass {
        need,
        ran,
        waiting,
        poll_wanted,
    }
}

/// In a `fork()` child: puts the callbacks the parent's callback threads had taken but not
/// started back in order. An invoker's are the oldest of its list (front of its inbox); the
/// worker's were harvested after everything in that inbox (back of it). They run from there.
#[cold]
fn recover_orphans(lists: &'static [CachePadded<CbList>]) {
    crate::invoker::recover_orphans(lists);
    if let Some((i, mut newer_batches)) = WORKER_HELD.take_orphaned(lists) {
        crate::invoker::append_to_inbox(lists, i, &mut newer_batches);
    }
}

/// The newer of an optional snapshot and `s`.
fn newer(a: Option<GpSeq>, s: GpSeq) -> GpSeq {
    match a {
        Some(n) if s.before(n) => n,
        _ => s,
    }
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

fn install_fork_handlers() {
    // Lock order: held batches (worker's, then invokers'), lists, inboxes — the order in which
    // the worker and the invokers nest them.
    extern "C" fn prepare() {
        WORKER_HELD.fork_lock();
        crate::invoker::fork_lock_held();
        if let Some(lists) = LISTS.get() {
            for l in lists.iter() {
                l.fork_lock();
            }
        }
        crate::invoker::fork_lock();
    }
    extern "C" fn parent() {
        crate::invoker::fork_unlock();
        if let Some(lists) = LISTS.get() {
            for l in lists.iter() {
                l.fork_unlock();
            }
        }
        crate::invoker::fork_unlock_held();
        WORKER_HELD.fork_unlock();
    }
    extern "C" fn child() {
        let mut orphans = crate::invoker::fork_child();
        if let Some(lists) = LISTS.get() {
            for l in lists.iter() {
                l.fork_reset();
            }
        }
        let own = LOCAL.with(|c| c.get());
        // SAFETY: as in `local_record`.
        DOMAIN.after_fork_child(unsafe { own.as_ref() });
        IDLE.store(false, Ordering::Relaxed);
        // No `rcu_barrier` caller of the parent exists here (the forking thread is not in one).
        URGENT.store(0, Ordering::Relaxed);
        if WORKER_HELD.fork_child() {
            // A callback run by the worker (or by an `rcu_barrier` caller standing in for it)
            // forked: this thread goes on with that role in the child; keep its state.
        } else {
            orphans |= WORKER_HELD.is_orphaned();
            WORKER_STATE.store(WORKER_NONE, Ordering::Relaxed);
        }
        ORPHANS.store(orphans, Ordering::Relaxed);
    }
    // SAFETY: the handlers are `extern "C" fn()` with static lifetime; they only touch atomics
    // and locks (no allocation), as POSIX requires for async-signal-safety in the child.
    let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if r != 0 {
        crate::lowmem::report(format_args!(
            "rcu: pthread_atfork failed ({r}); fork() children may hang in grace periods"
        ));
    }
}
