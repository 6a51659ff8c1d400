//! `KmemCache<T>`: fixed-size object caches over the page layer.
//!
//! # Implementation
//!
//! A cache is a type-erased [`RawCache`] (shared by `KmemCache<T>` and the kmalloc classes) with
//! four layers, fastest first:
//!
//! 0. per-thread object caches ([`tcache`]): up to 32 free objects per thread and cache, popped
//!    and pushed with plain loads and stores (no atomic read-modify-write);
//! 1. per-CPU sheaves and the per-node barn ([`crate::sheaf`]);
//! 2. per-node partial/full/empty slab lists ([`node`]);
//! 3. slabs: page runs from [`crate::page`] with out-of-line free bitmaps ([`slab`]).
//!
//! `alloc` (`Normal` mode) pops from the calling thread's cache; when that is empty it takes a
//! batch of 16 from the current CPU's sheaf under one slot try-lock (one CAS, one release store
//! per batch). `free` pushes to the thread cache; when that is full its oldest 16 objects go to
//! the CPU's sheaf in one batch. The sheaf, in turn, swaps in its spare, trades with the barn,
//! refills from the slab lists, and only when those are empty maps a new slab (running the ctor
//! over every object of it, once). If every slot is held (all CPUs' slots busy: preemption, or a
//! signal handler), `Normal` callers go straight to the slab lists. `Nolock` callers
//! (`kmalloc_nolock`, `kfree_nolock`) skip the thread cache and use only the CPU slot.
//!
//! Objects in thread caches are free objects: `stats()` counts them as cached, and `shrink()`,
//! the slab shrinker and destroy steal them from every thread (alive or exited) before flushing
//! the per-CPU layer; thread exit flushes the thread's own caches ([`tcache`] has the protocol).
//!
//! Empty slabs beyond [`node::MIN_EMPTY`] per node, and all empty slabs on [`KmemCache::shrink`],
//! are detached and *discarded*: objects dropped (ctor caches own their `T`s) and pages unmapped —
//! at once for ordinary caches, after a grace period for `SLAB_TYPESAFE_BY_RCU` ones
//! ([`crate::typesafe`]). A typesafe cache detaches a slab only with a reservation from its
//! pending-discard cap ([`crate::typesafe::discard_cap`]); without one the slab stays on the
//! empty list and is reused, so slow grace periods cannot make it map slab after slab while the
//! discarded ones wait. Destroy detaches everything regardless (it waits for all of them).
//!
//! Files: [`slab`] (slab layout and headers, finding an object's cache), [`node`] (slab lists),
//! [`tcache`] (thread caches), [`deferred`] (frees `kfree_nolock` deferred), this file (the
//! cache: registry, allocation and free paths, shrinking, the shrinker), then the users of it:
//! `destroy` (destroying a cache), [`fork`] (the cache's part of `fork()` handling) and `typed`
//! (`KmemCache<T>`).
//!
//! ## Lock order
//! One global order, the lesson of the 2021 SLUB lockdep report:
//!
//! ```text
//! INIT (one-time setup) → REGISTRY (cache list) → FLUSH (per-CPU flush/shrink)
//!     → tc_steal_lock (per cache) → [CPU slots] → barn lock | node lock (leaves)
//!     → thread-cache id lock → shrinker registry (leaves)
//! ```
//! A thread's exit flush holds `REGISTRY` while it gives its objects back (so no cache it
//! flushes can be destroyed under it); destroy takes `tc_steal_lock` without `FLUSH`.
//! CPU slot locks are only ever try-locked by the allocator, so they are outside the order for
//! it; only the `fork()` prepare handler waits for them, at the place shown and for a bounded
//! time ([`crate::fork`]). Nothing takes `REGISTRY` or `FLUSH` while holding a barn or node lock,
//! and **no page is allocated while any of these locks is held**: page allocations may run
//! shrinkers, and the slab shrinker takes `REGISTRY → FLUSH`. Shrinking never waits for a held
//! CPU slot (the holder may be the very thread whose page allocation is running the shrinker);
//! only destroy, which owns the cache exclusively, waits for slots, and it does so without
//! holding `FLUSH`.
//!
//! **Nothing that may wait for a grace period runs under `REGISTRY` or `FLUSH`.** Discarding a
//! slab drops user objects, and in destroy a typesafe slab's `call_rcu` waits for a grace
//! period inline when it cannot queue the callback (elsewhere the release is queued with
//! `try_call_rcu` and the slab kept when it cannot be), while readers may need those locks (a reader's page
//! allocation runs the slab shrinker). So slabs detached while a thread holds either lock are
//! stashed on that thread and discarded when it releases the last of them ([`DeferDiscards`]);
//! `discards_in_flight` counts them, and destroy waits for it to drop to zero before the cache
//! goes. The barn and node locks are released before any discard as well.
//!
//! **A discard's `Drop` may panic** (a user `T::drop` of a ctor cache). Objects handed to the
//! slabs are forgotten by the layer that held them before any discard runs (a flushed sheaf is
//! cleared first), so the unwind may leak what was in flight but never frees an object twice;
//! a thread's exit flush contains such a panic (a thread-local destructor must not unwind).
//!
//! **fork()**: the handlers in [`crate::fork`] take these locks in this order before the fork
//! and release them after it; in the child, CPU slots other threads held are dead until revived
//! and other threads' thread caches are released ([`crate::fork`] says what is lost).
//!
//! Invariants:
//! 1. A `RawCache` outlives every slab whose header points to it: destroy discards all slabs
//!    (waiting for stashed discards of other threads, then with `rcu_barrier` for RCU-deferred
//!    discards) or, if objects leaked, leaks the cache too. Once destroy has started, the cache
//!    is freed only by its last step: a panic on the way unwinds past a `ManuallyDrop` and leaks
//!    it, since discards queued through `call_rcu` may still point to it.
//! 2. `KmemCache<T>` objects are `T`-sized and aligned slots; with a ctor they always hold a
//!    valid `T` (slab Invariant 4).
//! 3. A typesafe cache is destroyed only where `rcu_barrier` may wait (`rcu_core::may_block`:
//!    outside read-side critical sections, off callback threads, outside the no-barrier scopes of
//!    rcu-core such as a kfree-batch free), checked before destroy touches
//!    anything. Elsewhere `destroy()` panics and leaves the cache registered and intact (leaked);
//!    `Drop` (which must not panic: it may run during an unwind) hands the destroy to a new
//!    thread, which waits there, or leaks the cache with a report on stderr if no thread can be
//!    started. Ordinary caches wait for no grace period and are destroyed anywhere.
//!
//! ## Memory orderings
//! Objects travel between threads only through the slot, barn and node locks (Acquire/Release
//! pairs documented there), the thread caches' steal protocol (documented in [`tcache`]), or
//! through the user's own synchronisation. Statistics are Relaxed.

