//! Per-thread object caches in front of the per-CPU sheaves (glibc's tcache in front of its
//! arenas).
//!
//! # Implementation
//!
//! The per-CPU slots cost one `lock cmpxchg` per operation (10–20 ns on a VM), more than the
//! rest of the fast path together. So every thread keeps, per cache, a small LIFO array of up to
//! [`TCACHE_CAPACITY`] free objects (an [`Entry`]) that it pops and pushes with plain loads and
//! stores only. When the array is empty, `alloc` refills [`TCACHE_BATCH`] objects from the
//! per-CPU layer under one slot try-lock; when it is full, `free` moves the [`TCACHE_BATCH`]
//! oldest objects there in one go. Objects in an entry are *free* objects: they are counted as
//! cached in `stats()`, and `shrink()`, destroy and the slab shrinker take them back.
//!
//! ## Layout
//!
//! Each cache gets a small id (`RawCache::tc_id`, [`NO_ID`] when all [`MAX_IDS`] are taken: that
//! cache simply has no thread cache). Each thread owns a [`ThreadCaches`] block with one entry
//! per id: the first [`INLINE_IDS`] entries inside the block (so `kfree`, which finds the id in
//! the slab header, reaches the entry with no further dependent load), the others allocated on
//! first use. The block is found through a `const` thread-local pointer (one `%fs`-relative
//! load, no lazy initialiser). Blocks are registered in a global lock-free list,
//! never freed, and reused by later threads, so a stealer can always reach them (also after the
//! owner exited).
//!
//! The thread cache is optional, so its setup fails softly when memory is short (frees run
//! exactly then): the block and the out-of-line entries are allocated fallibly, and a thread's
//! registration first checks that it can allocate [`REGISTER_HEADROOM`] bytes, because the
//! exit hook's thread-local destructor is registered with glibc's `__cxa_thread_atexit_impl`,
//! which *aborts the process* if its own allocation fails. Without them the call takes the
//! per-CPU path and a later call tries again.
//!
//! ## Owner windows and stealing (an asymmetric Dekker protocol)
//!
//! The owner touches an entry's contents only inside a *window*:
//!
//! ```text
//!   owner (any thread, own block only)           stealer (shrink / destroy of cache C)
//!   ----------------------------------           -------------------------------------
//!   busy = true                   (Relaxed)      C.steal += 1                (Relaxed RMW)
//!   light barrier  (compiler fence)              heavy barrier (membarrier: a full fence
//!   if C.steal != 0 (Acquire):                                  on every running thread)
//!       busy = false; use the per-CPU path       for every block with an entry bound to C:
//!   pop / push objs[len], len, counters              wait until busy == false (Acquire)
//!   busy = false                  (Release)          take objs[..len]; len = 0
//!                                                C.steal -= 1                (Release RMW)
//! ```
//!
//! The light/heavy pair acts as a `fence(SeqCst)` on both sides (the pairing rcu-core's readers
//! use; with `RCU_KIT_NO_MEMBARRIER=1` or without membarrier both sides are real fences). So for
//! every owner window either the window's `busy = true` is visible to the stealer's scan (it
//! waits for the window to end, and the Release/Acquire pair on `busy` makes the window's writes
//! visible), or the window reads `steal != 0` and leaves without touching the contents. A window
//! never calls out of this module (no lock, no allocation, no page fault on our data), so the
//! stealer's wait is a few nanoseconds unless the owner is preempted inside it; `shrink()` (which
//! may run inside a page allocation, with the caller's own slot held) bounds the wait and skips a
//! busy thread, destroy waits (it owns the cache; the window always ends). A stealer's own
//! thread is never inside a window while stealing (windows do not call out).
//!
//! A steal moves *free* objects, so it retires nothing itself; but for a typesafe cache the
//! objects it moves may empty a slab whose discard waits for a grace period from a snapshot the
//! discarding thread takes (`typesafe.rs`), and that snapshot must come after each object's
//! unpublish in happens-before order, not merely in time. The steal keeps the chain: the owner's
//! free follows the user's unpublish in program order and lies in a window that ends with the
//! Release store of `busy`; a stealer that reads the entry's contents did so after an Acquire
//! load of `busy == false` written by that window's end or a later one of the same owner (a load
//! that read an older `false` means the window's `busy = true` was not visible after the heavy
//! barrier, so the window saw `steal != 0` and did not touch the entry); it then hands the
//! objects on under the slot and node locks.
//!
//! Stealers of one cache are serialised by the cache's `tc_steal_lock`; owners never wait for
//! stealers: while `steal != 0` they use the per-CPU path directly.
//!
//! ## Thread exit
//!
//! A TLS destructor (registered on the thread's first use) flushes every entry bound to a cache
//! that is still registered, in an owner window, to the per-CPU layer. It holds the registry lock
//! while doing so, so a concurrent destroy (which unregisters first) cannot free the cache under
//! it; entries of a cache being destroyed are left to the destroyer's steal. Then the block is
//! released for reuse.
//!
//! ## fork()
//!
//! The child has only the forking thread, but the blocks of all threads. The child handler
//! ([`fork_child`]) clears the `busy` flag of every other block (its owner does not exist, and
//! destroy would wait for it forever) and releases the block for reuse. The objects in those
//! blocks are kept: an owner stopped outside a window left consistent entries, and inside a
//! window every step leaves each object in one place (at worst an object in flight is lost)
//! except `spill`'s move within `objs`, so an entry whose owner died with `shuffling` set is
//! emptied (its objects leak). Stealers then take the rest back as from exited threads. No
//! steal is in progress at the fork: the prepare handler holds every registered cache's
//! `tc_steal_lock`.
//!
//! ## Async-signal safety
//!
//! `kmalloc_nolock`/`kfree_nolock` ([`crate::sheaf::Mode::Nolock`]) never use the thread
//! cache: a signal handler may interrupt its own thread inside a window. Only `Normal` calls use
//! it, and they are not allowed in signal handlers.
//!
//! Invariants:
//! 1. An entry's `objs[..len]` are written only by the block's owner inside a window, or by a
//!    stealer of the entry's bound cache that saw `busy == false` after its heavy barrier while
//!    `steal != 0` (then no window can touch them). Each object pointer is in exactly one place
//!    (cache Invariant 2 extended: a user's hands, one entry, one sheaf, or its slab's bitmap).
//! 2. An entry is bound to at most one cache (`cache`); an entry bound to no cache (null) is
//!    empty. Ids are unique among live caches and caches being destroyed; destroy empties and
//!    unbinds every entry of its id before the id is released (a leaked cache keeps its id).
//! 3. Blocks and entries are never freed (entries are reused across caches through the id).
//! 4. A window contains no call out of this module and no blocking operation.
//!
//! ## Memory orderings
//! * `busy`: Relaxed store `true`, light barrier, …, Release store `false`; the stealer's Acquire
//!   load pairs with the Release store, so the contents written in a window are visible to it.
//! * `steal`: stealer Relaxed increment, heavy barrier (the SeqCst pairing above), Release
//!   decrement after emptying; the owner's Acquire load of `0` after a steal pairs with that
//!   decrement, so it sees `len == 0`.
//! * `len`, `allocs`, `frees`, `cache`: atomics only so that statistics and the stealer's
//!   pre-check may read them while the owner writes (Relaxed; single writer at a time by
//!   Invariant 1).
//! * Block list: Release push, Acquire walk; `outline[id]`: Release install, Acquire load.

