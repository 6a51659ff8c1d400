//! Reader records and the read-side fast path.
//!
//! # Implementation
//!
//! Every thread that takes a read guard owns one [`Record`] in the domain's [`Registry`], a
//! lock-free, append-only list that grace periods scan. The whole reader state is one word,
//! written only by its owner (plain stores, never a read-modify-write), so the fast path writes no
//! shared cache line and is async-signal-safe:
//!
//! ## Reader word
//!
//! | bits   | meaning                                                                    |
//! |--------|----------------------------------------------------------------------------|
//! | 63..16 | low 48 bits of `gp_seq` read when the outermost guard was taken (`snap`)    |
//! | 15     | `EXITED`: the owner exited inside this section (Invariant 6)               |
//! | 14..0  | nesting depth; `0` = quiescent (then the whole word is `0`)                |
//!
//! * outermost lock: `word = (gp_seq << 16) | 1`, then the light barrier;
//! * nested lock / unlock: `word ± 1`;
//! * outermost unlock: `word = 0` with Release (for a marked word, nesting `EXITED + 1`, on a
//!   cold path that also clears `exited`: Invariant 6).
//!
//! A grace period that started with sequence `s` (state bits "in progress") must wait for a record
//! while `nesting > 0 && snap < s` (48-bit wrap-safe): that reader took its snapshot before `s` was
//! published, so it may hold a pointer removed before the grace period. A reader whose `snap >= s`
//! loaded `gp_seq` after the start and therefore (Acquire on the load, Release on the start RMW
//! and on every later RMW of its release sequence) sees every removal that happens-before the
//! start, which includes every removal covered by a snapshot this grace period ends, whoever took
//! that snapshot (`gp`, "Covering another thread's retire"). Because the snapshot is 64-bit rather than liburcu's
//! one-bit phase, a reader that stalls between loading `gp_seq` and storing its word can never be
//! mistaken for a current one by a *later* grace period, so one wait per grace period suffices
//! (liburcu flips the phase and waits twice).
//!
//! ## Invariants
//!
//! 1. Only the owning thread stores to `word` (exception: the single-threaded `fork()` child
//!    clears the records of threads that do not exist there, except those of threads that
//!    exited inside a section, see 5).
//! 2. Records are never freed while the domain lives; `next` is written once before the record is
//!    published with a Release CAS on `head`, so a scanner that Acquire-loads `head` may walk the
//!    list at any time.
//! 3. A record is owned by at most one thread: ownership is taken by a CAS `false → true` on
//!    `owned` and given back by a Release store after `word` is `0`.
//! 4. Signal handlers on the owning thread run whole lock/unlock pairs and restore `word`, so a
//!    handler that interrupts the fast path between its load and its store leaves the interrupted
//!    code's computation valid (it may store a *stale, older* snapshot, which only makes later
//!    grace periods wait longer, never shorter — the next section's accesses come after that store).
//! 5. A thread that exits inside a section keeps its record owned and its word as it is
//!    (`exited` is set): the section ends only when its guard is dropped, by a thread-local
//!    destructor that runs after the exit hook (that outermost unlock gives the record back), or
//!    never (a leaked guard: grace periods wait for it forever, as for a live reader that never
//!    unlocks). Such a record is never handed to another thread while its section is open, so a
//!    late unlock only ever writes its own thread's word.
//! 6. The exit hook marks the word itself ([`EXITED`] added to the nesting field) besides
//!    setting `exited`. The outermost unlock of an ordinary section finds nesting 1 (the fast
//!    path tests only the word it loaded); that of an exited thread's section finds
//!    `EXITED + 1` and ends it on a cold path with one store of `word = 0` that also removes the
//!    mark. So at every instruction boundary (where a signal handler may run) a handler's guard
//!    either nests on the marked word (and never ends the section or gives the record back) or
//!    finds a quiescent word after that single store: exactly one unlock, the outermost one, is
//!    told to give the record back.
//!
//! ## Short of memory
//!
//! A record is allocated fallibly. [`Registry::reserve`] (the global domain calls it at its
//! initialisation) allocates [`SPARE_RECORDS`] records ahead of need, kept out of the list;
//! a registration that finds no free record and cannot allocate one takes a spare (a swap of
//! its slot to null: each spare goes to one thread; slots are filled only from null, so a
//! taken spare never comes back) and publishes it like a new record. With no spare left either,
//! [`Registry::acquire`] reports that once and waits (sleeping) until a record is given back or
//! an allocation succeeds: registration never aborts the process.
//!
//! ## Memory orderings
//!
//! * `gp_seq.load(Acquire)` in lock pairs with the Release start RMW in `gp::start_gp`. The load
//!   may read the start itself or a later snapshot RMW (which adds 0): every modification of
//!   `gp_seq` is an RMW (`gp` Invariant 3), so both are in the start's release sequence. The start
//!   RMW read from the release sequences of the snapshots before it, so the reader happens-after
//!   every update those snapshots cover, including snapshots taken by threads other than the
//!   runner. The load itself stays a plain load: the fast path has no read-modify-write.
//! * `word.store(.., Release)` in lock and unlock pairs with the Acquire load in
//!   `gp::wait_for_reader`: the accesses of a finished critical section happen-before the writer
//!   decides that the reader is quiescent. Lock's store is Release too so that a writer that
//!   observes a *newer* section's word also knows the older section is over.
//! * The light barrier after the outermost store pairs with the heavy barrier of the grace period
//!   (see `sys::membarrier`): either the writer's scan sees the new word, or the reader's
//!   protected loads see the writer's removals.
//! * The Release CAS that fills a spare slot pairs with the Acquire swap that takes it: the
//!   spare's initialisation is visible to its taker (it is then published as in Invariant 2).

