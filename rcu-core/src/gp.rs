//! Grace periods: the domain state, `synchronize_rcu`, and the polled-state helpers.
//!
//! # Implementation
//!
//! A [`Domain`] owns the grace-period sequence `gp_seq` (see [`crate::seq`]), the registry of
//! reader records and a lock that serialises grace periods. One grace period:
//!
//! ```text
//!   runner (holds gp_lock)                      reader (owns one record)
//!   ----------------------                      ------------------------
//!   s = gp_seq.start(); store(s, Release)       w = gp_seq (Acquire)
//!   heavy barrier  ─────────── pairs ────────── word = (w<<16)|1 ; light barrier
//!   for rec in registry:                         ... protected loads ...
//!       wait while blocks_gp(rec.word, s)        word = 0 (Release)
//!   store(s.end(), Release)
//! ```
//!
//! **One heavy barrier per grace period.** liburcu-memb issues a membarrier at the start and one at
//! the end of `synchronize_rcu`. The end one orders the readers' critical sections before the
//! caller's free; here the readers' outermost unlock is a Release store and the scan an Acquire
//! load, which gives that order without a second IPI round. The 64-bit snapshot in the reader word
//! removes liburcu's second *wait* (its one-bit phase flip).
//!
//! **Sharing.** A caller computes `snap = gp_seq.snap()` after a full fence. If `snap` is not done
//! it tries to become the *leader* (`gp_lock.try_lock()`) and runs grace periods until it is; the
//! others sleep on `gp_wake`, which the leader bumps and broadcasts (`FUTEX_WAKE` all) whenever it
//! releases the lock. On waking, every caller whose snapshot is done returns together; of the rest
//! (they arrived while that grace period ran) one becomes the next leader. So each grace period
//! serves every caller that arrived before it started — liburcu's waiter-queue batching, without
//! the queue.
//!
//! **Polling.** `get_state` = full fence + `snap`; `poll(snap)` = Acquire load + `done`. A state
//! taken before a `synchronize_rcu()` always polls true after it returns, because that call waits
//! for `gp_seq` to reach its own snapshot, which is at least as large.
//!
//! **Trying without waiting.** `try_advance(snap)` runs grace periods only while no reader blocks
//! them: it try-locks `gp_lock`, and at the first record that blocks it leaves the grace period
//! in progress and returns. The next runner finishes that grace period as it finishes one a
//! forking parent left: a new heavy barrier, then the scan. A caller that cannot wait (a
//! kfree-batch producer whose grace-period thread lags) pays one heavy barrier instead of
//! waiting; readers are never waited for on its behalf.
//!
//! **Covering another thread's retire.** A grace period protects an update only if the update
//! happens-before the load of `gp_seq` that produced the snapshot, or is ordered before it by a
//! full fence on the updater's own thread: then the snapshot's grace period starts after that
//! load, its heavy barrier follows the updater's fence in the SeqCst order, and every reader
//! either sees the update or is waited for. Knowing only that an access the updater made *after*
//! the update read a value from before the snapshot-taker's action (a read-before edge) is not
//! enough when no full fence separates the update from that access on the updater's thread: the
//! update may still be in its store buffer (membarrier mode's light barrier is a compiler fence,
//! and a nested `rcu_read_lock` has no barrier at all). The paths that share or take over grace
//! periods keep to this:
//! * shared `synchronize`: every caller takes its own snapshot (`get_state`, after its removals
//!   and its own fence); the leader only runs grace periods until the callers' snapshots are
//!   done, and each caller returns on its own `poll`.
//! * `try_advance` and a taken-over grace period: the snapshot is still the caller's own. A grace
//!   period left in progress ends only snapshots whose loads read a value from before its start
//!   store, so a reader that loads that start value sees those callers' removals by the same
//!   pairing as when a caller starts the grace period itself (the caller's fence, its load read
//!   before the start store, the reader's Acquire load of it and light barrier); the runner that
//!   finishes it issues a new heavy barrier and scans every record again.
//! * grace periods run for someone else's snapshot (the callback worker's, a kfree collector's):
//!   that snapshot is taken by a thread that *happens-after* the retire (lock release/acquire,
//!   Release push / Acquire take), and behind `get_state`'s fence; a collector that has only a
//!   read-before edge waits for one more grace period (kfree-batch's stolen front blocks).
//!
//! **fork().** The child's `gp_lock` is reset, and so is `nwait` (the parent's waiting callers do
//! not exist in the child; counted, they would make every grace period pause for them); if the
//! parent was in the middle of a grace period, `gp_seq` still says "in progress" and the next
//! runner finishes that grace period (scanning the records again) instead of starting a new one.
//!
//! ## Invariants
//!
//! 1. `gp_seq` is only stored by the holder of `gp_lock` (or by the fork child handler, which runs
//!    alone).
//! 2. A grace period ends only after every record that blocked its start value was seen quiescent
//!    or newer (Acquire), so every critical section that began before the start happens-before the
//!    end store.
//!
//! ## Memory orderings
//!
//! * start store Release ↔ reader's `gp_seq` Acquire load (see `reader`).
//! * heavy barrier ↔ every reader's light barrier.
//! * scan Acquire loads ↔ readers' Release stores of their word.
//! * end store Release ↔ `poll` Acquire load: the waiter's frees happen after every old section.
//! * `get_state`'s `fence(SeqCst)` orders the caller's removals before its snapshot; it pairs with
//!   the heavy barrier of the grace period that ends the snapshot.