use core::cell::Cell;
use core::ptr;

use super::RawCache;
use crate::lock::{Locked, LockedGuard};
use crate::primitive::cell::UnsafeCell;
use crate::primitive::sync::atomic::{
    compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};

/// Objects a thread keeps per cache at most.
pub(crate) const TCACHE_CAPACITY: usize = 32;
/// Objects moved per refill or flush between a thread cache and the per-CPU layer.
pub(crate) const TCACHE_BATCH: usize = 16;
/// Caches that can have thread caches at the same time (later ones run without).
pub(crate) const MAX_IDS: usize = 256;
/// Ids whose entries live inside the thread's block (about 10 KiB per thread).
pub(crate) const INLINE_IDS: usize = 32;
/// The id of a cache without thread caches.
pub(crate) const NO_ID: usize = usize::MAX;

/// One thread's cache of one slab cache.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// The bound cache, or null (Invariant 2).
    cache: AtomicPtr<RawCache>,
    /// Objects in `objs` (Invariant 1).
    len: AtomicUsize,
    /// Allocations and frees served here (statistics; single writer, load + store).
    allocs: AtomicU64,
    frees: AtomicU64,
    /// Set inside a window while `spill` moves objects within `objs` (the only window step
    /// that passes through states where an object is in two places); a `fork()` child
    /// empties an entry whose owner died with it set. Relaxed: only the owner writes it, and
    /// only the `fork()` child handler reads it.
    shuffling: AtomicBool,
    /// Free objects, most recent last (Invariant 1).
    objs: UnsafeCell<[*mut u8; TCACHE_CAPACITY]>,
}

