//! Grace periods: the domain state, `synchronize_rcu`, and the polled-state helpers.
//!
//! # Implementation
//!
//! A [`Domain`] owns the grace-period sequence `gp_seq` (see [`crate::seq`]), the registry of
//! reader records and a lock that serialises grace periods. One grace period:
//!
//! ```text
//!   updater                 runner (holds gp_lock)              reader (owns one record)
//!   -------                 ----------------------              ------------------------
//!   unpublish
//!   snap = gp_seq.fetch_add(0).snap()
//!       ╰── release sequence ──→ s = gp_seq.fetch_add(1)  ──────→ w = gp_seq (Acquire)
//!                           heavy barrier ───── pairs ────────── word = (w<<16)|1 ; light barrier
//!                           for rec in registry:                 ... protected loads ...
//!                               wait while blocks_gp(word, s)    word = 0 (Release)
//!                           gp_seq.fetch_add(end - s)
//!   poll(snap) (Acquire) ←─────────╯
//! ```
//!
//! Every modification of `gp_seq` is a read-modify-write (AcqRel): snapshots add 0, the runner
//! adds the step to the start and to the end value (Invariant 3).
//!
//! **One heavy barrier per grace period.** liburcu-memb issues a membarrier at the start and one at
//! the end of `synchronize_rcu`. The end one orders the readers' critical sections before the
//! caller's free; here the readers' outermost unlock is a Release store and the scan an Acquire
//! load, which gives that order without a second IPI round. The 64-bit snapshot in the reader word
//! removes liburcu's second *wait* (its one-bit phase flip).
//!
//! **Sharing.** A caller takes its snapshot (`get_state`: an RMW of `gp_seq`). If `snap` is not done
//! it tries to become the *leader* (`gp_lock.try_lock()`) and runs grace periods until it is; the
//! others sleep on `gp_wake`, which the leader bumps and broadcasts (`FUTEX_WAKE` all) whenever it
//! releases the lock. On waking, every caller whose snapshot is done returns together; of the rest
//! (they arrived while that grace period ran) one becomes the next leader. So each grace period
//! serves every caller that arrived before it started — liburcu's waiter-queue batching, without
//! the queue.
//!
//! **Polling.** `get_state` = RMW + `snap`; `poll(snap)` = Acquire load + `done`. A state
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
//! **Covering another thread's retire.** A grace period protects an update if the update
//! happens-before the snapshot's RMW of `gp_seq` (`get_state`), whoever runs the grace period.
//! Because every modification of `gp_seq` is an RMW with Release (Invariant 3), its modification
//! order is one chain of RMWs, and the release sequence headed by any of them contains every
//! later one. The start RMW of the grace period that ends a snapshot follows the snapshot's RMW in
//! that order (a snapshot that read an idle value asks for the next grace period to start, one
//! that read "in progress" for the one after), so with its Acquire it reads from the snapshot's
//! release sequence: the update happens-before the start, its heavy barrier and its scan. A reader
//! that loads the start value (Acquire) reads from the start RMW or a later snapshot RMW, all in
//! the start's release sequence, so it happens-after the start and sees the update; a reader that
//! loaded an older value is found by the scan or sees the update (heavy/light pairing: the update
//! happens-before the heavy barrier).
//!
//! A fence and a plain load would not do: a load that reads the value from before the start
//! store is only a read-before edge, not happens-before. A reader whose light barrier is a
//! compiler fence (membarrier mode) may load the new start value and still miss the update: the
//! updater's fence pairs with nothing on the reader's side, and the heavy barrier follows the
//! start store, possibly after the reader's whole section (the RWC pattern; C++20 allows the
//! outcome and POWER exhibits it; x86 and ARMv8 forbid it). liburcu closes the same gap with its
//! waiter queue: a waiter enqueues with an atomic exchange that the leader reads before it flips
//! the phase. The loom model `shared_grace_period_covers_other_threads_unpublish` fails with a
//! fence and a load and passes with the RMW.
//!
//! The paths that share or take over grace periods rely on this:
//! * shared `synchronize`: every caller takes its own snapshot (`get_state`, after its
//!   removals); the leader only runs grace periods until the callers' snapshots are done, and
//!   each caller returns on its own `poll`.
//! * `try_advance` and a taken-over grace period: the snapshot is still the caller's own. A grace
//!   period left in progress ends only snapshots whose RMWs precede its start RMW, so their
//!   updates happen-before that start, and a reader that loads the start value sees them as when
//!   the caller starts the grace period itself. The runner that finishes it changes nothing in
//!   `gp_seq` until the end (readers keep loading the original start); it issues a new heavy
//!   barrier (which the updates happen-before, through the first runner's `gp_lock` release) and
//!   scans every record again.
//! * grace periods run for someone else's snapshot (the callback worker's, a kfree collector's):
//!   that snapshot is taken by a thread that *happens-after* the retire (lock release/acquire,
//!   Release push / Acquire take), so the retire is covered as the taker's own update would be.
//!   A collector that has only a read-before edge to the retire (the retirer's access *after*
//!   the update read a value from before the collector's action) is not covered: the retire may
//!   still be in the retirer's store buffer, and a nested `rcu_read_lock` has no barrier at all.
//!   Such a collector waits for one more grace period (kfree-batch's stolen front blocks).
//!
//! **fork().** The child's `gp_lock` is reset, and so is `nwait` (the parent's waiting callers do
//! not exist in the child; counted, they would make every grace period pause for them); if the
//! parent was in the middle of a grace period, `gp_seq` still says "in progress" and the next
//! runner finishes that grace period (scanning the records again) instead of starting a new one.
//!
//! ## Invariants
//!
//! 1. `gp_seq`'s value is only changed by the holder of `gp_lock`; every other thread only loads
//!    it or adds 0 to it (a snapshot).
//! 2. A grace period ends only after every record that blocked its start value was seen quiescent
//!    or newer (Acquire), so every critical section that began before the start happens-before the
//!    end.
//! 3. After its initialisation, every modification of `gp_seq` is a read-modify-write with
//!    Release (or stronger) semantics: the snapshot's `fetch_add(0, AcqRel)`, the start's and the
//!    end's `fetch_add(step, AcqRel)`. No plain store may be added (one would end every release
//!    sequence that reaches it, and a later start would no longer happen-after the snapshots
//!    before it). The fork child handler does not touch `gp_seq`.
//!
//! ## Memory orderings
//!
//! * snapshot RMW (Release half) → start RMW (Acquire half) of the grace period that ends it,
//!   through the release sequence (Invariant 3): the snapshot taker's earlier updates
//!   happen-before the start.
//! * start RMW Release ↔ reader's `gp_seq` Acquire load (see `reader`), which reads the start or
//!   a later RMW of its release sequence.
//! * heavy barrier ↔ every reader's light barrier.
//! * scan Acquire loads ↔ readers' Release stores of their word.
//! * end RMW Release ↔ `poll` Acquire load: the waiter's frees happen after every old section.
//!   The end is an RMW, not a store, so that a snapshot taken while the grace period runs still
//!   reaches the next start through it.