pub(crate) mod deferred;
mod destroy;
pub(crate) mod fork;
pub(crate) mod node;
pub(crate) mod sanitize;
pub(crate) mod slab;
pub(crate) mod tcache;
mod typed;

pub use self::typed::{KmemCache, KmemCacheBuilder};

use core::cell::Cell;
use core::fmt;
use core::ptr::{self, NonNull};
use std::sync::{Arc, OnceLock};

use self::node::{Detached, Node, NodeCounts};
use self::slab::{header_of, SlabHeader, SlabLayout, OBJ_ALLOCATED, OBJ_FREE};
use self::tcache::TCACHE_BATCH;
use crate::lock::{Locked, LockedGuard};
use crate::page::PAGE_SIZE;
use crate::primitive::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::sheaf::{Backing, Miss, Mode, PerCpu, Sheaf};
use crate::stats::CacheStats;

/// Errors of cache creation and destruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlabError {
    /// `typesafe_by_rcu(true)` without a ctor: readers may look at free objects, which must
    /// therefore always be valid `T`s.
    TypesafeWithoutCtor(String),
    /// `typesafe_by_rcu(true)` for a zero-sized type: there is no memory to keep type-stable.
    ZeroSizedTypesafe(String),
    /// The alignment is not a power of two or exceeds the page size.
    BadAlignment {
        /// Cache name.
        name: String,
        /// Requested alignment.
        align: usize,
    },
    /// Not even one object fits the largest slab.
    TooLarge {
        /// Cache name.
        name: String,
        /// Object size.
        size: usize,
    },
    /// A live cache already has this name (names identify caches in `slabinfo`).
    DuplicateName(String),
    /// Destroy found objects still allocated; the cache and their slabs were leaked (kept mapped)
    /// instead of being freed under a possible user.
    Leaked {
        /// Cache name.
        name: String,
        /// Objects still allocated.
        objects: usize,
    },
}

impl fmt::Display for SlabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TypesafeWithoutCtor(n) => write!(
                f,
                "slab cache {n}: SLAB_TYPESAFE_BY_RCU requires a ctor (readers may see free objects)"
            ),
            Self::ZeroSizedTypesafe(n) => {
                write!(f, "slab cache {n}: SLAB_TYPESAFE_BY_RCU of a zero-sized type")
            }
            Self::BadAlignment { name, align } => write!(
                f,
                "slab cache {name}: alignment {align} is not a power of two <= {PAGE_SIZE}"
            ),
            Self::TooLarge { name, size } => {
                write!(f, "slab cache {name}: objects of {size} bytes do not fit a slab")
            }
            Self::DuplicateName(n) => write!(f, "slab cache {n}: a cache with this name exists"),
            Self::Leaked { name, objects } => write!(
                f,
                "slab cache {name}: destroyed with {objects} objects still allocated (leaked)"
            ),
        }
    }
}

impl std::error::Error for SlabError {}

type CtorFn = dyn Fn(*mut u8) + Send + Sync;

