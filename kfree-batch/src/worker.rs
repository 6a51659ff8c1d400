//! The process-wide batcher: its worker thread, `kvfree_rcu_barrier`, the shrinker, `fork()`
//! handling and statistics.
//!
//! # Implementation
//!
//! * **Worker** (`rcu-kfree`, started at the first retire, through `rcu_core::lowmem::spawn`:
//!   when the heap is exhausted, or no stack can be mapped, the start fails softly — reported
//!   once per run of failures, without allocating — and the next kick retries; the collection
//!   passes of `kvfree_rcu_barrier` and of retirers out of ready blocks do not need it). One
//!   *pass*, under the busy lock:
//!   steal the per-thread front blocks opened more than the drain delay ago, then collect
//!   handed-over blocks (and partial blocks older than the drain delay) from every slot — fronts
//!   before slots, so that a front block handed over meanwhile is found in one or the other
//!   (`krc`, Invariant 6) — take the head-linked stack, free the blocks whose grace period
//!   already completed (ready-first), wait once for the newest remaining snapshot (blocks, heads,
//!   parked objects), free the rest, then top up the emergency page caches unless the shrinker
//!   asked for a back-off. After a pass that waited or freed (work is flowing) it pauses for
//!   [`crate::Config::gp_batch`] so that one grace period serves many hand-overs (retiring threads
//!   that run out of ready blocks meanwhile run one themselves: `local.rs`); otherwise it parks
//!   with the drain delay as timeout while partial blocks exist, and without timeout when idle.
//!   After the shrinker's request the next pass collects every slot's blocks (open ones
//!   included), not only the aged ones, and frees those that are ready at once.
//!   The pass's state (the busy lock, `IN_PASS`, a barrier's count) is restored by a drop guard,
//!   so a panic escaping a pass cannot wedge later collectors (destructors' panics never escape:
//!   `block::run_free`, `head::drop_via_head`); the worker catches one escaping its pass,
//!   reports it, and goes on after the batching pause.
//! * **Whose snapshots.** A pass frees objects other threads retired, so each state it waits for
//!   must be ordered after the retirer's unpublish (rcu-core `gp.rs`, "Covering another thread's
//!   retire"): slot blocks are stamped under the slot lock every store into them held (`krc`,
//!   Memory orderings); head-linked objects are pushed with a Release CAS after the retire and
//!   taken with an Acquire swap before `heads_snap` is taken; parked objects carry the retirer's
//!   own snapshot; a stolen front block, which the owner's put reaches only through a read-before
//!   edge, carries the end of the second grace period after its swap (`chan.rs`, Invariant 5),
//!   so a pass that stole waits for one grace period more.
//! * **Idle protocol**: as in rcu-core: `IDLE = true`, then a re-check of every slot *under its
//!   lock* plus the head stack, park count and shrinker request behind a `fence(SeqCst)`;
//!   producers check `IDLE` after unlocking their slot (or after a fence for heads, parks and the
//!   shrinker's request).
//! * **Barrier** (`kvfree_rcu_barrier`): a pass that collects everything, run under the busy
//!   lock — which serialises collectors, so a worker pass that took blocks earlier has freed them
//!   — after `Batcher::barrier_begin` stopped producers from detaching blocks and waited for the
//!   blocks they held to be freed or installed. `krc` ("What a barrier covers") argues that no
//!   object retired before the barrier is freed after it returns.
//! * **Where destructors run**: in passes (the worker's, a barrier's) and in a producer's own
//!   ready-first reclaim (`free_reclaimed`), outside read-side critical sections; both mark the
//!   thread (`FREEING`), so that a barrier called from such a destructor panics instead of
//!   waiting for the free that runs it. Both also enter rcu-core's no-barrier scope
//!   (`rcu_core::raw::enter_no_barrier`), as does an owner's park drain (`park::drain_own`,
//!   whose claimed slots collectors wait for): a `call_rcu` callback may be waiting in
//!   `kvfree_rcu_barrier` for that free (for `BUSY`, or for a producer's held blocks), so
//!   `rcu_barrier` from such a destructor panics too, and `rcu_core::may_block` is false there
//!   (a typesafe slab cache a destructor drops is destroyed on a thread of its own instead of
//!   waiting with `rcu_barrier`). Grace periods may still be waited for there.
//! * **Reservations back**: a barrier claims the other threads' budget slices before its pass
//!   and takes them after it (the pass's grace period usually covers the claims: `local.rs`),
//!   then takes the slots' reservations; the worker's pressure pass takes them all.
//! * **Shrinker** `kfree-rcu` (registered with the page layer): `count` = cached pages + blocks
//!   in flight + handed blocks; `scan` empties the page caches, asks the worker for a pass that
//!   collects every slot's blocks, and backs refills off for one second. It frees no block
//!   itself: it runs on whichever thread allocates — inside a read-side critical section, a
//!   destructor or a pass, perhaps — where no destructor may run.
//! * **fork()** (`pthread_atfork`, registered when the batcher is created, after rcu-core's and
//!   slab-backend's first use, so that ours are the first prepare handler and the last parent
//!   and child handlers of the three; no allocation in any of them). *Prepare* takes every slot
//!   lock in slot order (the worker's handle needs no lock: `batcher.rs`): the child copies each slot between two
//!   critical sections, so a front's hand-over in flight is wholly in the front or wholly in the
//!   slot (`krc`, Invariant 6) and no slot list is half linked. It does not take the busy
//!   lock: a pass holds it across a grace period and across destructors, which may wait for the
//!   forking thread (inside a read-side critical section, or holding a lock a destructor
//!   wants). *Parent* releases what prepare took. *Child* clears the slice claims of
//!   reclaimers that do not exist in the child and empties the park slots that such threads
//!   had claimed (`park.rs`, "fork()"; always, also after a fork from a destructor: the forking
//!   thread's own claims stay), resets the slot locks, the busy lock and the barrier's counts,
//!   restarts the worker lazily (unless the forking thread is the worker: a destructor it ran
//!   forked, and it goes on as the child's only worker), and recounts the pending budget as
//!   what the child holds (`krc`, "fork()"): the slots' reservations, open, handed and
//!   cached blocks, every front's open block, the forking thread's own slice, the parked
//!   objects and those on the spill stack (`park.rs`, "fork()"), and the head-linked objects
//!   not freed yet. The parent's other threads' slices, and the blocks a parent's pass or
//!   producer held privately, are not in the child: their charges go, and so does the
//!   in-flight count. The counts of pending head-linked, parked and spilled objects (the
//!   worker's idle check) are recounted from what the child can reach (`head.rs`, `park.rs`):
//!   objects a vanished pass had taken off are not freed there. That is done also after a fork
//!   from a destructor, except when the forking thread runs a pass itself: then no other pass
//!   had taken anything (the busy lock), and it decrements the counts as it goes on freeing.
//!   Those blocks cannot be found, so they are not freed in the child (each
//!   process frees its own copy of everything else) and their pages stay mapped and charged to
//!   the page layer there: at most one pass's batch, plus `RECLAIM_PER_HANDOVER + 1` blocks per
//!   producer that was between a hand-over and its frees (or one it was opening). Other
//!   threads' fronts keep their open blocks, which the worker steals after the drain delay (a
//!   barrier at once); the fronts themselves stay owned and are not reused in the child. If
//!   the forking thread is running a free of ours (a destructor forked), it goes on in the
//!   child with the blocks it holds and the pass it runs: the budget keeps every charge
//!   (over-counted, never under-counted), the barrier's counts become its own (`HOLDING`,
//!   `IN_PASS`), and the busy lock stays its own. A fork while another thread creates the
//!   batcher (its first retire) leaves the child without one: the creation runs under a
//!   try-lock (`INIT`) the child resets, not in a `OnceLock` the child would wait on forever,
//!   and the child creates its own, skipping the steps already done (`SETUP`).