use crate::primitive::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use crate::reader::{blocks_gp, Record, Registry};
use crate::seq::GpSeq;
use crate::sys::lock::{futex_wait, futex_wake_all, SpinLock};
use crate::sys::membarrier::{self, Mode};
use crate::util::CachePadded;

/// Spins on one reader before looking at the clock.
const SPIN_LIMIT: u32 = 200;
/// Yields after the spins, before sleeping (normal grace periods only).
const YIELD_LIMIT: u32 = 20;

/// An RCU domain: one grace-period sequence and the readers it waits for.
///
/// The process has one global domain behind the free functions of this crate; loom models build
/// their own.
#[derive(Debug)]
pub struct Domain {
    /// The grace-period sequence. Stored by the `gp_lock` holder (Invariant 1); loaded by every
    /// reader's outermost lock and every poller. Alone on its cache line pair.
    pub(crate) gp_seq: CachePadded<AtomicU64>,
    /// Serialises grace periods; only ever try-locked (the holder is the leader).
    gp_lock: SpinLock,
    /// Barrier mode (encoded [`Mode`]); set once before the first registration.
    mode: AtomicU8,
    /// Reader records.
    pub(crate) registry: Registry,
    /// Statistics, written by the `gp_lock` holder (Relaxed: counters only).
    pub(crate) grace_periods: AtomicU64,
    /// Heavy barriers issued by grace periods.
    pub(crate) heavy_barriers: AtomicU64,
    /// Bumped (SeqCst) every time `gp_lock` is released; waiters sleep on it.
    gp_wake: AtomicU32,
    /// Callers sleeping (or about to sleep) on `gp_wake`.
    nwait: AtomicU32,
}

/// Releases `gp_lock` and wakes the waiters, even if a stall hook panics.
struct GpLockGuard<'a>(&'a Domain);
impl Drop for GpLockGuard<'_> {
    fn drop(&mut self) {
        let d = self.0;
        d.gp_lock.unlock();
        // SeqCst pairs with the waiter's SeqCst increment of `nwait` and load of `gp_wake`
        // (Dekker): either we see the waiter and wake it, or it sees the new `gp_wake` (and,
        // through this RMW's Release, the end of the grace period) and does not sleep.
        d.gp_wake.fetch_add(1, Ordering::SeqCst);
        if d.nwait.load(Ordering::SeqCst) != 0 {
            futex_wake_all(&d.gp_wake);
        }
    }
}

impl Domain {
    /// A domain with no readers, idle at sequence 0, using `mode`.
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new_const() -> Domain {
        Domain {
            gp_seq: CachePadded::new(AtomicU64::new(0)),
            gp_lock: SpinLock::new(),
            mode: AtomicU8::new(1),
            registry: Registry::new(),
            grace_periods: AtomicU64::new(0),
            heavy_barriers: AtomicU64::new(0),
            gp_wake: AtomicU32::new(0),
            nwait: AtomicU32::new(0),
        }
    }