impl Entry {
    const fn new() -> Self {
        Self {
            cache: AtomicPtr::new(ptr::null_mut()),
            len: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            shuffling: AtomicBool::new(false),
            objs: UnsafeCell::new([ptr::null_mut(); TCACHE_CAPACITY]),
        }
    }

    #[inline(always)]
    fn is_bound_to(&self, cache: &RawCache) -> bool {
        ptr::eq(self.cache.load(Ordering::Relaxed), cache)
    }
}

/// Increments a single-writer statistics counter without an RMW.
#[inline(always)]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// One thread's entries (Invariant 3: never freed, reused by later threads).
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct ThreadCaches {
    /// The owner is inside a window.
    busy: AtomicBool,
    /// A live thread owns this block.
    owned: AtomicBool,
    /// Next registered block (written before publication).
    next: AtomicPtr<ThreadCaches>,
    /// Entries of ids below [`INLINE_IDS`].
    inline: [Entry; INLINE_IDS],
    /// Entries of the other ids, installed by the owner on first use.
    outline: [AtomicPtr<Entry>; MAX_IDS - INLINE_IDS],
}

// SAFETY: the raw object pointers inside entries are plain slab addresses; all shared access to
// an entry's contents follows the window protocol (Invariant 1).
unsafe impl Send for Entry {}
// SAFETY: as for Send.
unsafe impl Sync for Entry {}

/// Registered blocks (Release push, Acquire walk; never freed).
static BLOCKS: AtomicPtr<ThreadCaches> = AtomicPtr::new(ptr::null_mut());

/// Whether owners must use a real fence as their light barrier. Starts `true` (always sound);
/// set to `false` once if the process uses membarrier (rcu-core decides the mode once).
static LIGHT_IS_FENCE: AtomicBool = AtomicBool::new(true);

std::thread_local! {
    /// The calling thread's block (no destructor, so access never fails or initialises).
    static MINE: Cell<*const ThreadCaches> = const { Cell::new(ptr::null()) };
    /// Flushes the thread's entries at thread exit.
    static EXIT: ExitHook = const { ExitHook };
}

/// `Box::into_raw(Box::new(v))`, or `None` when the allocation fails (no abort). Blocks and
/// entries are never freed (Invariant 3).
fn try_box<T>(v: T) -> Option<*mut T> {
    let layout = core::alloc::Layout::new::<T>();
    debug_assert!(layout.size() != 0);
    // The `heap` fault point refuses like the allocator would.
    if rcu_core::fault::should_fail(rcu_core::fault::Point::Heap, layout.size()) {
        return None;
    }
    // SAFETY: `T` (a block or an entry) has a non-zero size.
    let p = unsafe { std::alloc::alloc(layout) }.cast::<T>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a fresh allocation for one `T`.
    unsafe { p.write(v) };
    Some(p)
}

