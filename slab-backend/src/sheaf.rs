//! Per-CPU object arrays ("sheaves") and the per-node barn of full and empty sheaves.
//!
//! # Implementation
//!
//! Each CPU slot holds two sheaves, `main` and `spare`, each an array of up to
//! [`SHEAF_CAPACITY`] free object pointers, behind a one-word try-lock. Below the slots sits one
//! *barn* per node with up to [`BARN_MAX`] full and [`BARN_MAX`] empty sheaves; below the barn the
//! per-node slab lists (the [`Backing`] of this module, implemented by the cache).
//!
//! ```text
//!   CPU 0 slot [lock|main|spare]   CPU 1 slot [lock|main|spare]   ...     <- try-lock, no spinning
//!                  \                     /
//!                   barn { full: [..≤10], empty: [..≤10] }                 <- RawLock (leaf)
//!                              |
//!                   node lists: partial / full / empty slabs              <- RawLock (leaf)
//! ```
//!
//! **alloc** (slot locked): pop from `main`; else swap in `spare` if it has objects; else trade the
//! empty `main` for a full sheaf from the barn; else refill `main` from the slabs.
//! **free** (slot locked): push to `main`; else swap with a non-full `spare`; else trade the full
//! `main` for an empty sheaf (the barn's, or a newly allocated one); else (barn holds `BARN_MAX`
//! full sheaves, or no memory for a new sheaf) flush `main` to the slabs and push. A new sheaf is
//! allocated fallibly, *before* the full one is given to the barn (frees run when memory is
//! short, and an infallible allocation failing aborts the process).
//!
//! **Bulk** ([`PerCpu::alloc_bulk`], [`PerCpu::free_bulk`]): the per-thread caches in front of
//! this layer move batches of objects under one slot lock, through the same steps.
//!
//! **Slot choice**: [`Mode::Normal`] starts at the caller's CPU and takes the first slot whose
//! try-lock succeeds; it never waits for a held slot (a stale CPU number or a preempted holder
//! only costs locality). [`Mode::Nolock`] (signal handlers, `kmalloc_nolock`) tries *only* the
//! caller's CPU slot, once: if it is held, the interrupted code on this thread may hold it, and
//! the caller must go elsewhere ([`Miss::Busy`]). In `Nolock` mode the barn and the backing are
//! only try-locked and nothing is allocated or freed with the global allocator.
//!
//! Slot lock states: `false` = free, `true` = held by exactly one thread (or signal handler).
//!
//! **fork()**: the prepare handler takes the slots it can within a bounded wait
//! ([`PerCpu::fork_lock_slots`]) and the barn lock. In the child, a slot still held belongs to a
//! thread that does not exist there and may have stopped between two steps above (a sheaf in
//! the barn and in the slot at once, say), so it is marked `dead` and stays locked: `Normal`
//! callers use another slot, `Nolock` callers on that CPU get [`Miss::Busy`]. The cache's next
//! slow path calls [`PerCpu::revive_dead`], which installs two new empty sheaves and unlocks it;
//! the old sheaves are abandoned with their objects, never read (and `Drop` skips dead slots).
//!
//! Invariants:
//! 1. `main` and `spare` of a slot are never null and are only read or written by the thread
//!    holding the slot lock (or by `&mut self` in `Drop`, or by the reviver of a dead slot,
//!    which holds it).
//! 2. Every object pointer is in exactly one place: a user's hands, one sheaf, or its slab's free
//!    bitmap. Sheaves move between slot and barn only under the lock of both ends.
//! 3. The barn's lists never exceed `BARN_MAX` entries and their capacity is reserved up front, so
//!    pushes under the barn lock never allocate (the `Nolock` mode relies on it).
//! 4. Slots and the barn live as long as the cache; they are never freed while another thread or
//!    a signal handler could reach them (the cache owner destroys them with `&mut` access).
//!
//! ## Memory orderings
//! The slot lock is a CAS `false → true` with Acquire and a `store(false, Release)`: the Release
//! of one holder pairs with the Acquire of the next, so sheaf contents written under the lock are
//! visible to the next holder. The barn uses `RawLock` (same pairing). The `cached`, `allocs`
//! and `frees` mirrors are statistics (Relaxed, written only by the lock holder).