    /// A domain for a model or a test, using `mode`.
    pub fn new(mode: Mode) -> Domain {
        let d = Domain {
            gp_seq: CachePadded::new(AtomicU64::new(0)),
            gp_lock: SpinLock::new(),
            mode: AtomicU8::new(1),
            registry: Registry::new(),
            grace_periods: AtomicU64::new(0),
            heavy_barriers: AtomicU64::new(0),
            gp_wake: AtomicU32::new(0),
            nwait: AtomicU32::new(0),
        };
        d.set_mode(mode);
        d
    }

    /// Sets the barrier mode; only before any reader registers.
    pub(crate) fn set_mode(&self, mode: Mode) {
        let v = match mode {
            Mode::Membarrier => 0,
            Mode::Fences => 1,
        };
        // Relaxed: published to readers by the registration path (OnceLock / Once), which
        // happens-before any record is handed out.
        self.mode.store(v, Ordering::Relaxed);
    }

    /// The barrier mode.
    pub fn mode(&self) -> Mode {
        if self.mode.load(Ordering::Relaxed) == 0 {
            Mode::Membarrier
        } else {
            Mode::Fences
        }
    }

    /// Registers a reader (claims or creates a record).
    pub fn register(&self) -> &Record {
        self.registry.acquire(self.mode())
    }

    /// Unregisters a quiescent reader.
    pub fn unregister(&self, rec: &Record) {
        self.registry.release(rec)
    }

    /// Read lock on `rec` (see [`crate::reader`]).
    #[inline(always)]
    pub fn read_lock(&self, rec: &Record) {
        crate::reader::lock(&self.gp_seq, rec)
    }

    /// Read unlock on `rec`.
    #[inline(always)]
    pub fn read_unlock(&self, rec: &Record) {
        crate::reader::unlock(rec);
    }

    /// The current sequence (Acquire: pairs with the Release end store).
    #[inline]
    pub fn current(&self) -> GpSeq {
        GpSeq(self.gp_seq.load(Ordering::Acquire))
    }

    /// A snapshot whose completion proves that every reader that could have seen the caller's
    /// earlier updates has finished.
    #[inline]
    pub fn get_state(&self) -> GpSeq {
        // Orders the caller's prior removals before the snapshot load; pairs with the heavy
        // barrier of the grace period that ends `snap` (it started after this load).
        fence(Ordering::SeqCst);
        GpSeq(self.gp_seq.load(Ordering::Relaxed)).snap()
    }

    /// Grace periods this domain completed (statistics; Relaxed).
    pub fn completed_grace_periods(&self) -> u64 {
        self.grace_periods.load(Ordering::Relaxed)
    }

    /// Callers sleeping (or about to sleep) until the running grace period's leader is done
    /// (white-box API for tests).
    #[doc(hidden)]
    pub fn waiting_callers(&self) -> u32 {
        self.nwait.load(Ordering::Relaxed)
    }

    /// Whether the grace period of `snap` is over.
    #[inline]
    pub fn poll(&self, snap: GpSeq) -> bool {
        // Acquire (in `current`) pairs with the Release end store: frees that follow happen after
        // every critical section the grace period waited for.
        self.current().done(snap)
    }

    /// Waits for a full grace period (sharing one with concurrent callers).
    pub fn synchronize(&self, expedited: bool) {
        let snap = self.get_state();
        self.wait_for(snap, expedited);
    }

    /// Waits until `snap` is done, leading grace periods or sleeping until the leader's ends.
    pub fn wait_for(&self, snap: GpSeq, expedited: bool) {
        loop {
            if self.poll(snap) {
                return;
            }
            if self.gp_lock.try_lock() {
                let _unlock = GpLockGuard(self);
                if !expedited && self.nwait.load(Ordering::Relaxed) != 0 {
                    // Others are waiting, so callers are arriving concurrently: give the ones the
                    // last grace period just woke a moment to take their snapshots, so that the
                    // grace period we start serves them too. A lone caller never pays this.
                    self.let_callers_join();
                }
                while !self.poll(snap) {
                    self.run_gp(expedited);
                }
                return;
            }
            self.wait_for_leader(snap, expedited);
        }
    }

