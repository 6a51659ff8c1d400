//! The callback worker (`rcu-cb-worker`): harvests the callback lists, hands ready batches to the
//! invokers, drives the grace periods callbacks and poll requests wait for, and parks when idle;
//! and the stand-in that does its passes on an `rcu_barrier` caller while no worker thread exists.
//!
//! # Implementation
//!
//! * **Worker.** One thread (`rcu-cb-worker`), started by the first `call_rcu`,
//!   `start_poll_synchronize_rcu` or `rcu_barrier` that finds it not running (in a process, or in a
//!   `fork()` child). Loop: harvest each list with pending callbacks, hand what is ready to that
//!   list's invoker (a thread bound to the list's CPU, `invoker.rs`; the worker invokes them itself
//!   if no invoker can run, after the batches still waiting in that invoker's inbox), drive the
//!   newest waited-for snapshot with [`Domain::wait_for`](crate::gp::Domain::wait_for), and park
//!   when no list holds callbacks. Callbacks accumulate for [`GP_BATCH_DELAY`] before a grace
//!   period is started for them, unless someone waits (`rcu_barrier`, a poll request) or many are
//!   queued. A list's ready batches are harvested straight into `WORKER_HELD` ([`Held`]), where
//!   they stay until handed over or finished, so that a `fork()` child can find them.
//! * **No worker thread.** If the thread cannot be created (`RLIMIT_NPROC`, no memory), the failure
//!   is reported once; `call_rcu` and `start_poll_synchronize_rcu` retry at most every
//!   [`WORKER_RETRY_NS`], `rcu_barrier` on every round of its wait. Meanwhile an `rcu_barrier`
//!   caller does the worker's passes itself ([`stand_in_for_worker`]): the start token of
//!   [`WORKER`] (its `NONE → STARTING` CAS, `crate::background`) makes one thread at a time do
//!   them, and its Acquire/Release pair orders one holder's work before the next one's (and before
//!   a worker thread started later). `poll_state_synchronize_rcu` of a requested state drives grace
//!   periods with [`Domain::try_advance`](crate::gp::Domain::try_advance) (never waiting for a
//!   reader) while the state is `NONE`; `cond_synchronize_rcu` waits for its own. So nothing waits
//!   for a thread that may never exist.
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

use crate::background::BackgroundThread;
use crate::callback::{CbList, Held};
use crate::primitive::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::primitive::thread;
use crate::seq::{newer, GpSeq};
use crate::util::CachePadded;

use super::invoker;
use super::state::{try_lists, DOMAIN, INVOKED, IN_CALLBACK};

/// The worker thread; its start token (`NONE → STARTING`) also makes one `rcu_barrier` caller at
/// a time stand in for it (module docs).
pub(super) static WORKER: BackgroundThread = BackgroundThread::new(WORKER_RETRY_NS);
/// Set by the worker right before it parks (idle protocol in the module docs).
pub(super) static IDLE: AtomicBool = AtomicBool::new(false);
/// The batches the worker (or an `rcu_barrier` caller standing in for it) harvested and has not
/// handed over or finished yet, where the `fork()` child handler can reach them.
pub(super) static WORKER_HELD: Held = Held::new();
/// Set by the `fork()` child handler when it found callbacks of the parent's callback threads
/// (`Held`) to recover; the next worker pass puts them back in order.
pub(super) static ORPHANS: AtomicBool = AtomicBool::new(false);
/// Back-off between worker start attempts made by `call_rcu` / `start_poll_synchronize_rcu`.
const WORKER_RETRY_NS: u64 = 10_000_000;
/// Highest snapshot asked for by `start_poll_synchronize_rcu` (raw `GpSeq`).
pub(super) static POLL_REQUEST: AtomicU64 = AtomicU64::new(0);
/// `rcu_barrier` calls waiting right now: the worker then skips its batching delay.
pub(super) static URGENT: AtomicUsize = AtomicUsize::new(0);
/// How long the worker lets callbacks accumulate before starting a grace period for them
/// (liburcu's worker naps 10 ms; the kernel batches for jiffies). Skipped when urgent.
const GP_BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(1);
/// Callbacks waiting above which the worker does not delay (bounds memory held by callbacks).
const GP_BATCH_MAX: usize = 1 << 16;

/// One worker pass run by an `rcu_barrier` caller while no worker thread exists: harvests the
/// lists, hands ready callbacks to the invokers or runs them here, and waits for the grace period
/// the remaining ones need. Holding `STARTING` makes the caller the only thread doing the
/// worker's job (the state machine's `NONE → STARTING` CAS is the token). Returns whether it
/// made progress (`false` also if another thread holds the token).
#[cold]
pub(super) fn stand_in_for_worker(lists: &'static [CachePadded<CbList>]) -> bool {
    // Acquire (in `try_token`): the previous holder's work on the lists and `WORKER_HELD`
    // happens-before ours.
    if !WORKER.try_token() {
        return false;
    }
    /// Gives the token back (and the caller's callback-thread mark) even if a stall hook panics.
    struct Token(bool);
    impl Drop for Token {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(self.0));
            // Release (in `release_token`) pairs with the next holder's Acquire CAS.
            WORKER.release_token();
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

/// Wakes the worker if it is parked (or about to park).
pub(super) fn wake_worker() {
    if IDLE.load(Ordering::Relaxed) && IDLE.swap(false, Ordering::Relaxed) {
        WORKER.unpark();
    }
}

/// Starts the worker thread unless it runs or is being started; `init` has run (the caller's).
/// A failure is reported once, without allocating, and retried later.
pub(super) fn start() {
    WORKER.start(format_args!("rcu-cb-worker"), worker_main, |e| {
        // Written without allocating: memory may be what is missing.
        crate::lowmem::report(format_args!(
            "rcu: cannot start the call_rcu worker thread ({}); callbacks stay queued until \
             rcu_barrier runs them, polled grace periods complete when polled, and later calls \
             retry",
            crate::lowmem::OsError(e)
        ));
    });
}

/// The callback worker's loop (module docs).
fn worker_main() {
    // Not the affinity of whichever thread happened to start us.
    crate::sys::cpu::unbind();
    // `init` ran before the thread was started (`start`'s caller).
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
        if ready != 0 || invoker::stale(i) {
            // To the list's invoker on its CPU (invoker module docs); ourselves if none can run
            // (then the inbox's older batches come first).
            if invoker::hand(lists, i, &WORKER_HELD) {
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
    invoker::recover_orphans(lists);
    if let Some((i, mut newer_batches)) = WORKER_HELD.take_orphaned(lists) {
        invoker::append_to_inbox(lists, i, &mut newer_batches);
    }
}