use crate::primitive::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};
use crate::seq::GpSeq;
use crate::sys::membarrier::{self, Mode};

/// Width of the nesting field of the reader word.
pub(crate) const NEST_BITS: u32 = 16;
/// Mask of the nesting field (the depth and the [`EXITED`] mark).
pub(crate) const NEST_MASK: u64 = (1 << NEST_BITS) - 1;
/// Added to the nesting field by the exit hook of a thread that exits inside a section
/// (Invariant 5): the section's outermost unlock then finds `EXITED + 1`, not 1, and ends it on
/// the cold path that gives the record back. Marking the word itself keeps the fast path's
/// single load: the outermost unlock tests the word it already loaded.
pub(crate) const EXITED: u64 = 1 << (NEST_BITS - 1);
/// Mask of the nesting depth (without [`EXITED`]); depth is limited to `DEPTH_MASK`.
pub(crate) const DEPTH_MASK: u64 = EXITED - 1;
/// Mask of the 48-bit sequence snapshot once shifted down.
const SNAP_MASK: u64 = (1 << (64 - NEST_BITS)) - 1;
/// Length of the thread-name buffer in a record.
const NAME_WORDS: usize = 4;

/// Whether a reader whose word is `word` may hold references from before the grace period that
/// started with sequence `gp_start`. Wrap-safe in the 48-bit space of the snapshot.
#[inline]
pub(crate) fn blocks_gp(word: u64, gp_start: GpSeq) -> bool {
    if word & NEST_MASK == 0 {
        return false;
    }
    let snap = word >> NEST_BITS;
    let target = gp_start.raw() & SNAP_MASK;
    let dist = target.wrapping_sub(snap) & SNAP_MASK;
    // `snap < target` in 48-bit modular order: distance in (0, 2^47).
    dist != 0 && dist < (1 << 47)
}

