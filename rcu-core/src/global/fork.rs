//! `fork()` handling of the global engine: the `pthread_atfork` handlers.
//!
//! # Implementation
//!
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
//!   thread of the parent); neither are those that had already run. One counted as started but
//!   not yet entered therefore runs in neither copy of the child's memory; a caller that forks
//!   between `raw::pause_callbacks` and `raw::resume_callbacks` (liburcu's fork hooks) finds
//!   every callback thread between two callbacks, so the child runs each exactly once. If the forking thread is
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

use crate::primitive::sync::atomic::{AtomicBool, Ordering};

use super::invoker;
use super::registry::LOCAL;
use super::state::{DOMAIN, LISTS};
use super::worker::{IDLE, ORPHANS, URGENT, WORKER, WORKER_HELD};

/// Whether the handlers are registered: set after the registration, and by the child handler
/// (registration and `fork()` exclude each other in the C library, so a child runs the handler
/// exactly when the parent had registered it). A fork child that runs `init` again (its parent
/// forked during `init`) registers them only if they were not.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Registers the handlers (once, from `init`).
pub(super) fn install_fork_handlers() {
    // Relaxed: `init` runs on one thread at a time (its mark orders one runner after another).
    if INSTALLED.load(Ordering::Relaxed) {
        return;
    }
    // Lock order: held batches (worker's, then invokers'), lists, inboxes — the order in which
    // the worker and the invokers nest them.
    extern "C" fn prepare() {
        WORKER_HELD.fork_lock();
        invoker::fork_lock_held();
        if let Some(lists) = LISTS.get() {
            for l in lists.iter() {
                l.fork_lock();
            }
        }
        invoker::fork_lock();
    }
    extern "C" fn parent() {
        invoker::fork_unlock();
        if let Some(lists) = LISTS.get() {
            for l in lists.iter() {
                l.fork_unlock();
            }
        }
        invoker::fork_unlock_held();
        WORKER_HELD.fork_unlock();
    }
    extern "C" fn child() {
        INSTALLED.store(true, Ordering::Relaxed);
        let mut orphans = invoker::fork_child();
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
            WORKER.reset_after_fork();
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
    } else {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}