/// The type-erased cache behind `KmemCache<T>` and the kmalloc classes.
pub(crate) struct RawCache {
    pub(crate) name: String,
    pub(crate) layout: SlabLayout,
    pub(crate) typesafe: bool,
    pub(crate) debug: bool,
    pub(crate) kmalloc: bool,
    /// Writes a fresh `T` into an object slot (slab creation only).
    pub(crate) ctor: Option<Box<CtorFn>>,
    /// Drops the `T` in an object slot (slab discard; ctor caches whose `T` needs it).
    pub(crate) drop_obj: Option<unsafe fn(*mut u8)>,
    pub(crate) cpu: PerCpu,
    /// Index of this cache's entry in every thread's cache block ([`tcache::NO_ID`]: none).
    pub(crate) tc_id: usize,
    /// Stealers of thread-cached objects at work (owners bypass their thread cache while
    /// non-zero); on its own cache line, read on every fast-path call.
    pub(crate) tc_steal: rcu_core::CachePadded<AtomicUsize>,
    /// Serialises stealers of this cache (lock order: FLUSH → this → barn | node).
    pub(crate) tc_steal_lock: Locked<()>,
    /// One entry per memory node; never freed before the cache (node Invariant, seed 2021).
    nodes: Box<[Node]>,
    pub(crate) slabs_created: AtomicU64,
    pub(crate) slabs_freed: AtomicU64,
    /// Slabs detached and waiting for a grace period before being unmapped (typesafe caches);
    /// reserved before the detach, at most [`crate::typesafe::discard_cap`] outside destroy.
    pub(crate) rcu_pending: AtomicUsize,
    /// Slabs detached under `REGISTRY` or `FLUSH` and not yet discarded (their discard runs
    /// when the lock is released: [`DeferDiscards`]); destroy waits for them (Invariant 1).
    discards_in_flight: AtomicUsize,
    /// Objects handed out / taken back by the slab lists directly (all slots busy).
    direct_allocs: AtomicU64,
    direct_frees: AtomicU64,
    /// Allocations that returned nothing.
    pub(crate) alloc_failures: AtomicU64,
}

impl fmt::Debug for RawCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCache")
            .field("name", &self.name)
            .field("layout", &self.layout)
            .field("typesafe", &self.typesafe)
            .finish_non_exhaustive()
    }
}

/// Options of a new cache.
pub(crate) struct RawConfig {
    pub(crate) name: String,
    pub(crate) size: usize,
    pub(crate) align: usize,
    pub(crate) typesafe: bool,
    pub(crate) debug: bool,
    pub(crate) kmalloc: bool,
    pub(crate) ctor: Option<Box<CtorFn>>,
    pub(crate) drop_obj: Option<unsafe fn(*mut u8)>,
}

pub(super) static REGISTRY: Locked<Vec<Arc<RawCache>>> = Locked::new(Vec::new());
pub(super) static FLUSH: Locked<()> = Locked::new(());

/// The held cache registry lock; discards of slabs detached meanwhile run after it is released.
pub(crate) struct RegistryGuard {
    // Field order matters: the lock is released before the deferred discards run.
    g: LockedGuard<'static, Vec<Arc<RawCache>>>,
    _defer: DeferDiscards,
}

impl core::ops::Deref for RegistryGuard {
    type Target = Vec<Arc<RawCache>>;
    fn deref(&self) -> &Self::Target {
        &self.g
    }
}

impl core::ops::DerefMut for RegistryGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.g
    }
}

/// The cache registry (first in the lock order).
pub(crate) fn registry() -> RegistryGuard {
    let _defer = DeferDiscards::enter();
    RegistryGuard {
        g: REGISTRY.lock(),
        _defer,
    }
}

/// The cache registry if its lock is free (callers that may already hold it).
pub(crate) fn try_registry() -> Option<RegistryGuard> {
    let _defer = DeferDiscards::enter();
    Some(RegistryGuard {
        g: REGISTRY.try_lock()?,
        _defer,
    })
}

/// The held flush lock; discards of slabs detached meanwhile run after it is released.
struct FlushGuard {
    // Field order matters: the lock is released before the deferred discards run.
    _g: LockedGuard<'static, ()>,
    _defer: DeferDiscards,
}

fn flush_lock() -> FlushGuard {
    let _defer = DeferDiscards::enter();
    FlushGuard {
        _g: FLUSH.lock(),
        _defer,
    }
}

std::thread_local! {
    /// `REGISTRY`/`FLUSH` guards the thread holds: while non-zero, [`RawCache::discard`] stashes
    /// slabs instead of discarding them.
    static DEFER_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Slabs stashed meanwhile, chained through their `next` links.
    static STASH: Cell<*mut SlabHeader> = const { Cell::new(ptr::null_mut()) };
}

/// While alive, discards on this thread are stashed; the last one alive runs them on drop.
///
/// A discard may wait for a grace period (`call_rcu` waits inline when it cannot queue) and
/// runs the `Drop` of user objects, so it must never run under `REGISTRY` or `FLUSH`: a reader
/// that needs either (it creates a cache, reads `slabinfo`, or its page allocation runs the
/// slab shrinker) would block that grace period for good.
struct DeferDiscards(());

impl DeferDiscards {
    fn enter() -> Self {
        DEFER_DEPTH.with(|d| d.set(d.get() + 1));
        Self(())
    }
}

impl Drop for DeferDiscards {
    fn drop(&mut self) {
        let depth = DEFER_DEPTH.with(|d| {
            let n = d.get() - 1;
            d.set(n);
            n
        });
        if depth == 0 {
            discard_stash();
        }
    }
}