use crate::primitive::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::batcher::{
    freeing, in_free, kick_after_publish, now_ms, worker_reset_after_fork, Global, PageLayer,
    BATCHER, BLOCKS_FREED, BLOCKS_IN_FLIGHT, FALLBACK_SYNC, FREED, GPS_WAITED, HEAD_QUEUED,
    HOLDING, IDLE, READY_FIRST,
};
use crate::config::config;
use crate::head::HeadStack;
use crate::krc::{newer, Batch, Batcher, Pages, Processed};
use crate::lock::TryLock;
use crate::park;

/// Held while the batcher is created (reset in a `fork()` child, which then creates its own if
/// the parent's creation had not finished).
static INIT: TryLock = TryLock::new();
/// Steps of the creation done once per process (a child of a fork during the creation keeps
/// those done before it): `SETUP_SHRINKER`, `SETUP_HANDLERS`. Written under `INIT`.
static SETUP: AtomicU32 = AtomicU32::new(0);
const SETUP_SHRINKER: u32 = 1;
const SETUP_HANDLERS: u32 = 2;

pub(crate) static HEADS: HeadStack = HeadStack::new();
static BUSY: TryLock = TryLock::new();

/// Refills are backed off until this time (ms on `now_ms`'s clock).
static BACKOFF_UNTIL_MS: AtomicU64 = AtomicU64::new(0);