use crate::lock::RawLock;
use crate::primitive::cell::UnsafeCell;
use crate::primitive::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Objects per sheaf (the kernel uses 32 for its VMA and maple-node caches). Loom uses 2.
#[cfg(not(rcu_loom))]
pub const SHEAF_CAPACITY: usize = 32;
/// Objects per sheaf (loom model size).
#[cfg(rcu_loom)]
pub const SHEAF_CAPACITY: usize = 2;

/// Full (and empty) sheaves a barn keeps at most (the kernel's `MAX_FULL_SHEAVES`).
#[cfg(not(rcu_loom))]
pub const BARN_MAX: usize = 10;
/// Full (and empty) sheaves a barn keeps at most (loom model size).
#[cfg(rcu_loom)]
pub const BARN_MAX: usize = 1;

/// How much a caller may do to get or place an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// May block on the barn and node locks, allocate sheaves and new slabs, run shrinkers.
    Normal,
    /// Async-signal-safe: only try-locks, no allocation, only the current CPU's slot.
    Nolock,
}

/// Why an allocation did not produce an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The slot(s) the mode allows were held by someone else.
    Busy,
    /// Slots were free but no object could be had (out of memory, or a `Nolock` try-lock failed).
    Empty,
}

/// An array of free objects.
#[derive(Debug)]
pub struct Sheaf {
    len: usize,
    objs: [*mut u8; SHEAF_CAPACITY],
}

impl Sheaf {
    fn new_boxed() -> *mut Sheaf {
        Box::into_raw(Box::new(Sheaf {
            len: 0,
            objs: [core::ptr::null_mut(); SHEAF_CAPACITY],
        }))
    }

    /// [`Sheaf::new_boxed`], or `None` when the allocation fails (no abort). The result is freed
    /// like the others, with `Box::from_raw`.
    fn try_new_boxed() -> Option<*mut Sheaf> {
        let layout = core::alloc::Layout::new::<Sheaf>();
        // The `heap` fault point refuses like the allocator would.
        if rcu_core::fault::should_fail(rcu_core::fault::Point::Heap, layout.size()) {
            return None;
        }
        // SAFETY: `Sheaf` has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) }.cast::<Sheaf>();
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is a fresh allocation for one `Sheaf` (the global allocator with
        // `Layout::new::<Sheaf>()`, as `Box` uses, so `Box::from_raw` may free it).
        unsafe {
            p.write(Sheaf {
                len: 0,
                objs: [core::ptr::null_mut(); SHEAF_CAPACITY],
            })
        };
        Some(p)
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the sheaf holds no object.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the sheaf is at capacity.
    pub fn is_full(&self) -> bool {
        self.len == SHEAF_CAPACITY
    }

    /// Adds an object; the caller checked `!is_full()`.
    pub fn push(&mut self, obj: *mut u8) {
        debug_assert!(!self.is_full());
        self.objs[self.len] = obj;
        self.len += 1;
    }

    /// Removes the most recently added object.
    pub fn pop(&mut self) -> Option<*mut u8> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.objs[self.len])
    }

    /// The objects held.
    pub fn objects(&self) -> &[*mut u8] {
        &self.objs[..self.len]
    }

    /// Forgets every object (the caller moved them elsewhere).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Where sheaves get objects from and give them back to (the cache's slab lists).
pub trait Backing {
    /// Moves up to `sheaf`'s free room of objects into it; returns how many. In `Nolock` mode it
    /// must not block or allocate (returns 0 instead).
    fn refill(&self, sheaf: &mut Sheaf, mode: Mode) -> usize;
    /// Returns every object of `sheaf` to the slabs and empties it. In `Nolock` mode it may fail
    /// (returns `false`, sheaf unchanged); in `Normal` mode it always succeeds.
    fn flush(&self, sheaf: &mut Sheaf, mode: Mode) -> bool;
}

/// One CPU's slot: a try-lock and two sheaves. Padded so slots do not share cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct CpuSlot {
    locked: AtomicBool,
    /// Invariant 1: non-null, only touched by the lock holder.
    main: UnsafeCell<*mut Sheaf>,
    /// Invariant 1: non-null, only touched by the lock holder.
    spare: UnsafeCell<*mut Sheaf>,
    /// Mirror of `main.len + spare.len` for statistics.
    cached: AtomicUsize,
    /// Objects handed out / taken back through this slot (statistics, written by the holder).
    allocs: AtomicU64,
    frees: AtomicU64,
    /// The `fork()` prepare handler holds this slot (only that handler and the parent and child
    /// handlers touch it, on the forking thread).
    fork_held: AtomicBool,
    /// In a `fork()` child: the slot was held by a thread that does not exist there, so it stays
    /// locked and its sheaves are abandoned until [`PerCpu::revive_dead`] gives it new ones.
    dead: AtomicBool,
}