/// Discards the slabs this thread stashed (no `REGISTRY` or `FLUSH` held).
#[cold]
fn discard_stash() {
    loop {
        let chain = Stashed(STASH.with(|c| c.replace(ptr::null_mut())));
        if chain.0.is_null() {
            return;
        }
        for s in chain {
            // SAFETY: stashed slabs are detached and live; their cache lives until
            // `discards_in_flight` drops to zero (destroy waits for it).
            let cache = unsafe { &*(*s.as_ptr()).cache };
            let _done = InFlightDone(cache);
            cache.discard_one(s, false);
        }
    }
}

/// A chain of stashed slabs being discarded. If a discard panics (a user `Drop`), the rest
/// are leaked but no longer counted in flight, so that destroy does not wait for them forever.
struct Stashed(*mut SlabHeader);

impl Iterator for Stashed {
    type Item = NonNull<SlabHeader>;
    fn next(&mut self) -> Option<Self::Item> {
        let s = NonNull::new(self.0)?;
        // SAFETY: chained slabs are detached, live, and owned by this chain.
        unsafe {
            self.0 = (*s.as_ptr()).next;
            (*s.as_ptr()).next = ptr::null_mut();
        }
        Some(s)
    }
}

impl Drop for Stashed {
    fn drop(&mut self) {
        for s in self.by_ref() {
            // SAFETY: as in `discard_stash`.
            let _done = InFlightDone(unsafe { &*(*s.as_ptr()).cache });
        }
    }
}

/// Ends one in-flight discard of a cache when dropped (also when the discard panicked).
struct InFlightDone<'a>(&'a RawCache);