/// The global batcher (created at first use with the configuration in force).
#[inline]
pub(crate) fn batcher() -> &'static Global {
    match BATCHER.get() {
        Some(b) => b,
        None => create_batcher(),
    }
}

#[cold]
#[inline(never)]
fn create_batcher() -> &'static Global {
    // rcu-core's first use registers its fork handlers: before ours (see `install_fork_handlers`).
    let dom = rcu_core::raw::global_domain();
    INIT.lock();
    if let Some(b) = BATCHER.get() {
        INIT.unlock();
        return b;
    }
    // Relaxed: `SETUP` is only touched under `INIT` (or by the single-threaded fork child).
    let done = SETUP.load(Ordering::Relaxed);
    if done & SETUP_SHRINKER == 0 {
        // slab-backend's first use: its fork handlers are registered before ours too.
        slab_backend::register_shrinker("kfree-rcu", shrink_count, shrink_scan);
        SETUP.fetch_or(SETUP_SHRINKER, Ordering::Relaxed);
    }
    if done & SETUP_HANDLERS == 0 {
        // Before the batcher exists: a fork from now on finds it whole or absent.
        install_fork_handlers();
        SETUP.fetch_or(SETUP_HANDLERS, Ordering::Relaxed);
    }
    creation_test_pause();
    let c = config();
    let b: &'static Global = Box::leak(Box::new(Batcher::new(
        rcu_core::cpu::possible_cpus(),
        crate::config::counted_cap(c.pending_cap),
        c.pages_per_cpu,
        dom,
        PageLayer,
        now_ms,
    )));
    // Before the batcher is published: every kick follows a retire into it (`batcher` module
    // docs).
    crate::batcher::set_worker_main(worker_main);
    // Release publishes the initialised batcher to `Created::get`'s Acquire load.
    BATCHER
        .0
        .store(b as *const Global as *mut Global, Ordering::Release);
    INIT.unlock();
    b
}

/// White-box tests of `fork()`: 1 asks the next creation of the batcher to pause inside it,
/// which stores 2 and waits while the value stays 2.
static CREATION_PAUSE: AtomicU32 = AtomicU32::new(0);