/// A held slot lock.
struct SlotGuard<'a> {
    slot: &'a CpuSlot,
}

impl SlotGuard<'_> {
    fn main(&mut self) -> &mut Sheaf {
        // SAFETY: Invariant 1: `main` is a valid, non-null Box'd sheaf and we hold the slot lock,
        // so nobody else reads or writes it; `&mut self` prevents a second reference here.
        self.slot.main.with_mut(|p| unsafe { &mut **p })
    }

    fn spare(&mut self) -> &mut Sheaf {
        // SAFETY: as in `main` (Invariant 1).
        self.slot.spare.with_mut(|p| unsafe { &mut **p })
    }

    fn main_ptr(&self) -> *mut Sheaf {
        // SAFETY: we hold the slot lock (Invariant 1), so reading the pointer races with nobody.
        self.slot.main.with(|p| unsafe { *p })
    }

    fn set_main(&mut self, s: *mut Sheaf) {
        debug_assert!(!s.is_null());
        // SAFETY: we hold the slot lock (Invariant 1).
        self.slot.main.with_mut(|p| unsafe { *p = s });
    }

    fn swap_main_spare(&mut self) {
        self.slot.main.with_mut(|m| {
            self.slot.spare.with_mut(|s| {
                // SAFETY: we hold the slot lock (Invariant 1); the two cells are distinct.
                unsafe { core::ptr::swap(m, s) }
            })
        });
    }

    fn count(&self, alloc: bool) {
        let c = if alloc {
            &self.slot.allocs
        } else {
            &self.slot.frees
        };
        // Relaxed load+store, not an RMW: only the lock holder writes this counter.
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let n = self.main().len() + self.spare().len();
        self.slot.cached.store(n, Ordering::Relaxed);
        // Release: pairs with the Acquire CAS of the next holder (publishes the sheaf contents).
        self.slot.locked.store(false, Ordering::Release);
    }
}

impl CpuSlot {
    fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
            main: UnsafeCell::new(Sheaf::new_boxed()),
            spare: UnsafeCell::new(Sheaf::new_boxed()),
            cached: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            fork_held: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        }
    }

    fn try_lock(&self) -> Option<SlotGuard<'_>> {
        // Acquire: pairs with the Release store in SlotGuard::drop of the previous holder.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SlotGuard { slot: self })
    }
}

/// The barn's lists (guarded by `Barn::lock`).
#[derive(Debug)]
struct BarnLists {
    full: Vec<*mut Sheaf>,
    empty: Vec<*mut Sheaf>,
}

/// Per-node store of full and empty sheaves.
#[derive(Debug)]
struct Barn {
    lock: RawLock,
    lists: UnsafeCell<BarnLists>,
    /// Mirror of `full.len() * SHEAF_CAPACITY` for statistics (written under the lock).
    cached: AtomicUsize,
}

impl Barn {
    fn new() -> Self {
        Self {
            lock: RawLock::new(),
            // Invariant 3: capacity reserved, pushes never allocate.
            lists: UnsafeCell::new(BarnLists {
                full: Vec::with_capacity(BARN_MAX),
                empty: Vec::with_capacity(BARN_MAX),
            }),
            cached: AtomicUsize::new(0),
        }
    }

    fn acquire(&self, mode: Mode) -> bool {
        match mode {
            Mode::Normal => {
                self.lock.lock();
                true
            }
            Mode::Nolock => self.lock.try_lock(),
        }
    }

    /// Runs `f` on the lists with the barn lock held (or returns `None` if a `Nolock` try failed).
    fn with<R>(&self, mode: Mode, f: impl FnOnce(&mut BarnLists) -> R) -> Option<R> {
        if !self.acquire(mode) {
            return None;
        }
        let r = self.lists.with_mut(|l| {
            // SAFETY: the barn lock is held, so we are the only user of the lists.
            let l = unsafe { &mut *l };
            let r = f(l);
            self.cached
                .store(l.full.len() * SHEAF_CAPACITY, Ordering::Relaxed);
            r
        });
        self.lock.unlock();
        Some(r)
    }