    /// Tries to make `snap` done without waiting: if no grace period is running, runs grace
    /// periods until `snap` is done as long as no reader blocks them (one heavy barrier each).
    /// Never sleeps and never spins on a reader: a grace period a reader blocks is left in
    /// progress for the next runner (`wait_for`, or another `try_advance`), which finishes it.
    /// Returns whether `snap` is done.
    ///
    /// For a caller that would rather do a little work now than wait for a grace-period thread
    /// that lags (kfree-batch's producers when their recycled blocks run out). Inside a
    /// read-side critical section it returns `false`: the caller's own section blocks.
    pub fn try_advance(&self, snap: GpSeq) -> bool {
        if self.poll(snap) {
            return true;
        }
        if !self.gp_lock.try_lock() {
            return false; // a grace period is running; its leader finishes it
        }
        let _unlock = GpLockGuard(self);
        while !self.poll(snap) {
            if !self.try_run_gp() {
                return false;
            }
        }
        true
    }

    /// A short pause before a shared grace period (see `wait_for`).
    #[cold]
    fn let_callers_join(&self) {
        #[cfg(not(rcu_loom))]
        {
            let before = self.nwait.load(Ordering::Relaxed);
            for _ in 0..4 {
                crate::primitive::thread::yield_now();
                if self.nwait.load(Ordering::Relaxed) > before {
                    break;
                }
            }
        }
    }