fn blocks() -> impl Iterator<Item = &'static ThreadCaches> {
    // Acquire: pairs with the Release push in `claim_or_register`.
    let mut p = BLOCKS.load(Ordering::Acquire);
    core::iter::from_fn(move || {
        // SAFETY: registered blocks are never freed (Invariant 3).
        let b = unsafe { p.as_ref()? };
        p = b.next.load(Ordering::Acquire);
        Some(b)
    })
}

/// The entry of `id` in block `b`, if it exists (any thread).
fn entry_of(b: &'static ThreadCaches, id: usize) -> Option<&'static Entry> {
    if id < INLINE_IDS {
        return Some(&b.inline[id]);
    }
    let e = b.outline.get(id - INLINE_IDS)?.load(Ordering::Acquire);
    // SAFETY: entries are never freed (Invariant 3); Acquire pairs with the Release install.
    unsafe { e.as_ref() }
}

// ---------------------------------------------------------------------------------------------
// Cache ids.

static IDS: Locked<[u64; MAX_IDS / 64]> = Locked::new([0; MAX_IDS / 64]);

fn ids() -> LockedGuard<'static, [u64; MAX_IDS / 64]> {
    IDS.lock()
}

/// The id allocator's lock, for the `fork()` handlers.
pub(crate) fn ids_lock() -> &'static crate::lock::RawLock {
    IDS.raw()
}

/// A free id, or [`NO_ID`] when all are taken.
pub(crate) fn alloc_id() -> usize {
    let mut ids = ids();
    for (w, word) in ids.iter_mut().enumerate() {
        if *word != u64::MAX {
            let bit = (!*word).trailing_zeros() as usize;
            *word |= 1 << bit;
            return w * 64 + bit;
        }
    }
    NO_ID
}

/// Releases an id whose entries were emptied and unbound by [`steal`] in destroy mode.
pub(crate) fn free_id(id: usize) {
    if id != NO_ID {
        ids()[id / 64] &= !(1u64 << (id % 64));
    }
}

// ---------------------------------------------------------------------------------------------
// Barriers.

#[inline(always)]
fn light() {
    if LIGHT_IS_FENCE.load(Ordering::Relaxed) {
        fence(Ordering::SeqCst);
    } else {
        // The stealer's membarrier supplies the hardware barrier; keep the compiler in order.
        compiler_fence(Ordering::SeqCst);
    }
}

fn heavy() {
    // rcu-core's writer-side barrier in the mode it decided (membarrier or a SeqCst fence): the
    // same pairing its readers use, and the one `light` mirrors (LIGHT_IS_FENCE).
    rcu_core::raw::heavy_barrier();
}

// ---------------------------------------------------------------------------------------------
// Owner side.

/// Opens a window on the caller's own block; `false` (window closed again) while a stealer of
/// `cache` is at work.
#[inline(always)]
fn enter(b: &ThreadCaches, cache: &RawCache) -> bool {
    b.busy.store(true, Ordering::Relaxed);
    light();
    // Acquire: pairs with the stealer's Release decrement (its emptying is visible).
    if cache.tc_steal.load(Ordering::Acquire) != 0 {
        b.busy.store(false, Ordering::Release);
        return false;
    }
    true
}

#[inline(always)]
fn leave(b: &ThreadCaches) {
    // Release: pairs with the stealer's Acquire load of `busy`.
    b.busy.store(false, Ordering::Release);
}