    /// Trades an empty sheaf for a full one. The empty one is kept if there is room; otherwise it
    /// is handed back to be freed (only in `Normal` mode; `Nolock` declines the trade instead).
    fn trade_empty_for_full(
        &self,
        empty: *mut Sheaf,
        mode: Mode,
    ) -> Option<(*mut Sheaf, Option<*mut Sheaf>)> {
        self.with(mode, |l| {
            if l.full.is_empty() {
                return None;
            }
            let to_free = if l.empty.len() < BARN_MAX {
                l.empty.push(empty);
                None
            } else if mode == Mode::Normal {
                Some(empty)
            } else {
                return None;
            };
            let full = l.full.pop().expect("checked non-empty");
            Some((full, to_free))
        })
        .flatten()
    }

    /// Stores a full sheaf if there is room and hands back an empty one: the barn's, else
    /// `fresh` (the caller's new one, `Normal` mode only). `Ok((empty, unused))` hands `fresh`
    /// back unused if the barn had an empty one; on refusal `fresh` comes back too.
    fn trade_full_for_empty(
        &self,
        full: *mut Sheaf,
        fresh: Option<*mut Sheaf>,
        mode: Mode,
    ) -> Result<(*mut Sheaf, Option<*mut Sheaf>), Refused> {
        self.with(mode, |l| {
            if l.full.len() >= BARN_MAX {
                return Err(Refused::Full(fresh));
            }
            let (empty, unused) = match (l.empty.pop(), fresh) {
                (Some(e), fresh) => (e, fresh),
                (None, Some(f)) => (f, None),
                (None, None) => return Err(Refused::NoEmpty),
            };
            l.full.push(full);
            Ok((empty, unused))
        })
        .unwrap_or(Err(Refused::Full(fresh)))
    }
}

/// Frees a sheaf from [`Sheaf::try_new_boxed`] that nobody else saw.
fn free_fresh(s: Option<*mut Sheaf>) {
    if let Some(s) = s {
        // SAFETY: allocated like a `Box<Sheaf>` (`try_new_boxed`), owned by the caller alone.
        drop(unsafe { Box::from_raw(s) });
    }
}

/// Why [`Barn::trade_full_for_empty`] declined.
enum Refused {
    /// The barn holds `BARN_MAX` full sheaves or could not be locked; the caller's fresh sheaf
    /// comes back.
    Full(Option<*mut Sheaf>),
    /// No empty sheaf to give, and the caller brought none.
    NoEmpty,
}

/// The per-CPU layer of one cache: one slot per possible CPU, one barn (one node).
#[derive(Debug)]
pub struct PerCpu {
    slots: Box<[CpuSlot]>,
    barn: Barn,
}