/// One reader thread's state, scanned by grace periods.
///
/// Cache-line aligned (128 bytes, the prefetch pair on x86) so that readers never write a line that
/// another reader writes.
#[repr(align(128))]
#[derive(Debug)]
pub struct Record {
    /// The reader word (table above). Written by the owner only; read by grace periods.
    pub(crate) word: AtomicU64,
    /// Barrier mode the owner uses, copied from the domain at registration (owner reads only).
    mode: AtomicU8,
    /// Whether a thread owns this record. CAS by the registering thread; cleared at thread exit
    /// (or, for a thread that exited inside a section, when that section ends: Invariant 5).
    pub(crate) owned: AtomicBool,
    /// Set by the exit hook of a thread that exits inside a section (Invariant 5), with the
    /// word's [`EXITED`] mark; cleared by the outermost unlock that ends that section (Invariant
    /// 6). Unlocks decide by the mark; the flag is for the registry and the `fork()` child.
    /// Written and read by the owning thread only (and by the single-threaded `fork()` child).
    pub(crate) exited: AtomicBool,
    /// Kernel thread id of the owner, for stall reports. Written by the owner at registration.
    pub(crate) tid: AtomicU32,
    /// The owner's thread name (UTF-8, NUL-padded, truncated), for stall reports. Written by the
    /// owner at registration; a report racing with reuse may print a torn name, nothing worse.
    name: [AtomicU64; NAME_WORDS],
    /// Next record in the registry. Written once before publication (Invariant 2).
    next: AtomicPtr<Record>,
}