/// The caller's block and its entry bound to `cache` (whose id is `id`), if the fast path may use
/// them.
#[inline(always)]
fn lookup(cache: &RawCache, id: usize) -> Option<(&'static ThreadCaches, &'static Entry)> {
    debug_assert_eq!(id, cache.tc_id);
    let b = MINE.with(|m| m.get());
    // SAFETY: blocks are never freed (Invariant 3).
    let b = unsafe { b.as_ref() }?;
    let e = if id < INLINE_IDS {
        &b.inline[id]
    } else {
        let e = b.outline.get(id - INLINE_IDS)?.load(Ordering::Relaxed);
        // SAFETY: entries are never freed (Invariant 3); only this thread installs them, so the
        // Relaxed load of its own store is enough.
        unsafe { e.as_ref() }?
    };
    if !e.is_bound_to(cache) {
        return None;
    }
    Some((b, e))
}

/// Fast path: an object from the caller's thread cache, or `None` (empty, not set up, or a
/// steal in progress: take [`RawCache`]'s slow path).
#[inline(always)]
pub(crate) fn alloc(cache: &RawCache) -> Option<*mut u8> {
    let (b, e) = lookup(cache, cache.tc_id)?;
    if !enter(b, cache) {
        return None;
    }
    let n = e.len.load(Ordering::Relaxed);
    let r = if n != 0 {
        // SAFETY: inside our window (Invariant 1); `n <= TCACHE_CAPACITY`, so `n - 1` is in bounds.
        let o = e.objs.with(|a| unsafe { *(*a).get_unchecked(n - 1) });
        e.len.store(n - 1, Ordering::Relaxed);
        bump(&e.allocs);
        Some(o)
    } else {
        None
    };
    leave(b);
    r
}

/// Fast path: puts `obj` in the caller's thread cache; `false` if it is full, not set up, or a
/// steal is in progress. `id` is `cache.tc_id` (`kfree` reads it from the slab header).
#[inline(always)]
pub(crate) fn free(cache: &RawCache, id: usize, obj: *mut u8) -> bool {
    let Some((b, e)) = lookup(cache, id) else {
        return false;
    };
    if !enter(b, cache) {
        return false;
    }
    let n = e.len.load(Ordering::Relaxed);
    let ok = n < TCACHE_CAPACITY;
    if ok {
        // SAFETY: inside our window (Invariant 1); `n < TCACHE_CAPACITY`.
        e.objs
            .with_mut(|a| unsafe { *(*a).get_unchecked_mut(n) = obj });
        e.len.store(n + 1, Ordering::Relaxed);
        bump(&e.frees);
    }
    leave(b);
    ok
}

/// A handle on the caller's entry for `cache`, for the slow paths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    b: &'static ThreadCaches,
    e: &'static Entry,
}

/// The caller's entry for `cache`, registering the thread and binding the entry as needed.
/// `None`: no thread cache for this call (no id, thread-local storage being torn down, or a
/// steal in progress).
#[cold]
pub(crate) fn slot(cache: &RawCache) -> Option<Slot> {
    if cache.tc_id == NO_ID {
        return None;
    }
    let b = MINE.with(|m| m.get());
    // SAFETY: blocks are never freed (Invariant 3).
    let b = match unsafe { b.as_ref() } {
        Some(b) => b,
        None => register()?,
    };
    let e = match entry_of(b, cache.tc_id) {
        Some(e) => e,
        None => {
            // No memory: no thread cache for this call (module docs).
            let e = try_box(Entry::new())?;
            // Release: a stealer's Acquire load sees the initialised entry.
            b.outline[cache.tc_id - INLINE_IDS].store(e, Ordering::Release);
            // SAFETY: never freed (Invariant 3).
            unsafe { &*e }
        }
    };
    if !e.is_bound_to(cache) {
        if !enter(b, cache) {
            return None;
        }
        // Invariant 2: ids are unique among live caches, so the entry is unbound (destroy of
        // the id's previous cache emptied and unbound it) and empty.
        debug_assert!(e.cache.load(Ordering::Relaxed).is_null());
        debug_assert_eq!(e.len.load(Ordering::Relaxed), 0);
        e.allocs.store(0, Ordering::Relaxed);
        e.frees.store(0, Ordering::Relaxed);
        e.cache
            .store(cache as *const RawCache as *mut RawCache, Ordering::Relaxed);
        leave(b);
    }
    Some(Slot { b, e })
}