    /// Sleeps until the current leader releases `gp_lock` (or `snap` is done).
    #[cold]
    fn wait_for_leader(&self, snap: GpSeq, expedited: bool) {
        // SeqCst: Dekker with `GpLockGuard::drop` (see there).
        self.nwait.fetch_add(1, Ordering::SeqCst);
        let w = self.gp_wake.load(Ordering::SeqCst);
        let mut i = 0u32;
        while self.gp_wake.load(Ordering::SeqCst) == w
            && !self.poll(snap)
            && self.gp_lock.is_locked()
        {
            if expedited && i < 1000 {
                crate::primitive::thread::spin_hint();
                i += 1;
            } else {
                futex_wait(&self.gp_wake, w);
            }
        }
        self.nwait.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs one grace period. Caller holds `gp_lock`.
    fn run_gp(&self, expedited: bool) {
        let s = self.start_gp();
        for rec in self.registry.iter() {
            self.wait_for_reader(rec, s, expedited);
        }
        self.end_gp(s);
    }

    /// Runs one grace period if no reader blocks it, without waiting; a grace period some
    /// reader blocks is left in progress (the next runner finishes it). Caller holds `gp_lock`.
    fn try_run_gp(&self) -> bool {
        let s = self.start_gp();
        for rec in self.registry.iter() {
            // Acquire pairs with the reader's Release stores of its word (as in
            // `wait_for_reader`).
            if blocks_gp(rec.word.load(Ordering::Acquire), s) {
                return false;
            }
        }
        self.end_gp(s);
        true
    }

    /// Starts a grace period (or takes over the one left in progress) and issues its heavy
    /// barrier. Caller holds `gp_lock`.
    fn start_gp(&self) -> GpSeq {
        // Relaxed: only the lock holder stores gp_seq (Invariant 1); the lock's Acquire made the
        // previous holder's stores visible.
        let cur = GpSeq(self.gp_seq.load(Ordering::Relaxed));
        let s = if cur.in_progress() {
            // Left in progress by `try_advance`, or by a parent that forked mid-grace-period:
            // finish it (its readers are scanned again after a new heavy barrier).
            cur
        } else {
            let s = cur.start();
            // Release pairs with the readers' Acquire load of gp_seq: a reader that sees `s` sees
            // the removals made before this grace period.
            self.gp_seq.store(s.raw(), Ordering::Release);
            s
        };
        membarrier::heavy(self.mode());
        self.heavy_barriers.fetch_add(1, Ordering::Relaxed);
        s
    }

    /// Ends grace period `s` (every reader that blocked it was seen quiescent or newer).
    fn end_gp(&self, s: GpSeq) {
        // Release pairs with `poll`'s Acquire (Invariant 2).
        self.gp_seq.store(s.end().raw(), Ordering::Release);
        self.grace_periods.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until `rec` is not inside a critical section that began before `s`.
    fn wait_for_reader(&self, rec: &Record, s: GpSeq, expedited: bool) {
        // Acquire pairs with the reader's Release stores of its word.
        if !blocks_gp(rec.word.load(Ordering::Acquire), s) {
            return;
        }
        self.wait_for_reader_slow(rec, s, expedited)
    }

    #[cold]
    fn wait_for_reader_slow(&self, rec: &Record, s: GpSeq, expedited: bool) {
        #[cfg(not(rcu_loom))]
        let mut clock = StallClock::new();
        let mut spins: u32 = 0;
        loop {
            // Acquire pairs with the reader's Release stores of its word (as in
            // `wait_for_reader`).
            let w = rec.word.load(Ordering::Acquire);
            if !blocks_gp(w, s) {
                return;
            }
            spins = spins.saturating_add(1);
            #[cfg(rcu_loom)]
            {
                let _ = (expedited, spins);
                crate::primitive::thread::yield_now();
            }
            #[cfg(not(rcu_loom))]
            {
                if spins < SPIN_LIMIT {
                    crate::primitive::thread::spin_hint();
                    continue;
                }
                clock.check(rec, s, w);
                if expedited || spins < SPIN_LIMIT + YIELD_LIMIT {
                    crate::primitive::thread::yield_now();
                } else {
                    clock.sleep();
                }
            }
        }
    }

    /// Clears the records of threads that do not exist in a `fork()` child and resets the lock.
    /// Runs alone in the child; no allocation.
    ///
    /// A record whose thread exited inside a section (reader Invariant 5) is kept as it is: that
    /// section never ends in the parent unless its guard is dropped there, and references read
    /// under it may have been handed to the forking thread, so it never ends in the child.
    #[cfg(not(rcu_loom))]
    pub(crate) fn after_fork_child(&self, own: Option<&Record>) {
        self.gp_lock.reset_after_fork();
        // The callers waiting for the parent's leader do not exist here (the forking thread is
        // not one of them); counting them would make every grace period pause for them.
        self.nwait.store(0, Ordering::Relaxed);
        for rec in self.registry.iter() {
            if own.is_some_and(|o| core::ptr::eq(o, rec)) {
                continue;
            }
            // Relaxed: the child runs alone; fork copied the parent's memory as it was.
            if rec.exited.load(Ordering::Relaxed) {
                continue;
            }
            rec.word.store(0, Ordering::Relaxed);
            rec.owned.store(false, Ordering::Relaxed);
        }
        membarrier::reregister_after_fork(self.mode());
    }
}

/// Timing of one wait: stall reports and the sleep backoff.
#[cfg(not(rcu_loom))]
struct StallClock {
    start: std::time::Instant,
    next_report: std::time::Duration,
    sleep: std::time::Duration,
}

#[cfg(not(rcu_loom))]
impl StallClock {
    fn new() -> Self {
        StallClock {
            start: std::time::Instant::now(),
            next_report: crate::stall::stall_timeout(),
            sleep: std::time::Duration::from_micros(20),
        }
    }

    fn check(&mut self, rec: &Record, s: GpSeq, word: u64) {
        let waited = self.start.elapsed();
        if waited < self.next_report {
            return;
        }
        crate::stall::report(&crate::stall::StallReport {
            kind: crate::stall::StallKind::ReaderStall,
            thread_name: rec.name(),
            tid: rec.tid.load(Ordering::Relaxed),
            duration: waited,
            gp: s,
            nesting: word & crate::reader::NEST_MASK,
        });
        self.next_report = self.next_report.saturating_mul(2).max(waited);
    }

    fn sleep(&mut self) {
        std::thread::sleep(self.sleep);
        self.sleep = (self.sleep * 2).min(std::time::Duration::from_millis(1));
    }
}