fn creation_test_pause() {
    // Relaxed: a test flag, polled.
    if CREATION_PAUSE.load(Ordering::Relaxed) == 1 {
        CREATION_PAUSE.store(2, Ordering::Relaxed);
        while CREATION_PAUSE.load(Ordering::Relaxed) == 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Makes the next creation of the process-wide batcher pause inside it until
/// [`resume_batcher_creation`] (white-box tests of `fork()`).
#[doc(hidden)]
pub fn pause_batcher_creation() {
    CREATION_PAUSE.store(1, Ordering::Relaxed);
}

/// Whether a creation of the batcher is paused inside ([`pause_batcher_creation`]).
#[doc(hidden)]
pub fn batcher_creation_paused() -> bool {
    CREATION_PAUSE.load(Ordering::Relaxed) == 2
}

/// Lets a paused creation of the batcher go on.
#[doc(hidden)]
pub fn resume_batcher_creation() {
    CREATION_PAUSE.store(0, Ordering::Relaxed);
}

/// The shrinker asked for a pass that collects everything (memory pressure): the worker frees
/// what is ready instead of the allocating thread.
static PRESSURE: AtomicBool = AtomicBool::new(false);

std::thread_local! {
    /// Set on the worker thread (read by the `fork()` child handler: a destructor the worker
    /// runs forked, and this thread goes on as the child's worker).
    static IS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn worker_main() {
    IS_WORKER.with(|w| w.set(true));
    // Not the affinity of whichever thread happened to start us.
    rcu_core::cpu::unbind_thread();
    let b = batcher();
    let (delay, gp_batch) = (config().drain_delay, config().gp_batch);
    loop {
        // Under memory pressure (the shrinker's request) collect every slot's blocks now (open
        // front blocks still wait for the drain delay: stealing them frees nothing sooner).
        let run = || {
            if PRESSURE.swap(false, Ordering::Relaxed) {
                // The shrinker cannot wait; the worker takes the threads' unspent slices back.
                crate::local::reclaim_reservations(b, true);
                pass(b, Flush::Slots)
            } else {
                pass(b, Flush::Aged)
            }
        };
        // A panic that escapes a pass (destructors' are contained; a stall hook's in the
        // grace-period wait is not) must not end the worker: nothing would free what is retired
        // later until some producer's kick. The pass restored its state (`pass`); try again
        // after the batching pause.
        let p = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(p) => p,
            Err(_) => {
                // Written without allocating (memory may be short).
                rcu_core::lowmem::report(format_args!(
                    "kfree-batch: a panic escaped the worker's collection pass; it goes on"
                ));
                PassResult {
                    freed: true,
                    ..PassResult::default()
                }
            }
        };
        if now_ms() >= BACKOFF_UNTIL_MS.load(Ordering::Relaxed) {
            b.refill_caches();
        }
        if p.waited_gp || p.freed {
            // Work is flowing: batch the next grace period (producers reclaim ready blocks
            // themselves meanwhile).
            std::thread::park_timeout(gp_batch);
            continue;
        }
        IDLE.store(true, Ordering::Relaxed);
        // Pairs with `kick_after_publish` (fronts, heads, parks); slots are re-checked under
        // their locks, which orders them against producers that kick after unlocking.
        fence(Ordering::SeqCst);
        if has_work(b) {
            IDLE.store(false, Ordering::Relaxed);
            continue;
        }
        // Partial blocks (slot channels or thread fronts) and ready blocks left for their
        // producers must be collected after the drain delay even if nobody retires again.
        let open_left =
            p.open_left || p.handed_left || b.any_open_locked() || crate::local::any_open();
        if open_left {
            std::thread::park_timeout(delay);
            IDLE.store(false, Ordering::Relaxed);
        } else {
            while IDLE.load(Ordering::Relaxed) {
                std::thread::park();
            }
        }
    }
}

/// Whether anything needs a pass now (slots checked under their locks: idle protocol). Handed
/// blocks whose grace period is over wait for their producers (or the drain delay), so only
/// blocks still needing a grace period count.
fn has_work(b: &Global) -> bool {
    HEADS.len.load(Ordering::Relaxed) != 0
        || PRESSURE.load(Ordering::Relaxed)
        || park::PARKED_NOW.load(Ordering::Relaxed) != 0
        || b.has_handed_waiting()
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PassResult {
    freed: bool,
    waited_gp: bool,
    open_left: bool,
    handed_left: bool,
}

crate::primitive::rcu_thread_local! {
    /// This thread holds the busy lock (`pass`); 2: for a barrier, between `barrier_begin` and
    /// `barrier_end`. Read by the `fork()` child handler.
    static IN_PASS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// What a pass collects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Blocks older than the drain delay and the slots' surplus (the worker's pass).
    Aged,
    /// Every slot's blocks; front blocks older than the drain delay (memory pressure).
    Slots,
    /// Everything, after waiting for the blocks producers hold (a barrier).
    Barrier,
}

/// One collection pass (module docs).
pub(crate) fn pass(b: &Global, flush: Flush) -> PassResult {
    /// Ends the pass — the barrier's count, `IN_PASS`, the busy lock — also when it unwinds (a
    /// panicking stall hook in its grace-period wait, say), so that a panic cannot leave the
    /// batcher wedged: every later collector would wait for `BUSY` forever.
    struct Busy<'a> {
        b: &'a Global,
        barrier: bool,
    }
    impl Drop for Busy<'_> {
        fn drop(&mut self) {
            if self.barrier {
                IN_PASS.with(|p| p.set(1));
                self.b.barrier_end();
            }
            IN_PASS.with(|p| p.set(0));
            BUSY.unlock();
        }
    }
    BUSY.lock();
    IN_PASS.with(|p| p.set(1));
    let mut busy = Busy { b, barrier: false };
    if flush == Flush::Barrier {
        b.barrier_begin();
        busy.barrier = true;
        IN_PASS.with(|p| p.set(2));
    }
    let r = freeing(|| pass_locked(b, flush));
    drop(busy);
    r
}

fn pass_locked(b: &Global, flush: Flush) -> PassResult {
    let mut batch = Batch::new();
    let (now, delay) = (now_ms(), config().drain_delay.as_millis() as u64);
    // Fronts first, then slots: a front block its owner hands over meanwhile is swapped out
    // under the slot's lock, so it is either stolen here or found in its slot below (`krc`,
    // Invariant 6).
    let steal_all = flush == Flush::Barrier;
    let fronts_open = crate::local::steal(b, &mut batch, steal_all, now, delay);
    let mut c = b.collect(&mut batch, flush != Flush::Aged, now, delay);
    c.open_left |= fronts_open;
    BLOCKS_IN_FLIGHT.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let heads = HEADS.take_all();
    let heads_snap = (!heads.is_empty()).then(|| b.dom.get_state());
    let mut res = Processed::default();
    let (mut later, newest) = b.free_ready(&mut batch, &mut res);
    // One wait, for the newest state, covers the collected blocks (a stolen front block's state
    // ends one grace period later than a snapshot: `chan.rs`, Invariant 5), the head-linked
    // objects, the parked ones and the blocks left for their producers to reclaim.
    let mut need = newest;
    for s in [heads_snap, park::newest_snap(), c.newest_left]
        .into_iter()
        .flatten()
    {
        need = Some(newer(need, s));
    }
    let mut waited_gp = false;
    if let Some(s) = need {
        if !b.dom.poll(s) {
            b.dom.wait_for(s, false);
            GPS_WAITED.fetch_add(1, Ordering::Relaxed);
            waited_gp = true;
        }
    }
    b.free_all(&mut later, &mut res);
    // SAFETY: `heads` was taken before `heads_snap` was taken and we waited for it.
    let heads = unsafe { HEADS.free_list(heads) };
    b.budget.release(heads.charged);
    b.budget.release_overdraft(heads.over);
    let head_objs = heads.objects;
    let parked = park::sweep(b.dom);
    // The page source is over its limit (lowered below its use): cached pages go back too, not
    // only freed ones (`recycle_page`). A page a refill pushed just before the limit dropped
    // would otherwise stay cached until a shrinker ran.
    if b.pages.over_limit() && b.cached_pages() != 0 {
        b.drain_caches();
    }
    let objs = res.objects + head_objs + parked;
    FREED.fetch_add(objs as u64, Ordering::Relaxed);
    BLOCKS_FREED.fetch_add(res.blocks as u64, Ordering::Relaxed);
    BLOCKS_IN_FLIGHT.fetch_sub(res.blocks as u64, Ordering::Relaxed);
    READY_FIRST.fetch_add(res.ready_first as u64, Ordering::Relaxed);
    PassResult {
        freed: objs != 0,
        waited_gp,
        open_left: c.open_left,
        handed_left: c.handed_left != 0,
    }
}

/// Waits until every object retired before the call is freed (module docs), and takes unspent
/// reservations back (`local.rs`, "Budget slices, and taking them back"): the other threads'
/// slices are claimed before the pass, whose grace period usually covers the claims.
pub(crate) fn barrier() {
    let Some(b) = BATCHER.get() else { return };
    let claims = crate::local::claim_slices(b);
    pass(b, Flush::Barrier);
    let got = crate::local::finish_claims(b, claims) + b.reclaim_slot_reserves();
    if got != 0 {
        b.budget.count_reclaim();
    }
}

fn shrink_count() -> usize {
    let Some(b) = BATCHER.get() else { return 0 };
    b.cached_pages() + BLOCKS_IN_FLIGHT.load(Ordering::Relaxed) as usize + b.handed_estimate()
}

/// Gives the cached pages back and asks the worker for a pass that collects everything. It
/// frees no block itself: it runs on whichever thread allocates (maybe inside a read-side critical
/// section, maybe inside a destructor or a pass), and destructors run only where the crate docs
/// say.
fn shrink_scan(_n: usize) -> usize {
    let Some(b) = BATCHER.get() else { return 0 };
    BACKOFF_UNTIL_MS.store(now_ms() + 1000, Ordering::Relaxed);
    let freed = b.drain_caches();
    // Slot reservations need only the slot locks; thread slices need a grace period, which the
    // worker's pressure pass waits for.
    b.reclaim_slot_reserves();
    PRESSURE.store(true, Ordering::Relaxed);
    // The fence pairs with the worker's between `IDLE = true` and its re-check of `PRESSURE`.
    kick_after_publish();
    freed
}

/// Batcher statistics (see [`crate::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KfreeStats {
    /// Objects retired (every path).
    pub queued: u64,
    /// Objects freed (every path).
    pub freed: u64,
    /// Retires where the caller itself waited for a grace period because batching memory could
    /// not be had: the pending cap (or, rarely, no page and no free park slot).
    pub fallback_sync: u64,
    /// Blocks collected and not yet freed.
    pub blocks_in_flight: u64,
    /// Blocks freed.
    pub blocks_freed: u64,
    /// Blocks freed without waiting for a new grace period (their snapshot had completed).
    pub blocks_ready_first: u64,
    /// Objects freed one per retire on the retiring thread, from ready blocks of types without
    /// drop glue (included in `freed`; see the crate docs' "Where objects are freed").
    pub freed_inline: u64,
    /// Empty pages in the per-CPU emergency caches.
    pub pages_cached: u64,
    /// Pages taken from the emergency caches for new blocks.
    pub emergency_pages_used: u64,
    /// Objects retired through their `RcuHead` because no page was available.
    pub head_queued: u64,
    /// Objects parked in the retiring thread's park slots because no batching memory could be
    /// had (inside read-side critical sections, and outside them when no page could be had).
    pub objects_parked: u64,
    /// Objects parked or spilled right now.
    pub parked_now: u64,
    /// Grace periods the batcher waited for or ran (the worker's, and the producers' own in
    /// `grace_periods_expedited`).
    pub grace_periods: u64,
    /// Grace periods retiring threads ran themselves, without waiting, because no recycled
    /// block was ready while many waited for the worker (included in `grace_periods`).
    pub grace_periods_expedited: u64,
    /// Bytes charged to the pending budget now (objects + pages + reservations).
    pub pending_bytes: u64,
    /// Highest pending charge seen.
    pub peak_pending_bytes: u64,
    /// The pending cap in force (the configured one; the batcher's own count stays under
    /// [`crate::counted_cap`] of it).
    pub pending_cap: u64,
    /// Grace periods retiring threads waited for, outside any reader, because their park array
    /// was full (each one frees the whole array: see the crate docs).
    pub park_waits: u64,
    /// Objects retired inside a read-side critical section while the thread's park array was
    /// full and no batching memory could be had, kept in memory from the system allocator until
    /// their grace period ends (total; those still held count in `parked_now`).
    pub spilled: u64,
    /// Bytes of system-allocator memory holding spilled objects now.
    pub spill_bytes: u64,
    /// Highest `spill_bytes` seen.
    pub spill_bytes_peak: u64,
    /// Bytes of objects retired inside read-side critical sections past the pending cap and
    /// still held (the *overdraft*: such a caller cannot wait, so the object is kept and counted
    /// here instead of in `pending_bytes`; spilled objects count here too when the cap was
    /// reached). Zero outside readers.
    pub overdraft_bytes: u64,
    /// Highest `overdraft_bytes` seen.
    pub overdraft_bytes_peak: u64,
    /// Rounds that took unspent budget reservations (per-thread slices, per-CPU reservations)
    /// back: on a refused reserve, a barrier, or memory pressure.
    pub reserve_reclaims: u64,
    /// Allocation failures injected at the batcher's sites (`rcu_core::fault` points `block`,
    /// `emergency`, `park`, and `heap` for a thread's front): each took the path of a real
    /// failure, whose fallback counters above show where the objects went.
    pub injected_failures: u64,
}

