//! Per-CPU callback invokers: ready `call_rcu` callbacks run on a thread bound to the CPU whose
//! list they were queued on (the kernel's `rcuc/N` threads; liburcu's per-CPU `call_rcu`
//! threads).
//!
//! # Implementation
//!
//! Most callbacks free memory. A free on another core than the allocation's costs a cache-line
//! transfer per object plus contention on the allocator's shared bins: with one worker thread
//! running every callback, a `call_rcu` producer spent a third of its time in glibc's
//! `_int_malloc` refetching the chunks the worker freed, and the whole pipeline ran at
//! 4.1 M callbacks/s; with the producer and the callbacks on one CPU, 8.5–10.6 M/s (measured with
//! the process pinned to one CPU). So the worker keeps harvesting lists and driving grace periods,
//! and hands each list's ready batches, in order, to that list's invoker, a thread pinned to the
//! list's CPU (when the process may run there; unpinned otherwise). Callbacks of one list keep
//! their order, so `rcu_barrier`'s entrained callback still runs after every callback queued
//! before it on that list.
//!
//! ```text
//!   worker: harvest(list i) ──ready batches──▶ inbox[i] ──▶ invoker i (on CPU i): invoke,
//!                                                              list i .finished(n)
//! ```
//!
//! * `inbox` is a FIFO of batches under a [`SpinLock`] (held for a push or a swap, never across
//!   a wait, reset in the `fork()` child).
//! * Wake-up: the worker pushes, then bumps `seq` (Release) and `FUTEX_WAKE`s; the invoker reads
//!   `seq` (Acquire) *before* it checks the inbox and sleeps only while `seq` is unchanged, so a
//!   push after its check changes `seq` and the sleep returns at once.
//! * Start: lazily at the first hand-off (`NONE → STARTING` CAS, `RUNNING` published with
//!   Release after the handle), through `lowmem::spawn`, which fails softly instead of aborting
//!   when the heap is exhausted (the name is formatted on the stack, the failure reported
//!   without allocating). The invokers themselves are allocated fallibly at the first hand-off
//!   (no memory: the worker invokes). A hand-off moves the batches' buffer into an empty inbox
//!   (no allocation), else grows the inbox fallibly; with no memory the worker wakes the
//!   invoker and waits for it to take its inbox rather than run the batches itself ahead of
//!   older ones. If the thread cannot be created, the worker invokes the batches
//!   itself, as before invokers existed — after the batches still waiting in the inbox (only a
//!   `fork()` child has an inbox without a running invoker), which it takes first, so that a
//!   list's callbacks (an `rcu_barrier` callback among them) never overtake older ones. A
//!   `fork()` child marks every invoker not running; the worker restarts one when it next finds
//!   its inbox or list non-empty.
//! * The invoker swaps its inbox into its [`Held`] (held lock, then inbox lock: the `fork()`
//!   prepare handler's order) and invokes from there, so that in a `fork()` child the callbacks
//!   it had taken but not started are found ([`recover_orphans`] puts them back at the front of
//!   the inbox).
//! * Pending accounting: the invoker calls [`CbList::finished`] after running a batch, so
//!   `rcu_barrier` never mistakes a list whose callbacks are being invoked for an empty one.

use std::sync::OnceLock;

use crate::callback::{Callback, CbList, Held};
use crate::primitive::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sys::lock::{futex_wait, futex_wake, SpinLock};
use crate::util::CachePadded;

const NONE: u32 = 0;
const STARTING: u32 = 1;
const RUNNING: u32 = 2;

/// One list's invoker.
#[derive(Debug)]
struct Invoker {
    /// Guards `inbox`.
    lock: SpinLock,
    /// Ready batches handed by the worker, oldest first.
    inbox: crate::primitive::cell::UnsafeCell<Vec<Vec<Callback>>>,
    /// Bumped after every push (futex word).
    seq: AtomicU32,
    /// `NONE` → `STARTING` → `RUNNING`; back to `NONE` in a `fork()` child or a failed start.
    /// Written by the thread doing the worker's job (the worker thread, or an `rcu_barrier` caller
    /// standing in for it; one at a time, they alone hand off and start invokers) and by the
    /// `fork()` child handler; nothing is published through it, so every access is Relaxed (the
    /// inbox has its lock, the wake-up its futex word).
    state: AtomicU32,
    /// After a failed start: no new attempt before this time (`now_ms`; as `state`).
    retry_at_ms: AtomicU64,
    /// A failed start was reported.
    reported: AtomicBool,
    /// The batches the invoker took out of `inbox` and is running (reachable from the `fork()`
    /// child handler).
    held: Held,
}

// SAFETY: `inbox` is only touched with `lock` held; callbacks are `Send`.
unsafe impl Sync for Invoker {}

static INVOKERS: OnceLock<Box<[CachePadded<Invoker>]>> = OnceLock::new();

