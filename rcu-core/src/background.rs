//! A background thread of the kit (rcu-core's callback worker, kfree-batch's worker), started
//! lazily by whichever thread first needs it, again in a `fork()` child, and never in a way that
//! aborts when memory is short.
//!
//! # Implementation
//!
//! State machine, in `state`: `NONE` → `STARTING` (one thread won the `NONE → STARTING` CAS: it
//! holds the *start token*) → `RUNNING`; back to `NONE` after a failed start, when a holder that
//! did not start a thread gives the token back ([`BackgroundThread::release_token`]), and in a
//! `fork()` child ([`BackgroundThread::reset_after_fork`]: the thread does not exist there).
//!
//! Invariants:
//! 1. Only the token holder writes `handle`, and only before its Release store of `RUNNING`.
//! 2. `handle` is read only after an Acquire load that saw `RUNNING`; in a process `RUNNING` is
//!    never left (only a `fork()` child, where the reader threads do not exist, resets it), so
//!    no read overlaps a write.
//! 3. The thread is created through [`crate::lowmem::spawn`], which fails softly (an
//!    `OutOfMemory` error) where `std::thread::spawn` would abort; a failed start is reported
//!    once until a start succeeds, and [`BackgroundThread::may_retry`] tells callers that back off
//!    whether `retry_after_ns` has passed since the last failure (callers that retry on every
//!    use ignore it).
//!
//! Memory orderings: the CAS is Acquire (a winner after a failed start, or after another token
//! holder, sees that holder's work: the token orders one holder's work before the next one's);
//! the store of `RUNNING` is Release and pairs with the Acquire load in
//! [`BackgroundThread::is_running`] and [`BackgroundThread::unpark`] (the handle is written);
//! the store of `NONE` after a failed start or a token's release is Release (pairs with the next
//! winner's CAS). The retry time and the reported flag are hints (Relaxed).

use core::fmt;

use crate::primitive::cell::UnsafeCell;
use crate::primitive::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

const NONE: u32 = 0;
const STARTING: u32 = 1;
const RUNNING: u32 = 2;

/// A lazily started, fork-aware background thread (module docs). Meant for a `static`.
#[derive(Debug)]
pub struct BackgroundThread {
    /// `NONE` → `STARTING` → `RUNNING` (module docs).
    state: AtomicU32,
    /// The thread's handle (Invariants 1 and 2).
    handle: UnsafeCell<Option<std::thread::Thread>>,
    /// A failed start was reported (cleared when one succeeds).
    reported: AtomicBool,
    /// After a failed start: no new attempt before this time (`monotonic_ns`).
    retry_at_ns: AtomicU64,
    /// Back-off after a failed start.
    retry_after_ns: u64,
}

// SAFETY: `handle` is written only by the token holder before its Release store of `RUNNING`
// and read only after an Acquire load of `RUNNING` (Invariants 1 and 2).
unsafe impl Sync for BackgroundThread {}

impl BackgroundThread {
    /// A thread not started yet; after a failed start no new one is tried for `retry_after_ns`
    /// ([`may_retry`](Self::may_retry)).
    pub const fn new(retry_after_ns: u64) -> Self {
        Self {
            state: AtomicU32::new(NONE),
            handle: UnsafeCell::new(None),
            reported: AtomicBool::new(false),
            retry_at_ns: AtomicU64::new(0),
            retry_after_ns,
        }
    }

    /// Whether the thread runs (Acquire: pairs with the Release store of `RUNNING`, so the
    /// handle is written).
    #[inline]
    pub fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING
    }

    /// Whether the thread neither runs nor is being started (nobody holds the token). Relaxed:
    /// a hint.
    #[inline]
    pub fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Relaxed) == NONE
    }

    /// Whether the back-off after a failed start is over (Relaxed: a hint).
    #[inline]
    pub fn may_retry(&self) -> bool {
        crate::util::monotonic_ns() >= self.retry_at_ns.load(Ordering::Relaxed)
    }

    /// Takes the start token without starting a thread (a caller that does the thread's work
    /// itself while none runs); `false` if the thread runs or another thread holds the token.
    /// Give it back with [`release_token`](Self::release_token).
    pub fn try_token(&self) -> bool {
        // Acquire: the previous holder's work happens-before ours.
        self.state
            .compare_exchange(NONE, STARTING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives back a token taken with [`try_token`](Self::try_token).
    pub fn release_token(&self) {
        // Release pairs with the next holder's Acquire CAS.
        self.state.store(NONE, Ordering::Release);
    }

    /// Starts the thread (named `name`, running `main`) unless it runs or another thread is
    /// starting it. On failure the state goes back to `NONE`, the next attempt is deferred by
    /// the back-off, and `report` is called with the error if no failure was reported since
    /// the last successful start (it must not allocate: memory may be what is missing).
    #[cold]
    pub fn start(
        &self,
        name: fmt::Arguments<'_>,
        main: fn(),
        report: impl FnOnce(&std::io::Error),
    ) {
        // Acquire: a winner after a failed start (Release store of NONE) sees that attempt's
        // state; losers return without touching the handle.
        if !self.try_token() {
            return; // running, or another thread is starting it
        }
        // Fails softly when memory is short (`lowmem`): the start is retried later.
        match crate::lowmem::spawn(name, main) {
            Ok(h) => {
                let t = h.thread().clone();
                drop(h); // detach
                self.handle.with_mut(|p| {
                    // SAFETY: we hold the token, so we are the only writer, and readers wait
                    // for RUNNING (Invariants 1 and 2).
                    unsafe { *p = Some(t) }
                });
                // Release publishes the handle to `unpark`.
                self.state.store(RUNNING, Ordering::Release);
                self.reported.store(false, Ordering::Relaxed);
                // The thread may have parked before the handle existed; a spurious unpark is
                // harmless.
                self.unpark();
            }
            Err(e) => {
                self.retry_at_ns.store(
                    crate::util::monotonic_ns().saturating_add(self.retry_after_ns),
                    Ordering::Relaxed,
                );
                self.state.store(NONE, Ordering::Release);
                if !self.reported.swap(true, Ordering::Relaxed) {
                    report(&e);
                }
            }
        }
    }

    /// Unparks the thread if it runs.
    pub fn unpark(&self) {
        if self.is_running() {
            self.handle.with(|p| {
                // SAFETY: RUNNING was observed with Acquire, so the handle is written and no
                // longer written (Invariant 2).
                if let Some(t) = unsafe { &*p } {
                    t.unpark();
                }
            });
        }
    }

    /// In a `fork()` child: the thread does not exist; the next start creates it anew.
    /// Async-signal-safe (one store). Relaxed: the child has one thread.
    pub fn reset_after_fork(&self) {
        self.state.store(NONE, Ordering::Relaxed);
    }
}