/// Refill: stores `objs` (fresh from the per-CPU layer) in the entry as far as there is room
/// and counts one allocation (the object the caller hands to its user). Returns how many of
/// `objs` were stored (the caller gives the rest back), or `None` if a steal is in progress
/// (nothing stored or counted).
pub(crate) fn refill(s: Slot, cache: &RawCache, objs: &[*mut u8]) -> Option<usize> {
    if !enter(s.b, cache) {
        return None;
    }
    let n = s.e.len.load(Ordering::Relaxed);
    let k = objs.len().min(TCACHE_CAPACITY - n);
    s.e.objs.with_mut(|a| {
        // SAFETY: inside our window (Invariant 1); `n + k <= TCACHE_CAPACITY`.
        let a = unsafe { &mut *a };
        a[n..n + k].copy_from_slice(&objs[..k]);
    });
    s.e.len.store(n + k, Ordering::Relaxed);
    bump(&s.e.allocs);
    leave(s.b);
    Some(k)
}

/// Spill: the entry was full. Moves its [`TCACHE_BATCH`] oldest objects to `out`, stores
/// `obj`, counts one free; returns how many objects the caller must give back. `None` if a
/// steal is in progress (the caller frees `obj` through the per-CPU path).
pub(crate) fn spill(
    s: Slot,
    cache: &RawCache,
    obj: *mut u8,
    out: &mut [*mut u8; TCACHE_BATCH],
) -> Option<usize> {
    if !enter(s.b, cache) {
        return None;
    }
    let mut n = s.e.len.load(Ordering::Relaxed);
    let mut moved = 0;
    s.e.shuffling.store(true, Ordering::Relaxed);
    s.e.objs.with_mut(|a| {
        // SAFETY: inside our window (Invariant 1).
        let a = unsafe { &mut *a };
        if n == TCACHE_CAPACITY {
            out.copy_from_slice(&a[..TCACHE_BATCH]);
            a.copy_within(TCACHE_BATCH.., 0);
            n -= TCACHE_BATCH;
            moved = TCACHE_BATCH;
        }
        a[n] = obj;
    });
    s.e.len.store(n + 1, Ordering::Relaxed);
    s.e.shuffling.store(false, Ordering::Relaxed);
    bump(&s.e.frees);
    leave(s.b);
    Some(moved)
}

/// Test hook: runs `f` inside a window of the caller's entry for `cache` (`busy` set).
pub(crate) fn hold_window<R>(cache: &RawCache, f: impl FnOnce() -> R) -> R {
    let s = slot(cache).expect("hold_window: no thread cache for this cache");
    assert!(enter(s.b, cache), "hold_window: a steal is in progress");
    let r = f();
    leave(s.b);
    r
}

/// Heap a thread's registration must be able to allocate first (module docs): the block, and
/// the C library's record of the exit hook's destructor.
const REGISTER_HEADROOM: usize = core::mem::size_of::<ThreadCaches>() + 1024;

#[cold]
fn register() -> Option<&'static ThreadCaches> {
    // Registering the exit hook's destructor aborts if the C library cannot allocate its record:
    // check for memory first (a heuristic; module docs).
    if !rcu_core::lowmem::heap_headroom(REGISTER_HEADROOM) {
        return None;
    }
    // Registers the exit hook; fails during thread-local teardown, and the thread then uses the
    // per-CPU path for good.
    EXIT.try_with(|_| ()).ok()?;
    if rcu_core::barrier_mode() == rcu_core::Mode::Membarrier {
        LIGHT_IS_FENCE.store(false, Ordering::Relaxed);
    }
    let b = claim_or_register()?;
    MINE.with(|m| m.set(b));
    Some(b)
}