use crate::primitive::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
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
    /// The grace-period sequence. Changed by the `gp_lock` holder (Invariant 1), only ever by
    /// read-modify-writes (Invariant 3); loaded by every reader's outermost lock and every
    /// poller. Alone on its cache line pair.
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
        // Relaxed: published to readers by the registration path (`init`'s Release store of its
        // done mark, read with Acquire), which happens-before any record is handed out.
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

    /// Registers a reader (claims or creates a record). With no memory for a new record it takes
    /// one reserved by [`Domain::reserve_records`], and with none of those either it waits for a
    /// record to be given back or for memory (reported once on stderr); it never aborts.
    pub fn register(&self) -> &Record {
        self.registry.acquire(self.mode())
    }

    /// Allocates (fallibly) up to a fixed number of reader records ahead of need, for
    /// [`Domain::register`] to use when no memory can be had. Idempotent while they are unused.
    pub fn reserve_records(&self) {
        self.registry.reserve()
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

    /// The current sequence (Acquire: pairs with the Release end RMW).
    #[inline]
    pub fn current(&self) -> GpSeq {
        GpSeq(self.gp_seq.load(Ordering::Acquire))
    }

    /// A snapshot whose completion proves that every reader that could have seen the caller's
    /// earlier updates has finished.
    #[inline]
    pub fn get_state(&self) -> GpSeq {
        // An RMW, not a load (module docs, "Covering another thread's retire"): its Release puts
        // the caller's prior updates at the head of a release sequence that every later change
        // of gp_seq continues (Invariant 3), so the start RMW of the grace period that ends the
        // snapshot happens-after them, and so does every reader that loads that start value.
        // Without it (a fence and a load), a reader whose light barrier is a compiler fence may
        // load the start value and still miss the update. The Acquire half orders the caller
        // after the grace periods it sees ended, like `poll`. Adding 0 leaves the value alone;
        // compilers keep an idempotent RMW with Release (x86 may lower it to a full fence and a
        // load, which gives the same order under x86-TSO).
        GpSeq(self.gp_seq.fetch_add(0, Ordering::AcqRel)).snap()
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
        // Acquire (in `current`) pairs with the Release end RMW: frees that follow happen after
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
        // Relaxed: only the lock holder changes gp_seq (Invariant 1; snapshots add 0); the lock's
        // Acquire made the previous holder's last change visible.
        let cur = GpSeq(self.gp_seq.load(Ordering::Relaxed));
        let s = if cur.in_progress() {
            // Left in progress by `try_advance`, or by a parent that forked mid-grace-period:
            // finish it (its readers are scanned again after a new heavy barrier). No RMW: the
            // snapshots it ends precede its start RMW, which the previous holder's lock release
            // passed on to us; readers keep loading that start value.
            cur
        } else {
            let s = cur.start();
            // An RMW (Invariant 3). Acquire: reads from the release sequence of every snapshot RMW
            // before it, so the updates those snapshots cover happen-before this start, the heavy
            // barrier and the scan. Release pairs with the readers' Acquire load of gp_seq: a
            // reader that sees `s` (from this RMW or a later snapshot's) sees those updates.
            let prev = self.gp_seq.fetch_add(1, Ordering::AcqRel);
            debug_assert_eq!(prev, cur.raw(), "gp_seq changed outside gp_lock");
            s
        };
        membarrier::heavy(self.mode());
        self.heavy_barriers.fetch_add(1, Ordering::Relaxed);
        s
    }

    /// Ends grace period `s` (every reader that blocked it was seen quiescent or newer).
    fn end_gp(&self, s: GpSeq) {
        // An RMW (Invariant 3): a plain store would end the release sequences of the snapshots
        // taken during this grace period, which the next start must read from. Release pairs
        // with `poll`'s Acquire (Invariant 2); the Acquire half is not needed (AcqRel like the
        // start, for uniformity).
        let prev = self
            .gp_seq
            .fetch_add(s.end().raw().wrapping_sub(s.raw()), Ordering::AcqRel);
        debug_assert_eq!(prev, s.raw(), "gp_seq changed outside gp_lock");
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
    /// under it may have been handed to the forking thread, so it never ends in the child — even
    /// when a thread-local destructor was about to drop the guard in the parent, which the child
    /// cannot tell from a leaked guard (`global` module docs, "Exited sections in the child").
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
            nesting: word & crate::reader::DEPTH_MASK,
        });
        self.next_report = self.next_report.saturating_mul(2).max(waited);
    }

    fn sleep(&mut self) {
        std::thread::sleep(self.sleep);
        self.sleep = (self.sleep * 2).min(std::time::Duration::from_millis(1));
    }
}