// SAFETY: the raw sheaf pointers are owned by the slots and the barn and only dereferenced under
// their locks (Invariants 1 and 2); the object pointers inside are plain addresses of slab memory
// that may be handed to any thread.
unsafe impl Send for PerCpu {}
// SAFETY: as for Send: all shared access to the interior goes through the slot or barn locks.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    /// A layer with `ncpus` slots (at least one).
    pub fn new(ncpus: usize) -> Self {
        Self {
            slots: (0..ncpus.max(1)).map(|_| CpuSlot::new()).collect(),
            barn: Barn::new(),
        }
    }

    #[inline]
    fn lock_slot(&self, cpu: usize, mode: Mode) -> Option<SlotGuard<'_>> {
        let n = self.slots.len();
        let cpu = if cpu < n { cpu } else { cpu % n };
        if let Some(g) = self.slots[cpu].try_lock() {
            return Some(g);
        }
        if mode == Mode::Nolock {
            return None;
        }
        self.lock_other_slot(cpu)
    }

    /// The own slot is held: take the first free one after it, never waiting.
    #[cold]
    fn lock_other_slot(&self, cpu: usize) -> Option<SlotGuard<'_>> {
        let n = self.slots.len();
        (1..n).find_map(|i| {
            let j = cpu + i;
            self.slots[if j >= n { j - n } else { j }].try_lock()
        })
    }

    /// Takes an object for the caller running on `cpu`.
    pub fn alloc<B: Backing>(&self, cpu: usize, b: &B, mode: Mode) -> Result<*mut u8, Miss> {
        let mut g = self.lock_slot(cpu, mode).ok_or(Miss::Busy)?;
        if let Some(o) = g.main().pop() {
            g.count(true);
            return Ok(o);
        }
        let r = self.alloc_slow(&mut g, b, mode);
        if r.is_ok() {
            g.count(true);
        }
        r
    }

    #[cold]
    fn alloc_slow<B: Backing>(
        &self,
        g: &mut SlotGuard<'_>,
        b: &B,
        mode: Mode,
    ) -> Result<*mut u8, Miss> {
        if !g.spare().is_empty() {
            g.swap_main_spare();
            return g.main().pop().ok_or(Miss::Empty);
        }
        if let Some((full, to_free)) = self.barn.trade_empty_for_full(g.main_ptr(), mode) {
            g.set_main(full);
            if let Some(e) = to_free {
                // SAFETY: `e` was our main sheaf (a Box from `new_boxed`), now owned by nobody else;
                // Normal mode only (trade_empty_for_full never returns it in Nolock mode).
                drop(unsafe { Box::from_raw(e) });
            }
            return g.main().pop().ok_or(Miss::Empty);
        }
        b.refill(g.main(), mode);
        g.main().pop().ok_or(Miss::Empty)
    }

    /// Gives an object back for the caller running on `cpu`. `Err(obj)` if no slot could take it
    /// (busy slots, or a `Nolock` caller could not make room).
    pub fn free<B: Backing>(
        &self,
        cpu: usize,
        b: &B,
        obj: *mut u8,
        mode: Mode,
    ) -> Result<(), *mut u8> {
        let Some(mut g) = self.lock_slot(cpu, mode) else {
            return Err(obj);
        };
        if !g.main().is_full() {
            g.main().push(obj);
            g.count(false);
            return Ok(());
        }
        let r = self.free_slow(&mut g, b, obj, mode);
        if r.is_ok() {
            g.count(false);
        }
        r
    }

    #[cold]
    fn free_slow<B: Backing>(
        &self,
        g: &mut SlotGuard<'_>,
        b: &B,
        obj: *mut u8,
        mode: Mode,
    ) -> Result<(), *mut u8> {
        if !g.spare().is_full() {
            g.swap_main_spare();
            g.main().push(obj);
            return Ok(());
        }
        // Without an empty sheaf from the barn, Normal mode allocates one — fallibly, and before
        // our full one is given away (module docs); no memory means flush instead.
        let mut fresh = None;
        let unused = loop {
            match self.barn.trade_full_for_empty(g.main_ptr(), fresh, mode) {
                Ok((empty, unused)) => {
                    g.set_main(empty);
                    break unused;
                }
                Err(Refused::NoEmpty) if mode == Mode::Normal => {
                    if let Some(f) = Sheaf::try_new_boxed() {
                        fresh = Some(f); // and trade again
                        continue;
                    }
                }
                Err(Refused::NoEmpty) => {}
                Err(Refused::Full(unused)) => {
                    if b.flush(g.main(), mode) {
                        break unused;
                    }
                    free_fresh(unused);
                    return Err(obj);
                }
            }
            if !b.flush(g.main(), mode) {
                return Err(obj);
            }
            break None;
        };
        free_fresh(unused);
        g.main().push(obj);
        Ok(())
    }

    /// Takes up to `out.len()` objects under one slot lock (the per-thread caches' refill).
    /// Returns how many (at least one), or why none. Transfers are not counted as allocations:
    /// the caller counts what it hands to users.
    pub fn alloc_bulk<B: Backing>(
        &self,
        cpu: usize,
        b: &B,
        out: &mut [*mut u8],
        mode: Mode,
    ) -> Result<usize, Miss> {
        let mut g = self.lock_slot(cpu, mode).ok_or(Miss::Busy)?;
        let mut n = 0;
        while n < out.len() {
            let o = match g.main().pop() {
                Some(o) => o,
                None => match self.alloc_slow(&mut g, b, mode) {
                    Ok(o) => o,
                    Err(_) if n > 0 => break,
                    Err(e) => return Err(e),
                },
            };
            out[n] = o;
            n += 1;
        }
        Ok(n)
    }

    /// Gives back a batch of objects under one slot lock (the per-thread caches' flush).
    /// `Err(k)`: the objects from index `k` on could not be placed (no slot could be locked, or a
    /// `Nolock` caller could not make room). Transfers are not counted as frees.
    pub fn free_bulk<B: Backing>(
        &self,
        cpu: usize,
        b: &B,
        objs: &[*mut u8],
        mode: Mode,
    ) -> Result<(), usize> {
        let Some(mut g) = self.lock_slot(cpu, mode) else {
            return Err(0);
        };
        for (i, &o) in objs.iter().enumerate() {
            if !g.main().is_full() {
                g.main().push(o);
            } else if self.free_slow(&mut g, b, o, mode).is_err() {
                return Err(i);
            }
        }
        Ok(())
    }

    /// Flushes every slot and the barn's full sheaves to the backing (`Normal` mode). With
    /// `wait`, held slots are waited for (destroy: the owner has exclusive access, so holders are
    /// only finishing); without it they are skipped (shrink must never wait on a held slot: the
    /// holder may be this very thread, inside a page allocation that runs shrinkers).
    pub fn flush_all<B: Backing>(&self, b: &B, wait: bool) {
        for slot in self.slots.iter() {
            let g = loop {
                match slot.try_lock() {
                    Some(g) => break Some(g),
                    None if wait => crate::primitive::thread::yield_now(),
                    None => break None,
                }
            };
            if let Some(mut g) = g {
                b.flush(g.main(), Mode::Normal);
                b.flush(g.spare(), Mode::Normal);
            }
        }
        // `pop`, not `take`: the list keeps its reserved capacity (Invariant 3), so a `Nolock`
        // push between the two critical sections below still never allocates. Into an array on
        // the stack: a shrink runs when memory is short (the barn never holds more than
        // `BARN_MAX` full sheaves).
        let mut full = [core::ptr::null_mut::<Sheaf>(); BARN_MAX];
        let n = self
            .barn
            .with(Mode::Normal, |l| {
                debug_assert!(l.full.len() <= BARN_MAX);
                let mut n = 0;
                while n < BARN_MAX {
                    let Some(s) = l.full.pop() else { break };
                    full[n] = s;
                    n += 1;
                }
                n
            })
            .unwrap_or(0);
        for &s in &full[..n] {
            // SAFETY: the sheaf left the barn above; we are its only owner now.
            let sheaf = unsafe { &mut *s };
            b.flush(sheaf, Mode::Normal);
        }
        let kept = self
            .barn
            .with(Mode::Normal, |l| {
                let mut kept = 0;
                while kept < n && l.empty.len() < BARN_MAX {
                    l.empty.push(full[kept]);
                    kept += 1;
                }
                kept
            })
            .unwrap_or(0);
        for &s in &full[kept..n] {
            // SAFETY: a Box'd sheaf that is no longer referenced anywhere.
            drop(unsafe { Box::from_raw(s) });
        }
    }

    /// Objects cached in slots and the barn (a racy statistic).
    pub fn cached_objects(&self) -> usize {
        let slots: usize = self
            .slots
            .iter()
            .map(|s| s.cached.load(Ordering::Relaxed))
            .sum();
        slots + self.barn.cached.load(Ordering::Relaxed)
    }

    /// Objects handed out and taken back through the slots (statistics).
    pub fn counts(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(a, f), s| {
            (
                a + s.allocs.load(Ordering::Relaxed),
                f + s.frees.load(Ordering::Relaxed),
            )
        })
    }

    /// `fork()` prepare handler, first step: takes every slot whose holder lets go before
    /// `expired()` says the time is up (a holder may be blocked on a lock the handler already
    /// holds, e.g. inside a page allocation that runs the slab shrinker, so this cannot wait
    /// for good). Slots taken are marked `fork_held`. No allocation.
    pub fn fork_lock_slots(&self, expired: &mut dyn FnMut() -> bool) {
        for slot in self.slots.iter() {
            let g = loop {
                if let Some(g) = slot.try_lock() {
                    break Some(g);
                }
                if expired() {
                    break None;
                }
                crate::primitive::thread::yield_now();
            };
            if let Some(g) = g {
                // Keep the slot locked past this function: the parent or child handler
                // releases it (`fork_unlock_slots`, `fork_child`).
                core::mem::forget(g);
                slot.fork_held.store(true, Ordering::Relaxed);
            }
        }
    }

    /// `fork()` prepare handler, second step: takes the barn lock.
    pub fn fork_lock_barn(&self) {
        self.barn.lock.lock();
    }

    /// `fork()` parent handler: releases the barn and the slots `fork_lock_slots` took.
    pub fn fork_unlock(&self) {
        self.barn.lock.unlock();
        for slot in self.slots.iter() {
            if slot.fork_held.swap(false, Ordering::Relaxed) {
                // Release: pairs with the next holder's Acquire CAS (nothing changed, but the
                // lock protocol stays uniform).
                slot.locked.store(false, Ordering::Release);
            }
        }
    }

    /// `fork()` child handler: releases the barn and the slots the prepare handler took; every
    /// other held slot was held by a thread that does not exist in the child, perhaps in the
    /// middle of moving sheaves, so it is marked dead and left locked (its objects are lost to
    /// the child). Returns whether a slot was marked dead. No allocation.
    pub fn fork_child(&self) -> bool {
        self.barn.lock.unlock();
        let mut dead = false;
        // Relaxed throughout: the child is single-threaded here.
        for slot in self.slots.iter() {
            if slot.fork_held.swap(false, Ordering::Relaxed) {
                slot.locked.store(false, Ordering::Relaxed);
            } else if slot.locked.load(Ordering::Relaxed) {
                slot.dead.store(true, Ordering::Relaxed);
                dead = true;
            }
        }
        dead
    }

    /// Gives every dead slot (a `fork()` child's, see [`PerCpu::fork_child`]) two new empty
    /// sheaves and unlocks it; the old sheaves and the objects in them are leaked. `Normal`
    /// context only (allocates). Returns how many slots were revived.
    pub fn revive_dead(&self) -> usize {
        let mut n = 0;
        for slot in self.slots.iter() {
            // The CAS claims the dead slot: it is still locked, so from here this thread is its
            // holder (Invariant 1), and no other reviver touches it. Relaxed: nothing is read
            // through the claim (the old sheaves are abandoned); the new ones are published by
            // the Release unlock below.
            if slot
                .dead
                .compare_exchange(true, false, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SAFETY: we hold the slot (above); the old pointers are abandoned, not freed (their
            // state is unknown: the holder died mid-operation).
            slot.main.with_mut(|p| unsafe { *p = Sheaf::new_boxed() });
            // SAFETY: as above.
            slot.spare.with_mut(|p| unsafe { *p = Sheaf::new_boxed() });
            slot.cached.store(0, Ordering::Relaxed);
            // Release: pairs with the next holder's Acquire CAS (publishes the new sheaves).
            slot.locked.store(false, Ordering::Release);
            n += 1;
        }
        n
    }

    /// Model hook: takes the slot of `cpu` and never releases it, as a thread that holds it at
    /// `fork()` and does not exist in the child (the loom model of [`PerCpu::revive_dead`]).
    #[doc(hidden)]
    pub fn hold_slot_forever(&self, cpu: usize) {
        let g = self.slots[cpu % self.slots.len()]
            .try_lock()
            .expect("hold_slot_forever: slot busy");
        core::mem::forget(g);
    }

    /// Test hook: runs `f` while the slot of `cpu` is held, as an interrupted allocator would.
    #[cfg(not(rcu_loom))]
    pub(crate) fn with_slot_held<R>(&self, cpu: usize, f: impl FnOnce() -> R) -> R {
        let slot = &self.slots[cpu % self.slots.len()];
        let g = loop {
            // Other threads hold slots only briefly.
            if let Some(g) = slot.try_lock() {
                break g;
            }
            std::thread::yield_now();
        };
        let r = f();
        drop(g);
        r
    }
}

impl Drop for PerCpu {
    fn drop(&mut self) {
        // The owner flushed the objects before; here only the sheaf boxes go (Invariant 4).
        for slot in self.slots.iter() {
            if slot.dead.load(Ordering::Relaxed) {
                // A `fork()` child's dead slot: its pointers may alias a barn sheaf; leak them.
                continue;
            }
            for cell in [&slot.main, &slot.spare] {
                // SAFETY: `&mut self`: no holder exists; the pointers are Box'd sheaves.
                cell.with_mut(|p| unsafe {
                    debug_assert!((**p).is_empty(), "sheaf dropped with objects in it");
                    drop(Box::from_raw(*p));
                });
            }
        }
        self.barn.lists.with_mut(|l| {
            // SAFETY: `&mut self`: nobody else uses the barn.
            let l = unsafe { &mut *l };
            for s in l.full.drain(..).chain(l.empty.drain(..)) {
                // SAFETY: Box'd sheaves owned by the barn.
                drop(unsafe { Box::from_raw(s) });
            }
        });
    }
}