impl Record {
    fn new(mode: Mode) -> Record {
        Record {
            word: AtomicU64::new(0),
            mode: AtomicU8::new(mode_to_u8(mode)),
            owned: AtomicBool::new(true),
            exited: AtomicBool::new(false),
            tid: AtomicU32::new(0),
            name: core::array::from_fn(|_| AtomicU64::new(0)),
            next: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// The barrier mode of this record's owner.
    #[inline(always)]
    fn mode(&self) -> Mode {
        // Relaxed: written by the owner before it first used the record (same thread).
        if self.mode.load(Ordering::Relaxed) == 0 {
            Mode::Membarrier
        } else {
            Mode::Fences
        }
    }

    /// Current nesting depth of the owner (owner-side query).
    #[inline]
    pub(crate) fn nesting(&self) -> u64 {
        self.word.load(Ordering::Relaxed) & DEPTH_MASK
    }

    /// Records the owner's identity for stall reports.
    pub(crate) fn set_identity(&self, tid: u32, name: Option<&str>) {
        self.tid.store(tid, Ordering::Relaxed);
        let mut buf = [0u8; NAME_WORDS * 8];
        if let Some(n) = name {
            let mut len = n.len().min(buf.len());
            while !n.is_char_boundary(len) {
                len -= 1;
            }
            buf[..len].copy_from_slice(&n.as_bytes()[..len]);
        }
        for (i, w) in self.name.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            // Relaxed: diagnostic only (see the field doc).
            w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
    }

    /// The owner's thread name as recorded at registration (may be empty).
    pub(crate) fn name(&self) -> crate::stall::ThreadName {
        let mut buf = [0u8; NAME_WORDS * 8];
        for (i, w) in self.name.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        // No allocation: stall reports are made while memory may be short.
        crate::stall::ThreadName::from_utf8_prefix(&buf[..end])
    }

    /// Next record in the registry.
    #[inline]
    pub(crate) fn next(&self) -> Option<&Record> {
        // Acquire pairs with the Release CAS that published the next record (Invariant 2).
        let p = self.next.load(Ordering::Acquire);
        // SAFETY: records are never freed while the registry lives (Invariant 2), and the
        // returned reference borrows `self`, which borrows the registry.
        unsafe { p.as_ref() }
    }
}

fn mode_to_u8(mode: Mode) -> u8 {
    match mode {
        Mode::Membarrier => 0,
        Mode::Fences => 1,
    }
}

/// Takes a read lock on `rec`. `gp_seq` is the domain's sequence.
///
/// Async-signal-safe; no allocation, no atomic read-modify-write, only the caller's own record is
/// written.
#[inline(always)]
pub(crate) fn lock(gp_seq: &AtomicU64, rec: &Record) {
    // Relaxed: only this thread writes `word` (Invariant 1).
    let w = rec.word.load(Ordering::Relaxed);
    if w & NEST_MASK == 0 {
        // Acquire pairs with the Release start RMW of a grace period (or a later RMW of its
        // release sequence): if we see it, we see the removals covered by the snapshots it ends,
        // so the writer need not wait for us.
        let s = gp_seq.load(Ordering::Acquire);
        // Release: see "Memory orderings" (a writer seeing this newer word knows the previous
        // section is over).
        rec.word.store((s << NEST_BITS) | 1, Ordering::Release);
        // Light barrier, paired with the grace period's heavy barrier: orders the store above
        // before every protected load of this critical section.
        membarrier::light(rec.mode());
    } else {
        if w & DEPTH_MASK == DEPTH_MASK {
            nesting_overflow();
        }
        // Relaxed: the outermost store already published the section; depth is owner-private.
        rec.word.store(w + 1, Ordering::Relaxed);
    }
}

/// Releases a read lock taken with [`lock`]. Returns whether it ended the section of a thread
/// that exited inside it (Invariant 5): then `exited` has been cleared and the caller, the only
/// one told so, gives the record back.
///
/// Async-signal-safe, like [`lock`]. The decision rests on the word it loaded: nesting 1 is an
/// ordinary outermost unlock, `EXITED + 1` the outermost unlock of an exited thread's section,
/// which one store of `word = 0` ends (Invariant 6); a signal handler's guard on a marked word
/// always nests, so it never ends the section or gives the record back.
#[inline(always)]
pub(crate) fn unlock(rec: &Record) -> bool {
    let w = rec.word.load(Ordering::Relaxed);
    debug_assert!(w & NEST_MASK != 0, "rcu_read_unlock without rcu_read_lock");
    if w & NEST_MASK == 1 {
        // Release pairs with the Acquire load in `gp::wait_for_reader`: every access of the
        // critical section happens-before the writer's decision that we are quiescent.
        rec.word.store(0, Ordering::Release);
        false
    } else if w & NEST_MASK == EXITED + 1 {
        unlock_exited(rec)
    } else {
        rec.word.store(w - 1, Ordering::Relaxed);
        false
    }
}

/// The outermost unlock of a section whose thread exited inside it (Invariant 5): clears
/// `exited`, then ends the section with one store of `word = 0` (which also removes the
/// [`EXITED`] mark, so a handler that runs after it finds a quiescent word and an ordinary
/// record). Tells the caller to give the record back.
#[cold]
#[inline(never)]
fn unlock_exited(rec: &Record) -> bool {
    // Relaxed: `exited` is read by this thread and by a single-threaded fork child only.
    rec.exited.store(false, Ordering::Relaxed);
    // Release: as in `unlock`.
    rec.word.store(0, Ordering::Release);
    true
}

/// The exit hook of a thread inside a section (nesting above zero): marks the word (Invariant
/// 5). Only the owning thread stores to its word; a signal handler that runs between the load
/// and the store restores the word it found (Invariant 4), so the mark is not lost.
pub(crate) fn mark_exited(rec: &Record) {
    let w = rec.word.load(Ordering::Relaxed);
    debug_assert!(w & DEPTH_MASK != 0 && w & EXITED == 0);
    // Relaxed: the section is already published; the mark changes no snapshot.
    rec.word.store(w + EXITED, Ordering::Relaxed);
}

#[cold]
#[inline(never)]
fn nesting_overflow() -> ! {
    panic!(
        "rcu_read_lock nested more than {} deep on one thread",
        DEPTH_MASK
    );
}

/// The list of reader records of one domain.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Most recently added record. Release CAS on push, Acquire load on scan (Invariant 2).
    head: AtomicPtr<Record>,
    /// Records allocated ahead of need ([`Registry::reserve`]), not yet in the list: taken (by
    /// a swap to null) when a record cannot be allocated. Never refilled once taken.
    spare: [AtomicPtr<Record>; SPARE_RECORDS],
}

/// How many records [`Registry::reserve`] allocates ahead of need, for threads that register
/// when no memory can be had (2 KiB).
pub(crate) const SPARE_RECORDS: usize = 16;

impl Registry {
    /// An empty registry.
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new() -> Registry {
        Registry {
            head: AtomicPtr::new(core::ptr::null_mut()),
            spare: [const { AtomicPtr::new(core::ptr::null_mut()) }; SPARE_RECORDS],
        }
    }
    /// An empty registry.
    #[cfg(rcu_loom)]
    pub(crate) fn new() -> Registry {
        Registry {
            head: AtomicPtr::new(core::ptr::null_mut()),
            spare: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
        }
    }