/// Claims a free block or registers a new one; `None` if there is no memory for one.
fn claim_or_register() -> Option<&'static ThreadCaches> {
    for b in blocks() {
        if !b.owned.load(Ordering::Relaxed)
            && b.owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(b);
        }
    }
    let b = try_box(ThreadCaches {
        busy: AtomicBool::new(false),
        owned: AtomicBool::new(true),
        next: AtomicPtr::new(ptr::null_mut()),
        inline: [const { Entry::new() }; INLINE_IDS],
        outline: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_IDS - INLINE_IDS],
    })?;
    let mut head = BLOCKS.load(Ordering::Relaxed);
    loop {
        // SAFETY: not yet published; ours.
        unsafe { (*b).next.store(head, Ordering::Relaxed) };
        // Release publishes the initialised block.
        match BLOCKS.compare_exchange_weak(head, b, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    // SAFETY: published blocks are never freed.
    Some(unsafe { &*b })
}

/// Flushes the exiting thread's entries and releases its block.
#[derive(Debug)]
struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        let b = MINE.with(|m| m.replace(ptr::null()));
        // SAFETY: blocks are never freed.
        let Some(b) = (unsafe { b.as_ref() }) else {
            return;
        };
        // The registry guard's drop discards the slabs our objects emptied, which drops the
        // `T`s of caches with a constructor: a `Drop` panicking there must not unwind out of a
        // thread-local destructor (that aborts the process), nor keep the block owned.
        let flush = || {
            // Holding the registry keeps every listed cache alive and undestroyed while its
            // objects are in our hands (destroy unregisters before it steals).
            let reg = super::registry();
            for c in reg.iter() {
                let Some(e) = entry_of(b, c.tc_id) else {
                    continue;
                };
                if !e.is_bound_to(c) || e.len.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let mut buf = [ptr::null_mut(); TCACHE_CAPACITY];
                if !enter(b, c) {
                    continue; // a stealer takes them
                }
                let n = e.len.load(Ordering::Relaxed);
                // SAFETY: inside our window (Invariant 1).
                e.objs
                    .with(|a| buf[..n].copy_from_slice(unsafe { &(&*a)[..n] }));
                e.len.store(0, Ordering::Relaxed);
                leave(b);
                c.give_back(&buf[..n]);
            }
        };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(flush)).is_err() {
            // Written without allocating: the thread is being torn down.
            rcu_core::lowmem::report(format_args!(
                "slab: a destructor panicked while an exiting thread's cached objects were \
                 given back; the panic is contained and the slab it was discarding is leaked"
            ));
        }
        // Release: the next owner (Acquire claim) sees our last writes.
        b.owned.store(false, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------------------
// Stealer side and statistics.

/// Objects in thread caches bound to `cache` (a racy statistic) and the allocations and frees
/// they served.
pub(crate) fn counts(cache: &RawCache) -> (usize, u64, u64) {
    let mut t = (0, 0, 0);
    if cache.tc_id == NO_ID {
        return t;
    }
    for b in blocks() {
        let Some(e) = entry_of(b, cache.tc_id) else {
            continue;
        };
        if e.is_bound_to(cache) {
            t.0 += e.len.load(Ordering::Relaxed);
            t.1 += e.allocs.load(Ordering::Relaxed);
            t.2 += e.frees.load(Ordering::Relaxed);
        }
    }
    t
}

/// Takes every object out of the thread caches bound to `cache` (all threads, including exited
/// ones) and hands them to `sink`, one entry's objects at a time (copied to the stack: a shrink
/// runs when memory is short, so nothing is collected on the heap). `sink` runs under the
/// cache's steal lock and must not steal from the same cache. `destroy`: wait for busy owners,
/// and also zero and unbind the entries so that the id can be released (Invariant 2). Otherwise
/// (shrink) owners stuck in a window are skipped after a short wait, and nothing happens if a
/// racy count finds nothing.
pub(crate) fn steal(cache: &RawCache, destroy: bool, mut sink: impl FnMut(&[*mut u8])) {
    if cache.tc_id == NO_ID {
        return;
    }
    let _serial = cache.tc_steal_lock.lock();
    if !destroy && counts(cache).0 == 0 {
        return;
    }
    cache.tc_steal.fetch_add(1, Ordering::Relaxed);
    heavy();
    for b in blocks() {
        let Some(e) = entry_of(b, cache.tc_id) else {
            continue;
        };
        if !e.is_bound_to(cache) || !wait_idle(b, destroy) {
            continue;
        }
        // Invariant 1: `steal != 0` was visible to every window after the heavy barrier and
        // the owner is outside its window (Acquire on `busy`), so the contents are ours.
        let n = e.len.load(Ordering::Relaxed);
        let mut taken = [ptr::null_mut(); TCACHE_CAPACITY];
        // SAFETY: as just said; `n <= TCACHE_CAPACITY`.
        e.objs
            .with(|a| taken[..n].copy_from_slice(unsafe { &(&*a)[..n] }));
        e.len.store(0, Ordering::Relaxed);
        if destroy {
            e.allocs.store(0, Ordering::Relaxed);
            e.frees.store(0, Ordering::Relaxed);
            e.cache.store(ptr::null_mut(), Ordering::Relaxed);
        }
        if n != 0 {
            sink(&taken[..n]);
        }
    }
    // Release: an owner's Acquire load of the decremented count sees the emptied entries.
    cache.tc_steal.fetch_sub(1, Ordering::Release);
}

/// `fork()` child handler: the blocks of threads that do not exist in the child. A block whose
/// owner was outside its window is consistent: its objects stay where they are (stealers take
/// them back, and a thread of the child may claim the block and use them). A block whose owner
/// was inside a window is consistent too, except for an entry in the middle of `spill`
/// (`shuffling`), which is emptied: its objects are leaked. Then the block is released for
/// reuse and its `busy` flag cleared (otherwise destroy would wait for it forever). No
/// allocation; runs single-threaded.
pub(crate) fn fork_child() {
    // Relaxed throughout: the child is single-threaded here.
    let mine = MINE.with(|m| m.get());
    for b in blocks() {
        if ptr::eq(b, mine) {
            continue;
        }
        if b.busy.load(Ordering::Relaxed) {
            let outline = b.outline.iter().filter_map(|e| {
                // SAFETY: entries are never freed (Invariant 3).
                unsafe { e.load(Ordering::Relaxed).as_ref() }
            });
            for e in b.inline.iter().chain(outline) {
                if e.shuffling.swap(false, Ordering::Relaxed) {
                    e.len.store(0, Ordering::Relaxed);
                }
            }
            b.busy.store(false, Ordering::Relaxed);
        }
        b.owned.store(false, Ordering::Relaxed);
    }
}

/// Waits until the block's owner is outside its window. Without `forever`, gives up after a
/// short while (a preempted or stopped owner: shrink skips it).
fn wait_idle(b: &ThreadCaches, forever: bool) -> bool {
    let mut spins = 0u32;
    // Acquire: pairs with the owner's Release `busy = false`.
    while b.busy.load(Ordering::Acquire) {
        spins += 1;
        if spins < 128 {
            crate::primitive::thread::spin_hint();
        } else if forever || spins < 128 + 64 {
            crate::primitive::thread::yield_now();
        } else {
            return false;
        }
    }
    true
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_released() {
        let a = alloc_id();
        let b = alloc_id();
        assert!(a != NO_ID && b != NO_ID);
        assert_ne!(a, b);
        free_id(a);
        free_id(b);
    }
}