/// A snapshot of the batcher's counters.
pub(crate) fn stats() -> KfreeStats {
    let Some(b) = BATCHER.get() else {
        return KfreeStats::default();
    };
    let freed_inline = crate::local::freed_inline();
    let (spilled, spill_bytes, spill_bytes_peak) = park::spill_stats();
    let (overdraft, overdraft_peak) = b.budget.overdraft();
    KfreeStats {
        queued: b.queued()
            + crate::local::queued()
            + HEAD_QUEUED.load(Ordering::Relaxed)
            + FALLBACK_QUEUED.load(Ordering::Relaxed),
        freed: FREED.load(Ordering::Relaxed) + freed_inline,
        fallback_sync: FALLBACK_SYNC.load(Ordering::Relaxed),
        blocks_in_flight: BLOCKS_IN_FLIGHT.load(Ordering::Relaxed),
        blocks_freed: BLOCKS_FREED.load(Ordering::Relaxed),
        blocks_ready_first: READY_FIRST.load(Ordering::Relaxed),
        freed_inline,
        pages_cached: b.cached_pages() as u64,
        emergency_pages_used: b.cache_used(),
        head_queued: HEAD_QUEUED.load(Ordering::Relaxed),
        objects_parked: park::PARKED_TOTAL.load(Ordering::Relaxed),
        parked_now: park::PARKED_NOW.load(Ordering::Relaxed) as u64,
        grace_periods: GPS_WAITED.load(Ordering::Relaxed) + b.expedited.load(Ordering::Relaxed),
        grace_periods_expedited: b.expedited.load(Ordering::Relaxed),
        pending_bytes: b.budget.pending() as u64,
        peak_pending_bytes: b.budget.peak() as u64,
        pending_cap: config().pending_cap as u64,
        park_waits: park::park_waits(),
        spilled,
        spill_bytes,
        spill_bytes_peak,
        overdraft_bytes: overdraft as u64,
        overdraft_bytes_peak: overdraft_peak as u64,
        reserve_reclaims: b.budget.reclaims() as u64,
        injected_failures: crate::block::injected(),
    }
}