fn invokers(n: usize) -> &'static [CachePadded<Invoker>] {
    try_invokers(n).expect("invokers exist before their threads run")
}

/// The invokers, allocated on first use; `None` if there is no memory for them (the worker then
/// invokes the callbacks itself).
fn try_invokers(n: usize) -> Option<&'static [CachePadded<Invoker>]> {
    if let Some(i) = INVOKERS.get() {
        return Some(i);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    Some(INVOKERS.get_or_init(|| {
        v.extend((0..n).map(|_| {
            CachePadded::new(Invoker {
                lock: SpinLock::new(),
                inbox: crate::primitive::cell::UnsafeCell::new(Vec::new()),
                seq: AtomicU32::new(0),
                state: AtomicU32::new(NONE),
                retry_at_ms: AtomicU64::new(0),
                reported: AtomicBool::new(false),
                held: Held::new(),
            })
        }));
        // No reallocation: the capacity is the length.
        v.into_boxed_slice()
    }))
}

/// Hands list `i`'s ready batches (what `held` holds; emptied) to its invoker, starting it if
/// needed. Returns `false` if no invoker can run: then `held` holds, oldest first, the batches
/// still waiting in the inbox (a `fork()` child) followed by its own, and the caller invokes
/// them, so that callbacks of a list never overtake older ones.
pub(crate) fn hand(lists: &'static [CachePadded<CbList>], i: usize, held: &Held) -> bool {
    let Some(invs) = try_invokers(lists.len()) else {
        return false; // no memory for them: no invoker ever ran, no inbox holds anything
    };
    let inv = &invs[i];
    if inv.state.load(Ordering::Relaxed) != RUNNING && !start(lists, i) {
        held.with_batches(i, |ready| {
            inv.lock.lock();
            // SAFETY: we hold `lock`.
            let mut older = inv.inbox.with_mut(|q| unsafe { core::mem::take(&mut *q) });
            inv.lock.unlock();
            if !older.is_empty() {
                older.append(ready);
                *ready = older;
            }
        });
        return false;
    }
    if held.is_empty() {
        return true;
    }
    // Without allocating when the inbox is empty (the batches' buffer moves in whole); else the
    // inbox grows fallibly, and with no memory we wait for the invoker to empty it (it takes
    // the whole inbox) rather than run these ourselves ahead of older ones of the same list.
    let mut nap = 1u32;
    loop {
        let moved = held.with_batches(i, |ready| {
            inv.lock.lock();
            let moved = inv.inbox.with_mut(|q| {
                // SAFETY: we hold `lock`.
                let q = unsafe { &mut *q };
                if q.is_empty() {
                    core::mem::swap(q, ready);
                    true
                } else if q.try_reserve(ready.len()).is_ok() {
                    q.append(ready);
                    true
                } else {
                    false
                }
            });
            inv.lock.unlock();
            moved
        });
        // Release: the push happens-before an invoker that sees the new value (it re-checks the
        // inbox under the lock anyway).
        inv.seq.fetch_add(1, Ordering::Release);
        futex_wake(&inv.seq, 1);
        if moved {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(50 << nap.min(6)));
        nap += 1;
    }
}

/// Whether list `i`'s invoker is not running while batches wait in its inbox (a `fork()` child):
/// the worker then restarts it with an empty [`hand`].
pub(crate) fn stale(i: usize) -> bool {
    let Some(invs) = INVOKERS.get() else {
        return false;
    };
    let inv = &invs[i];
    if inv.state.load(Ordering::Relaxed) == RUNNING {
        return false;
    }
    inv.lock.lock();
    // SAFETY: we hold `lock`.
    let r = inv.inbox.with(|q| unsafe { !(*q).is_empty() });
    inv.lock.unlock();
    r
}

#[cold]
fn start(lists: &'static [CachePadded<CbList>], i: usize) -> bool {
    let inv = &invokers(lists.len())[i];
    // Relaxed: worker-only back-off time (as `state`).
    if now_ms() < inv.retry_at_ms.load(Ordering::Relaxed) {
        return false;
    }
    match inv
        .state
        .compare_exchange(NONE, STARTING, Ordering::Relaxed, Ordering::Relaxed)
    {
        Ok(_) => {}
        // Another thread is starting it (only the worker's job hands off, so this is rare) or it
        // runs.
        Err(s) => return s == RUNNING || s == STARTING,
    }
    // Fails softly when memory is short (`lowmem`): the worker invokes meanwhile.
    let spawned = crate::lowmem::spawn(format_args!("rcu-cb-inv/{i}"), move || {
        invoker_main(lists, i)
    });
    match spawned {
        Ok(_) => {
            inv.state.store(RUNNING, Ordering::Relaxed);
            true
        }
        Err(e) => {
            // Retried at most once a second (thread creation fails under memory limits, and a
            // failed attempt costs a mapping attempt); reported once.
            inv.retry_at_ms
                .store(now_ms().saturating_add(1000), Ordering::Relaxed);
            inv.state.store(NONE, Ordering::Relaxed);
            if !inv.reported.swap(true, Ordering::Relaxed) {
                crate::lowmem::report(format_args!(
                    "rcu: cannot start callback invoker {i} ({}); the worker invokes its \
                     callbacks and retries every second",
                    crate::lowmem::OsError(&e)
                ));
            }
            false
        }
    }
}