impl Drop for InFlightDone<'_> {
    fn drop(&mut self) {
        // Release: pairs with destroy's Acquire load (the discard is done).
        self.0.discards_in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Registers the slab shrinker with the page layer (once).
pub(crate) fn ensure_shrinker() {
    // Before any lock: registering fork handlers waits for a concurrent fork() to finish.
    crate::fork::install();
    static ONCE: OnceLock<crate::shrink::ShrinkerId> = OnceLock::new();
    if ONCE.get().is_some() {
        return;
    }
    // Under the init lock, so that no fork() child inherits the OnceLock half-initialised.
    let _init = crate::fork::init_lock();
    ONCE.get_or_init(|| {
        crate::shrink::register_shrinker(
            "slab-caches",
            || {
                let r = registry();
                r.iter().map(|c| c.freeable()).sum()
            },
            |_| {
                deferred::drain_deferred();
                let r = registry();
                r.iter().map(|c| c.shrink()).sum()
            },
        )
    });
}

impl RawCache {
    /// Creates and registers a cache.
    pub(crate) fn create(cfg: RawConfig) -> Result<Arc<RawCache>, SlabError> {
        crate::fork::revive_if_needed();
        if !cfg.align.is_power_of_two() || cfg.align > PAGE_SIZE {
            return Err(SlabError::BadAlignment {
                name: cfg.name,
                align: cfg.align,
            });
        }
        let Some(layout) = SlabLayout::new(cfg.size, cfg.align, cfg.debug) else {
            return Err(SlabError::TooLarge {
                name: cfg.name,
                size: cfg.size,
            });
        };
        ensure_shrinker();
        let mut reg = registry();
        // The kmalloc classes are created once, whatever a user named a cache before.
        if !cfg.kmalloc && reg.iter().any(|c| c.name == cfg.name) {
            return Err(SlabError::DuplicateName(cfg.name));
        }
        let cache = Arc::new(RawCache {
            name: cfg.name,
            layout,
            typesafe: cfg.typesafe,
            debug: cfg.debug,
            kmalloc: cfg.kmalloc,
            ctor: cfg.ctor,
            drop_obj: cfg.drop_obj,
            cpu: PerCpu::new(rcu_core::cpu::possible_cpus()),
            tc_id: tcache::alloc_id(),
            tc_steal: rcu_core::CachePadded::new(AtomicUsize::new(0)),
            tc_steal_lock: Locked::new(()),
            nodes: (0..nr_nodes()).map(|_| Node::new()).collect(),
            slabs_created: AtomicU64::new(0),
            slabs_freed: AtomicU64::new(0),
            rcu_pending: AtomicUsize::new(0),
            discards_in_flight: AtomicUsize::new(0),
            direct_allocs: AtomicU64::new(0),
            direct_frees: AtomicU64::new(0),
            alloc_failures: AtomicU64::new(0),
        });
        reg.push(cache.clone());
        Ok(cache)
    }

    pub(crate) fn node(&self) -> &Node {
        &self.nodes[0]
    }

    /// Allocates one object. `Nolock` never blocks and reports `Busy` when this CPU's slot is held.
    #[inline]
    pub(crate) fn alloc(&self, mode: Mode) -> Result<NonNull<u8>, Miss> {
        let r = if mode == Mode::Normal {
            match tcache::alloc(self) {
                Some(p) => Ok(p),
                None => self.alloc_refill(),
            }
        } else {
            self.alloc_cpu(mode)
        };
        match r {
            Ok(p) => {
                if self.debug {
                    self.mark_allocated(p);
                }
                sanitize::on_alloc(self, p);
                // SAFETY: objects are addresses inside mapped slabs, never null.
                Ok(unsafe { NonNull::new_unchecked(p) })
            }
            Err(e) => {
                self.alloc_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// One object from the per-CPU layer (or the slab lists when every slot is busy).
    fn alloc_cpu(&self, mode: Mode) -> Result<*mut u8, Miss> {
        let cpu = rcu_core::cpu::current_cpu();
        match self.cpu.alloc(cpu, self, mode) {
            Ok(p) => Ok(p),
            Err(Miss::Busy) if mode == Mode::Normal => self.alloc_direct(),
            Err(e) => Err(e),
        }
    }

    /// The thread cache had nothing (or is not set up): take a batch from the per-CPU layer
    /// under one slot lock, hand out one object and keep the rest in the thread cache.
    #[cold]
    #[inline(never)]
    fn alloc_refill(&self) -> Result<*mut u8, Miss> {
        crate::fork::revive_if_needed();
        let Some(slot) = tcache::slot(self) else {
            return self.alloc_cpu(Mode::Normal);
        };
        let mut buf = [core::ptr::null_mut(); TCACHE_BATCH];
        let cpu = rcu_core::cpu::current_cpu();
        let n = match self.cpu.alloc_bulk(cpu, self, &mut buf, Mode::Normal) {
            Ok(n) => n,
            Err(Miss::Busy) => return self.alloc_direct(),
            Err(e) => return Err(e),
        };
        let (p, rest) = (buf[n - 1], &buf[..n - 1]);
        match tcache::refill(slot, self, rest) {
            Some(k) => self.give_back(&rest[k..]),
            None => {
                // A steal is in progress: no thread cache now; count the allocation here.
                self.give_back(rest);
                self.direct_allocs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(p)
    }

    /// Moves free objects (not counted as frees: they left a thread cache) to the per-CPU layer,
    /// or to the slab lists when every slot is busy.
    pub(crate) fn give_back(&self, objs: &[*mut u8]) {
        if objs.is_empty() {
            return;
        }
        let cpu = rcu_core::cpu::current_cpu();
        if let Err(k) = self.cpu.free_bulk(cpu, self, objs, Mode::Normal) {
            self.return_objects(&objs[k..], Mode::Normal);
        }
    }

    #[cold]
    fn alloc_direct(&self) -> Result<*mut u8, Miss> {
        crate::fork::revive_if_needed();
        let mut one = None;
        loop {
            self.node()
                .lock(Mode::Normal)
                .expect("Normal lock succeeds")
                .take(&self.layout, |o| {
                    if one.is_some() {
                        return false;
                    }
                    one = Some(o);
                    true
                });
            if let Some(o) = one {
                self.direct_allocs.fetch_add(1, Ordering::Relaxed);
                return Ok(o);
            }
            let s = SlabHeader::create(self, true).ok_or(Miss::Empty)?;
            self.node().lock(Mode::Normal).expect("Normal").add_slab(s);
        }
    }

    /// Frees one object. In `Nolock` mode `Err(p)` means it could not be placed without blocking.
    ///
    /// # Safety
    /// `p` is an object of this cache that the caller owns (allocated, not yet freed) and nobody
    /// uses any more — except readers inside a read-side critical section for a typesafe cache.
    #[inline]
    pub(crate) unsafe fn free(
        &self,
        p: NonNull<u8>,
        mode: Mode,
        checked: bool,
    ) -> Result<(), NonNull<u8>> {
        if mode == Mode::Normal {
            // SAFETY: forwarded contract.
            unsafe { self.free_normal(p, self.tc_id, checked) };
            return Ok(());
        }
        if self.debug && !checked {
            self.check_free(p.as_ptr());
        }
        self.free_cpu(p.as_ptr(), mode).map_err(|o| {
            // SAFETY: `o` is `p`, non-null.
            unsafe { NonNull::new_unchecked(o) }
        })
    }

    /// [`RawCache::free`] in `Normal` mode; `tc_id` is `self.tc_id` (`kfree` passes the copy in
    /// the slab header, one dependent load less).
    ///
    /// # Safety
    /// As for [`RawCache::free`].
    #[inline]
    pub(crate) unsafe fn free_normal(&self, p: NonNull<u8>, tc_id: usize, checked: bool) {
        if self.debug && !checked {
            // Before the object enters any cache layer, so a thread cache cannot hide a double
            // free.
            self.check_free(p.as_ptr());
        }
        if sanitize::on_free(self, p) {
            return; // deferred by a grace period (typesafe RCU debug mode)
        }
        if !tcache::free(self, tc_id, p.as_ptr()) {
            self.free_spill(p.as_ptr());
        }
    }

    /// The thread cache is full (or not set up): move its oldest half to the per-CPU layer
    /// under one slot lock and keep `p`.
    #[cold]
    #[inline(never)]
    fn free_spill(&self, p: *mut u8) {
        crate::fork::revive_if_needed();
        let spilled = tcache::slot(self).and_then(|slot| {
            let mut buf = [core::ptr::null_mut(); TCACHE_BATCH];
            let n = tcache::spill(slot, self, p, &mut buf)?;
            self.give_back(&buf[..n]);
            Some(())
        });
        if spilled.is_none() {
            let _ = self.free_cpu(p, Mode::Normal);
        }
    }

    /// Frees one object to the per-CPU layer (`Normal`: or to the slab lists when every slot is
    /// busy). `Err(p)` only in `Nolock` mode.
    fn free_cpu(&self, p: *mut u8, mode: Mode) -> Result<(), *mut u8> {
        let cpu = rcu_core::cpu::current_cpu();
        match self.cpu.free(cpu, self, p, mode) {
            Ok(()) => Ok(()),
            Err(o) if mode == Mode::Normal => {
                self.free_direct(&[o]);
                Ok(())
            }
            Err(o) => Err(o),
        }
    }

    #[cold]
    fn free_direct(&self, objs: &[*mut u8]) {
        self.direct_frees
            .fetch_add(objs.len() as u64, Ordering::Relaxed);
        self.return_objects(objs, Mode::Normal);
    }

    /// Returns objects to their slabs; false only for a `Nolock` caller whose try-lock failed.
    fn return_objects(&self, objs: &[*mut u8], mode: Mode) -> bool {
        let Some(out) = self.put_objects(objs, mode) else {
            return false;
        };
        self.discard(out);
        true
    }

    /// Puts objects back into their slabs and returns the slabs that became empty and were
    /// detached, for the caller to discard once it no longer refers to the objects (a discard
    /// runs user `Drop`s, which may panic); `None` only for a `Nolock` caller whose try-lock
    /// failed.
    fn put_objects(&self, objs: &[*mut u8], mode: Mode) -> Option<Detached> {
        let mut out = Detached::new();
        {
            let mut g = self.node().lock(mode)?;
            for &o in objs {
                let s = header_of(o);
                // SAFETY: `o` is an object of this cache (checked on entry in debug caches), so
                // `s` is its live slab (slab Invariant 1).
                let idx = unsafe { (*s).index_of(&self.layout, o) };
                let idx = idx.expect("slab: object pointer not at an object start");
                g.put(
                    &self.layout,
                    s,
                    idx,
                    mode == Mode::Normal,
                    &mut || crate::typesafe::reserve_discard(self),
                    &mut out,
                );
            }
        }
        Some(out)
    }

    /// Discards detached slabs: at once, or after a grace period for typesafe caches; under
    /// `REGISTRY` or `FLUSH` they are stashed and discarded when the lock is released
    /// ([`DeferDiscards`]). Returns how many.
    fn discard(&self, chain: Detached) -> usize {
        self.discard_with(chain, false)
    }

    /// [`RawCache::discard`]; `wait` (destroy) lets a typesafe release wait for a grace period
    /// when `call_rcu` has no memory, instead of keeping the slab.
    pub(crate) fn discard_with(&self, chain: Detached, wait: bool) -> usize {
        let defer = DEFER_DEPTH.with(Cell::get) != 0;
        let mut n = 0;
        for s in chain {
            n += 1;
            if defer {
                // Relaxed: destroy reads the count only after taking REGISTRY, which this
                // thread holds now (or the cache's owner is shrinking it under FLUSH alone, and
                // cannot destroy it meanwhile), so the unlock publishes the increment.
                self.discards_in_flight.fetch_add(1, Ordering::Relaxed);
                STASH.with(|c| {
                    // SAFETY: `s` was just detached; we own its links.
                    unsafe { (*s.as_ptr()).next = c.get() };
                    c.set(s.as_ptr());
                });
            } else if !self.discard_one(s, wait) {
                n -= 1;
            }
        }
        n
    }

    /// Discards one detached slab (no `REGISTRY` or `FLUSH` held). Returns `false` if the slab
    /// was kept instead: a typesafe slab inside a read-side critical section, or whose release
    /// could not be queued without waiting (unless `wait`).
    fn discard_one(&self, s: NonNull<SlabHeader>, wait: bool) -> bool {
        if self.typesafe {
            if rcu_core::rcu_read_lock_held() || !crate::typesafe::defer_discard(self, s, wait) {
                // `call_rcu` may find no room for the callback, and its fallback waits for a
                // grace period: inside a reader it cannot (it panics), and a free or shrink
                // must not (the caller may hold a lock a reader waits for). Keep the empty
                // slab for reuse; a later shrink releases it.
                self.node()
                    .lock(Mode::Normal)
                    .expect("Normal lock succeeds")
                    .add_slab(s);
                // The slab is not pending a discard: give back the place reserved for it before
                // the detach (`typesafe` step 0; Relaxed: a budget word).
                self.rcu_pending.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
        } else {
            // SAFETY: the slab was detached with every object free (node::put / detach_empty),
            // and an ordinary cache promises nothing to readers of freed objects.
            unsafe { slab::discard_now(s) };
        }
        true
    }

    fn mark_allocated(&self, p: *mut u8) {
        let h = header_of(p);
        // SAFETY: `p` was just taken from one of our slabs, which is live.
        let (h, idx) = unsafe { (&*h, (*h).index_of(&self.layout, p)) };
        let idx = idx.expect("slab: allocator produced a misaligned object");
        let old = h.swap_state(&self.layout, idx, OBJ_ALLOCATED);
        assert_eq!(
            old, OBJ_FREE,
            "slab cache {}: object {p:p} handed out twice (allocator corruption)",
            self.name
        );
    }

    /// Debug check of a pointer passed to free: a slab object of this cache, currently allocated.
    fn check_free(&self, p: *mut u8) {
        assert!(
            slab::is_slab_object(p),
            "slab cache {}: free of {p:p}, which is not a slab object",
            self.name
        );
        let h = header_of(p);
        // SAFETY: `is_slab_object` found a live slab header at `h`.
        let h = unsafe { &*h };
        assert!(
            core::ptr::eq(h.cache, self),
            "slab cache {}: free of {p:p}, which belongs to another cache",
            self.name
        );
        let idx = h.index_of(&self.layout, p);
        let Some(idx) = idx else {
            panic!(
                "slab cache {}: free of {p:p}, which is not the start of an object",
                self.name
            );
        };
        let old = h.swap_state(&self.layout, idx, OBJ_FREE);
        assert_eq!(
            old, OBJ_ALLOCATED,
            "slab cache {}: double free of {p:p}",
            self.name
        );
    }

    /// Flushes per-CPU sheaves and gives every empty slab back (a typesafe cache: as many as its
    /// pending-discard cap grants); returns the slabs released.
    pub(crate) fn shrink(&self) -> usize {
        let mut out = Detached::new();
        {
            let _f = flush_lock();
            // Each entry's objects straight back to their slabs (no list on the heap: a shrink
            // runs when memory is short). The node lock is a leaf, so taking it under the steal
            // lock adds no cycle.
            tcache::steal(self, false, |objs| {
                self.return_objects(objs, Mode::Normal);
            });
            self.cpu.flush_all(self, false);
            self.node()
                .lock(Mode::Normal)
                .expect("Normal")
                .detach_empty(&mut || crate::typesafe::reserve_discard(self), &mut out);
        }
        self.discard(out)
    }

    /// What the shrinker could free now (cached objects plus objects of empty slabs).
    fn freeable(&self) -> usize {
        let c = self.node_counts();
        self.cpu.cached_objects() + tcache::counts(self).0 + c.empty * self.layout.nr
    }

    pub(crate) fn node_counts(&self) -> NodeCounts {
        self.node().lock(Mode::Normal).expect("Normal").counts()
    }

    /// Statistics snapshot.
    pub(crate) fn stats(&self) -> CacheStats {
        let c = self.node_counts();
        let (a, f) = self.cpu.counts();
        let (tc_cached, tc_a, tc_f) = tcache::counts(self);
        let allocs = a + tc_a + self.direct_allocs.load(Ordering::Relaxed);
        let frees = f + tc_f + self.direct_frees.load(Ordering::Relaxed);
        let slabs = c.partial + c.full + c.empty;
        CacheStats {
            name: self.name.clone(),
            object_size: self.layout.size,
            object_stride: self.layout.stride,
            objects_per_slab: self.layout.nr,
            pages_per_slab: self.layout.pages,
            active_objects: allocs.saturating_sub(frees) as usize,
            total_objects: slabs * self.layout.nr,
            slabs,
            partial_slabs: c.partial,
            full_slabs: c.full,
            empty_slabs: c.empty,
            cpu_cached_objects: self.cpu.cached_objects() + tc_cached,
            thread_cached_objects: tc_cached,
            rcu_pending_slabs: self.rcu_pending.load(Ordering::Relaxed),
            slabs_created: self.slabs_created.load(Ordering::Relaxed),
            slabs_freed: self.slabs_freed.load(Ordering::Relaxed),
            allocs,
            frees,
            alloc_failures: self.alloc_failures.load(Ordering::Relaxed),
            typesafe_by_rcu: self.typesafe,
        }
    }
}

impl Backing for RawCache {
    fn refill(&self, sheaf: &mut Sheaf, mode: Mode) -> usize {
        let mut total = 0;
        loop {
            let Some(mut g) = self.node().lock(mode) else {
                return total;
            };
            total += g.take(&self.layout, |o| {
                if sheaf.is_full() {
                    return false;
                }
                sheaf.push(o);
                true
            });
            drop(g);
            if total > 0 || mode == Mode::Nolock {
                return total;
            }
            // No free object on this node: map a new slab with no lock held (lock order: page
            // allocations may run shrinkers). Only the CPU slot try-lock is held.
            match SlabHeader::create(self, true) {
                Some(s) => self.node().lock(mode).expect("Normal").add_slab(s),
                None => return total,
            }
        }
    }

    fn flush(&self, sheaf: &mut Sheaf, mode: Mode) -> bool {
        if sheaf.is_empty() {
            return true;
        }
        // The sheaf is emptied before the discard: a `Drop` panicking there must not leave it
        // holding objects already back in their slabs (its next flush would free them twice).
        let Some(out) = self.put_objects(sheaf.objects(), mode) else {
            return false;
        };
        sheaf.clear();
        self.discard(out);
        true
    }
}

/// Memory nodes the caches keep lists for (NUMA is not probed: one).
fn nr_nodes() -> usize {
    1
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;

    #[test]
    fn builder_rejects_bad_input() {
        #[derive(Default)]
        struct Z;
        let e = KmemCache::<Z>::builder("u-zst")
            .typesafe_by_rcu(true)
            .ctor(|| Z)
            .build();
        assert!(matches!(e, Err(SlabError::ZeroSizedTypesafe(_))));
        let e = KmemCache::<u64>::builder("u-noctor")
            .typesafe_by_rcu(true)
            .build();
        assert!(matches!(e, Err(SlabError::TypesafeWithoutCtor(_))));
        let e = KmemCache::<u64>::builder("u-align").align(3).build();
        assert!(matches!(e, Err(SlabError::BadAlignment { .. })));
        let e = KmemCache::<u64>::builder("u-align2")
            .align(2 * PAGE_SIZE)
            .build();
        assert!(matches!(e, Err(SlabError::BadAlignment { .. })));
        let e = KmemCache::<[u8; 70_000]>::builder("u-big").build();
        assert!(matches!(e, Err(SlabError::TooLarge { .. })));
        let a = KmemCache::<u64>::builder("u-dup").build().unwrap();
        let e = KmemCache::<u64>::builder("u-dup").build();
        assert!(matches!(e, Err(SlabError::DuplicateName(_))));
        assert!(e.unwrap_err().to_string().contains("u-dup"));
        drop(a);
        KmemCache::<u64>::builder("u-dup")
            .build()
            .expect("name free again after destroy");
    }

    #[test]
    fn hwcache_align_pads_to_cache_lines() {
        let c = KmemCache::<[u8; 24]>::builder("u-hw")
            .hwcache_align(true)
            .build()
            .unwrap();
        let ps: Vec<_> = (0..10).map(|_| c.alloc().unwrap()).collect();
        for p in &ps {
            assert_eq!(p.as_ptr() as usize % 64, 0);
        }
        assert_eq!(c.stats().object_stride, 64);
        // SAFETY: each pointer is a live object of `c`, freed once.
        unsafe { c.free_bulk(&ps) };
    }

    #[test]
    fn all_slots_busy_goes_to_the_slab_lists() {
        let c = KmemCache::<u64>::builder("u-direct").build().unwrap();
        let cpus = rcu_core::cpu::possible_cpus();
        fn hold(c: &RawCache, cpu: usize, n: usize, f: &mut dyn FnMut()) {
            if cpu == n {
                f();
            } else {
                c.cpu.with_slot_held(cpu, || hold(c, cpu + 1, n, f));
            }
        }
        let mut ps = Vec::new();
        hold(c.raw(), 0, cpus, &mut || {
            for _ in 0..5 {
                ps.push(c.alloc().unwrap());
            }
            // SAFETY: live objects of `c`.
            unsafe { c.free_bulk(&ps) };
        });
        let s = c.stats();
        assert_eq!(s.allocs, 5);
        assert_eq!(s.frees, 5);
        assert_eq!(s.active_objects, 0);
    }

    #[test]
    fn ctor_state_survives_reuse_and_is_dropped_on_destroy() {
        static DROPS: StdAtomicUsize = StdAtomicUsize::new(0);
        struct D(u64);
        impl Drop for D {
            fn drop(&mut self) {
                DROPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let c = KmemCache::<D>::builder("u-drop")
            .ctor(|| D(5))
            .build()
            .unwrap();
        let p = c.alloc().unwrap();
        // SAFETY: a valid D we own.
        unsafe {
            assert_eq!((*p.as_ptr()).0, 5);
            (*p.as_ptr()).0 = 9;
            c.free(p);
        }
        let q = c.alloc().unwrap();
        // SAFETY: a valid D we own (LIFO sheaf: the same object, state kept).
        unsafe {
            assert_eq!(q, p);
            assert_eq!((*q.as_ptr()).0, 9);
            c.free(q);
        }
        let per_slab = c.stats().objects_per_slab;
        c.destroy().unwrap();
        assert_eq!(DROPS.load(std::sync::atomic::Ordering::Relaxed), per_slab);
    }

    #[test]
    fn a_panicking_ctor_drops_what_it_made_and_unmaps_the_slab() {
        use std::sync::atomic::Ordering::Relaxed;
        static MADE: StdAtomicUsize = StdAtomicUsize::new(0);
        static DROPS: StdAtomicUsize = StdAtomicUsize::new(0);
        struct D;
        impl Drop for D {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Relaxed);
            }
        }
        let c = KmemCache::<D>::builder("u-ctor-panics")
            .ctor(|| {
                if MADE.fetch_add(1, Relaxed) == 5 {
                    panic!("the ctor fails");
                }
                D
            })
            .build()
            .unwrap();
        let freed = crate::memory_stats().runs_freed;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.alloc()));
        assert!(r.is_err(), "the ctor's panic reaches the caller");
        assert_eq!(
            DROPS.load(Relaxed),
            5,
            "the objects the ctor made before it panicked are dropped"
        );
        assert!(
            crate::memory_stats().runs_freed > freed,
            "the half-made slab's pages are given back"
        );
        // The cache stays usable.
        let p = c.alloc().unwrap();
        // SAFETY: from this cache, not used afterwards.
        unsafe { c.free(p) };
        c.destroy().unwrap();
    }

    #[test]
    fn destroy_reports_leaks() {
        let c = KmemCache::<u64>::builder("u-leak")
            .debug(true)
            .build()
            .unwrap();
        let _p = c.alloc().unwrap();
        let e = c.destroy().unwrap_err();
        assert_eq!(
            e,
            SlabError::Leaked {
                name: "u-leak".into(),
                objects: 1
            }
        );
    }
}