/// Runs `f` while holding CPU slot `cpu`'s lock of the process-wide batcher (white-box tests of
/// the `fork()` handlers). `f` must not retire objects or call into the batcher.
#[doc(hidden)]
pub fn with_slot_locked<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    batcher().with_slot_locked(cpu, f)
}

/// Objects retired through a fallback (synchronize-and-free or park), counted as queued.
pub(crate) static FALLBACK_QUEUED: AtomicU64 = AtomicU64::new(0);

crate::primitive::rcu_thread_local! {
    /// Whether this thread's `fork()` prepare handler took the batcher's locks (its parent
    /// handler releases only those: the batcher may have been created between the two, and
    /// another thread's fork may hold them by then). A `const` thread-local without destructor:
    /// no allocation in the handlers.
    static FORK_LOCKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs the `fork()` handlers (module docs). Called once, when the batcher is created, after
/// rcu-core's and slab-backend's first use (`create_batcher`): `pthread_atfork` runs prepare
/// handlers in reverse registration order, so ours takes the batcher's locks before theirs take
/// their own, the order in which the batcher nests calls into them; parent and child handlers
/// run in registration order, so theirs have reset their state when ours runs.
fn install_fork_handlers() {
    // The slot locks (the worker's handle needs none: `rcu_core::raw::BackgroundThread`). Not the
    // busy lock:
    // a pass holds it across a grace period and across destructors, so waiting for it could
    // wait for the forking thread itself (inside a read-side critical section, or holding what
    // a destructor waits for); the child resets it instead.
    extern "C" fn prepare() {
        // Registered twice if a fork came between a registration and its record in `SETUP`
        // (the child then registers again): the second call finds the locks taken.
        if FORK_LOCKED.with(|l| l.get()) {
            return;
        }
        if let Some(b) = BATCHER.get() {
            b.fork_lock_slots();
            FORK_LOCKED.with(|l| l.set(true));
        }
    }
    extern "C" fn parent() {
        if FORK_LOCKED.with(|l| l.replace(false)) {
            if let Some(b) = BATCHER.get() {
                b.fork_unlock_slots();
            }
        }
    }
    // The child runs alone: Relaxed stores suffice (fork copied the parent's memory as it was;
    // the threads started later are ordered after these stores by their creation).
    extern "C" fn child() {
        FORK_LOCKED.with(|l| l.set(false));
        // Unless a destructor that a free of ours runs forked, these are 0: the forking thread
        // holds no block, runs no pass, and the other threads' do not exist here.
        let (holding, in_pass) = (HOLDING.with(|h| h.get()), IN_PASS.with(|p| p.get()));
        if let Some(b) = BATCHER.get() {
            b.reset_locks_after_fork(holding, usize::from(in_pass == 2));
            // Claims of reclaimers that do not exist here would refuse their owners' puts for
            // good.
            crate::local::reset_claims_after_fork();
            // Park slots claimed by freers that do not exist here would be waited for forever
            // (collectors wait for claimed slots); the forking thread's own claim it finishes.
            crate::park::release_vanished_claims_after_fork();
            // The counts of pending head-linked, parked and spilled objects (the worker's idle
            // check) become what the child can reach, so that objects a vanished pass had
            // taken off do not keep the child's worker passing forever. Not when this thread
            // runs a pass itself (a destructor in it forked): then no other pass had taken
            // anything (the busy lock), and this thread decrements the counts for what it
            // goes on freeing.
            let counts = in_pass == 0;
            if counts {
                HEADS.recount_after_fork();
            }
            // A destructor run by a free of ours (a pass, a reclaim, a sweep of its own parked
            // objects) forked: this thread goes on with the blocks it
            // holds in the child and will release their charges; keep every charge (the other
            // threads' ones over-count, never under-count).
            let recount = !in_free() && !crate::park::in_own_sweep();
            let parked = if counts || recount {
                // Parked objects and those on the spill stack.
                crate::park::recount_after_fork(counts)
            } else {
                0
            };
            if recount {
                // What the parent's passes and producers held privately, and the other threads'
                // budget slices, do not exist here: charge only what the child holds.
                BLOCKS_IN_FLIGHT.store(0, Ordering::Relaxed);
                let held = b.slot_charges_after_fork()
                    + crate::local::charges_after_fork()
                    + parked
                    // Head-linked objects not freed yet, those a vanished pass had taken
                    // included (their charge stays: an over-count, never an under-count).
                    + HEADS.charged.load(Ordering::Relaxed);
                b.budget.reset_after_fork(held);
            }
        }
        if in_pass == 0 {
            BUSY.reset_after_fork();
        } // else this thread goes on with its pass and releases the lock after it
          // A creation of the batcher in flight belongs to a thread the child does not have: the
          // child creates its own (`create_batcher`; its steps done so far are in `SETUP`).
        INIT.reset_after_fork();
        IDLE.store(false, Ordering::Relaxed);
        // The worker thread does not exist here, unless a destructor it ran forked: then this
        // thread goes on with its loop (and is the thread the handle names), so a kick must not
        // start a second one.
        if !IS_WORKER.with(|w| w.get()) {
            worker_reset_after_fork();
        }
    }
    // The slab layer's handlers first: prepare handlers run in reverse order of registration,
    // so our prepare runs before the slab layer's (our lock holders call into it).
    slab_backend::install_fork_handlers();
    // SAFETY: static `extern "C" fn()`s that only touch atomics, const thread-locals, the
    // batcher's try-locks and the structures they guard (no allocation), as fork handlers must.
    let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if r != 0 {
        rcu_core::lowmem::report(format_args!(
            "kfree-batch: pthread_atfork failed ({r}); fork() children may stall"
        ));
    }
}