fn invoker_main(lists: &'static [CachePadded<CbList>], i: usize) {
    crate::sys::cpu::bind_to(i);
    super::state::mark_callback_thread();
    let inv = &invokers(lists.len())[i];
    loop {
        // Acquire pairs with the worker's Release bump: read before checking the inbox, so a
        // push after the check changes it and the wait below returns.
        let seen = inv.seq.load(Ordering::Acquire);
        // Held lock, then inbox lock (the `fork()` prepare handler's order).
        inv.held.with_batches(i, |batch| {
            inv.lock.lock();
            // SAFETY: we hold `lock`.
            inv.inbox.with_mut(|q| unsafe { core::ptr::swap(q, batch) });
            inv.lock.unlock();
        });
        if inv.held.is_empty() {
            futex_wait(&inv.seq, seen);
            continue;
        }
        let n = inv.held.invoke(invoked());
        inv.held.finish(&lists[i], n);
    }
}

/// In a `fork()` child, by the thread acting as the worker: puts the callbacks that the parent's
/// invokers had taken but not started back at the front of their inboxes (they are older than
/// everything there).
pub(crate) fn recover_orphans(lists: &'static [CachePadded<CbList>]) {
    let Some(invs) = INVOKERS.get() else {
        return;
    };
    for inv in invs.iter() {
        if !inv.held.is_orphaned() {
            continue;
        }
        if let Some((_, mut older)) = inv.held.take_orphaned(lists) {
            inv.lock.lock();
            inv.inbox.with_mut(|q| {
                // SAFETY: we hold `lock`.
                let q = unsafe { &mut *q };
                older.append(q);
                *q = older;
            });
            inv.lock.unlock();
        }
    }
}

/// Appends `batches` (list `i`'s, newer than everything in its inbox) to list `i`'s inbox; the
/// worker hands or runs them from there ([`stale`]).
pub(crate) fn append_to_inbox(
    lists: &'static [CachePadded<CbList>],
    i: usize,
    batches: &mut Vec<Vec<Callback>>,
) {
    let inv = &invokers(lists.len())[i];
    inv.lock.lock();
    // SAFETY: we hold `lock`.
    inv.inbox.with_mut(|q| unsafe { (*q).append(batches) });
    inv.lock.unlock();
}

/// Milliseconds of the kit's monotonic clock.
fn now_ms() -> u64 {
    crate::util::monotonic_ns() / 1_000_000
}

/// The engine's invoked-callback counter.
fn invoked() -> &'static AtomicU64 {
    &super::state::INVOKED
}

/// After `callback::pause_invocation`: waits until no invoker runs a callback.
pub(crate) fn wait_idle() {
    if let Some(invs) = INVOKERS.get() {
        for inv in invs.iter() {
            inv.held.wait_idle();
        }
    }
}

/// `fork()` prepare handler, first step: hold every invoker's held-batches lock.
pub(crate) fn fork_lock_held() {
    if let Some(invs) = INVOKERS.get() {
        for inv in invs.iter() {
            inv.held.fork_lock();
        }
    }
}

/// `fork()` parent handler, last step.
pub(crate) fn fork_unlock_held() {
    if let Some(invs) = INVOKERS.get() {
        for inv in invs.iter() {
            inv.held.fork_unlock();
        }
    }
}

/// `fork()` prepare handler: hold every inbox lock (never held across a wait).
pub(crate) fn fork_lock() {
    if let Some(invs) = INVOKERS.get() {
        for inv in invs.iter() {
            inv.lock.lock();
        }
    }
}

/// `fork()` parent handler.
pub(crate) fn fork_unlock() {
    if let Some(invs) = INVOKERS.get() {
        for inv in invs.iter() {
            inv.lock.unlock();
        }
    }
}

/// `fork()` child handler: no invoker thread exists here (unless a callback of one forked: that
/// thread goes on as the invoker); inboxes keep their batches and the batches an invoker was
/// running are marked orphaned (the worker puts them back, [`recover_orphans`]); they run in the
/// child too, once the worker restarts the invokers. Returns whether anything was orphaned. No
/// allocation.
pub(crate) fn fork_child() -> bool {
    let mut orphans = false;
    if let Some(invs) = INVOKERS.get() {
        for inv in invs.iter() {
            inv.lock.reset_after_fork();
            if inv.held.fork_child() {
                continue; // the forking thread is this invoker
            }
            orphans |= inv.held.is_orphaned();
            inv.state.store(NONE, Ordering::Relaxed);
        }
    }
    orphans
}