    /// Claims a free record or appends a new one. The record is owned by the caller, quiescent.
    /// Never aborts for want of memory: with none to be had (no free record, no allocation, no
    /// spare left) it reports that once and waits until a record is given back or memory can
    /// be had again (module docs, "Short of memory").
    pub(crate) fn acquire(&self, mode: Mode) -> &Record {
        let mut reported = false;
        loop {
            if let Some(rec) = self.try_acquire(mode) {
                return rec;
            }
            if !reported {
                reported = true;
                crate::lowmem::report(format_args!(
                    "rcu: no memory for a reader record; the thread waits for one"
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Claims a free record, or appends a new one (allocated, else a spare); `None` if there is
    /// none of the three.
    pub(crate) fn try_acquire(&self, mode: Mode) -> Option<&Record> {
        let mut cur = self.first();
        while let Some(rec) = cur {
            // Acquire pairs with the Release store in `release`: the previous owner's last
            // `word = 0` is visible, and it no longer touches the record.
            if !rec.owned.load(Ordering::Relaxed)
                && rec
                    .owned
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                rec.mode.store(mode_to_u8(mode), Ordering::Relaxed);
                return Some(rec);
            }
            cur = rec.next();
        }
        let new = match try_new_record(mode) {
            Some(p) => p,
            None => self.take_spare(mode)?,
        };
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `new` is not yet published; we are its only user.
            unsafe { (*new).next.store(head, Ordering::Relaxed) };
            // Release publishes the initialised record (and its `next`) to scanners (Invariant 2).
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        // SAFETY: published records live as long as the registry (Invariant 2).
        Some(unsafe { &*new })
    }

    /// Fills the empty spare slots with records allocated now (fallibly: a slot stays empty if
    /// there is no memory for it).
    pub(crate) fn reserve(&self) {
        for slot in &self.spare {
            if !slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            let Some(p) = try_new_record(Mode::Fences) else {
                return;
            };
            // Release pairs with the Acquire swap in `take_spare`: the record's initialisation
            // is visible to the thread that takes it.
            if slot
                .compare_exchange(
                    core::ptr::null_mut(),
                    p,
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                // SAFETY: `p` was allocated just above with `Layout::new::<Record>()` (as
                // `Box` does) and never published.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }

    /// Takes a spare record for the caller (owned, not yet published).
    fn take_spare(&self, mode: Mode) -> Option<*mut Record> {
        for slot in &self.spare {
            if slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            // Acquire pairs with the Release CAS in `reserve`. The swap hands each spare to one
            // thread; slots are only ever filled from null, never by a taken record (no ABA).
            let p = slot.swap(core::ptr::null_mut(), Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: the swap made this thread the record's only user; it is unpublished.
                unsafe { (*p).mode.store(mode_to_u8(mode), Ordering::Relaxed) };
                return Some(p);
            }
        }
        None
    }

    /// Gives a record back. Its word must be `0` and `exited` clear (the caller, its owner,
    /// clears them first: [`unlock`] clears `exited` of a record whose thread exited inside a
    /// section, Invariant 6).
    pub(crate) fn release(&self, rec: &Record) {
        debug_assert_eq!(rec.word.load(Ordering::Relaxed), 0);
        debug_assert!(
            !rec.exited.load(Ordering::Relaxed),
            "a record given back while its thread's exited section is open"
        );
        // Release pairs with the Acquire CAS in `acquire` (Invariant 3).
        rec.owned.store(false, Ordering::Release);
    }

    /// The first record of the list.
    #[inline]
    pub(crate) fn first(&self) -> Option<&Record> {
        // Acquire pairs with the Release CAS in `acquire` (Invariant 2).
        let p = self.head.load(Ordering::Acquire);
        // SAFETY: Invariant 2.
        unsafe { p.as_ref() }
    }

    /// Iterates over every record, owned or not.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Record> {
        let mut cur = self.first();
        core::iter::from_fn(move || {
            let r = cur?;
            cur = r.next();
            Some(r)
        })
    }

    /// Number of records (owned or free).
    pub(crate) fn len(&self) -> usize {
        self.iter().count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Only loom models and tests drop registries; the global one lives forever.
        // Relaxed: `&mut self` excludes every other user.
        let mut p = self.head.load(Ordering::Relaxed);
        while !p.is_null() {
            // SAFETY: `&mut self` means no scanner or owner remains; every record was allocated
            // by `try_new_record` and is freed exactly once here.
            let b = unsafe { Box::from_raw(p) };
            p = b.next.load(Ordering::Relaxed);
        }
        for slot in &self.spare {
            let p = slot.load(Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: an unpublished spare, allocated by `try_new_record`, freed once here.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

/// A new record (owned, quiescent), allocated fallibly; `None` if there is no memory for it.
fn try_new_record(mode: Mode) -> Option<*mut Record> {
    let layout = std::alloc::Layout::new::<Record>();
    // SAFETY: `Record` is not zero-sized.
    let p = unsafe { std::alloc::alloc(layout) }.cast::<Record>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a fresh allocation with `Record`'s layout. (`Box::from_raw` may free it:
    // `Box<Record>` allocates with that same layout from the same global allocator.)
    unsafe { p.write(Record::new(mode)) };
    Some(p)
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;

    fn seq(completed: u64, in_progress: bool) -> GpSeq {
        GpSeq::from_raw((completed << 2) | in_progress as u64)
    }

    #[test]
    fn quiescent_never_blocks() {
        assert!(!blocks_gp(0, seq(5, true)));
    }

    #[test]
    fn older_snapshot_blocks_newer_does_not() {
        let old = (seq(5, false).raw() << NEST_BITS) | 1;
        assert!(blocks_gp(old, seq(5, true)));
        let same = (seq(5, true).raw() << NEST_BITS) | 3;
        assert!(!blocks_gp(same, seq(5, true)));
        let newer = (seq(6, false).raw() << NEST_BITS) | 1;
        assert!(!blocks_gp(newer, seq(5, true)));
    }

    #[test]
    fn snapshot_wraps_in_48_bits() {
        // A snapshot just below the 48-bit wrap still blocks a GP just after it.
        let snap_raw = (1u64 << 48) - 4; // idle value right before the wrap
        let word = (snap_raw << NEST_BITS) | 1;
        let gp = GpSeq::from_raw(snap_raw).start().end().start(); // crosses 2^48
        assert!(gp.raw() >= 1 << 48);
        assert!(blocks_gp(word, gp));
    }

    #[test]
    fn lock_unlock_nesting() {
        let reg = Registry::new();
        let rec = reg.acquire(Mode::Fences);
        let gp = AtomicU64::new(seq(3, false).raw());
        lock(&gp, rec);
        assert_eq!(rec.nesting(), 1);
        lock(&gp, rec);
        assert_eq!(rec.nesting(), 2);
        assert!(blocks_gp(
            rec.word.load(Ordering::Relaxed),
            seq(3, false).start()
        ));
        unlock(rec);
        assert_eq!(rec.nesting(), 1);
        unlock(rec);
        assert_eq!(rec.word.load(Ordering::Relaxed), 0);
        reg.release(rec);
        let again = reg.acquire(Mode::Fences);
        assert!(core::ptr::eq(rec, again), "a released record is reused");
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn identity_roundtrip() {
        let reg = Registry::new();
        let rec = reg.acquire(Mode::Fences);
        rec.set_identity(42, Some("a-rather-long-thread-name-that-is-truncated"));
        assert_eq!(rec.name(), "a-rather-long-thread-name-that-i");
        rec.set_identity(7, None);
        assert_eq!(rec.name(), "");
    }
}
