//! `fork()` handling: the child of a multi-threaded process has only the forking thread, but a
//! copy of every lock and flag the others held at that moment.
//!
//! # Implementation
//!
//! `pthread_atfork` handlers, installed once (first cache or shrinker registration, or
//! [`install_fork_handlers`]); none of them allocates. The registration is claimed with the
//! claimer's process id, not run in a `std::sync::Once`: a child of a `fork()` during it
//! registers the handlers itself unless the child handler ran (which marks them registered),
//! instead of waiting for a thread it does not have.
//!
//! * **prepare** takes the slab layer's locks in the documented order: the init lock (held
//!   while the kmalloc classes or the slab shrinker are set up, so no `OnceLock` is inherited
//!   in mid-initialisation) → the cache registry →
//!   `FLUSH` → every registered cache's steal lock → its CPU slots → its barn and node locks →
//!   the thread-cache id lock → the shrinker registry. Lock holders never wait for anything
//!   that needs a lock taken later (no grace period, no page allocation, no user code runs
//!   under them: discards are deferred until `REGISTRY`/`FLUSH` are released), so this waits
//!   only for critical sections to end. CPU slots are the exception: a slot is held across page
//!   allocations (which may run the slab shrinker, which needs the registry) and user ctors, so
//!   prepare waits for slot holders at most a few milliseconds in total and leaves the rest.
//! * **parent** releases everything.
//! * **child** releases everything prepare took. A slot still held belongs to a thread that does
//!   not exist in the child and may have stopped in the middle of moving sheaves: it is marked
//!   *dead* and stays locked (normal paths use another slot or the slab lists); the next
//!   slow-path call (refill, spill, direct allocation, cache creation, destroy) gives dead slots
//!   new empty sheaves and unlocks them. Thread-cache blocks of other threads get their `busy`
//!   flag cleared and are released for reuse (see `cache/tcache.rs`). Discards other threads
//!   had deferred are forgotten.
//!
//! **What the child loses (leaks, never reuses):** the objects in a dead slot's sheaves, those
//! in a thread-cache entry whose owner was in the middle of moving them (`spill`), objects
//! another thread was carrying between layers, and slabs it had detached but not discarded.
//! Destroying a cache in the child then reports those objects as [`crate::SlabError::Leaked`]
//! and keeps its memory. Objects in the thread caches of other threads outside such a step are
//! not lost: shrink and destroy take them back as from exited threads.
//!
//! **Ordering with the crates around this one.** Prepare handlers run in reverse order of
//! registration, parent and child handlers in order. Slab lock holders call into rcu-core
//! (`call_rcu`, the heavy barrier), so rcu-core's handlers are registered first (its prepare
//! runs after ours). Crates built on this one (kfree-batch) call [`install_fork_handlers`]
//! before registering theirs, so that their prepare runs before ours: their lock holders may
//! call into this crate.
//!
//! Not supported: calling `fork()` from a ctor or a `Drop` of a cached type that the allocator
//! runs (the forking thread itself holds a slot then).
//!
//! ## Memory orderings
//! The handlers run on the forking thread with the locks held; the child is single-threaded.
//! `DEAD_SLOTS` is a hint (Relaxed); a dead slot is claimed by a CAS on its `dead` flag, and its
//! new sheaves are published by the slot's Release unlock.

use crate::lock::{Locked, LockedGuard};
use crate::primitive::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Set in a `fork()` child that has dead slots, until they are revived.
static DEAD_SLOTS: AtomicBool = AtomicBool::new(false);
/// The registration of the handlers: 0 before it, the process id of the process whose thread
/// registers them, or [`INSTALL_DONE`] (`install_slow`).
static INSTALL: AtomicU64 = AtomicU64::new(0);
/// `INSTALL` once the handlers are registered.
const INSTALL_DONE: u64 = u64::MAX;
/// Held while a one-time initialiser runs (kmalloc classes, the slab shrinker), first in the
/// lock order; prepare takes it, so a child never inherits a `OnceLock` in mid-initialisation
/// (it would wait for a thread that does not exist).
static INIT: Locked<()> = Locked::new(());

/// Takes the init lock (module docs). Never while holding another slab lock, and never around
/// a `pthread_atfork` registration (that waits for a concurrent `fork()`, whose prepare waits
/// for this lock).
pub(crate) fn init_lock() -> LockedGuard<'static, ()> {
    INIT.lock()
}

/// Installs the slab layer's `fork()` handlers (idempotent; caches and shrinkers do it on first
/// use). Crates layered on this one call it before installing their own handlers, so that their
/// prepare handler runs before this one's (module docs of `fork`).
pub fn install_fork_handlers() {
    // Acquire pairs with the Release store of `INSTALL_DONE` (rcu-core's handlers came first).
    if INSTALL.load(Ordering::Acquire) != INSTALL_DONE {
        install_slow();
    }
}

/// The registration, by one thread at a time. Not a `std::sync::Once`: a `fork()` while another
/// thread is inside it (rcu-core's initialisation runs there) would leave the child's copy
/// "running" for a thread the child does not have, and every cache creation in the child would
/// wait forever. The claim holds the claimer's process id instead: a fork child that finds its
/// parent's id there registers the handlers itself (the parent had not yet: its registration
/// would have run [`child`], which marks them registered).
#[cold]
#[inline(never)]
fn install_slow() {
    // rcu-core's handlers first, so that its prepare runs after ours (idempotent).
    let _ = rcu_core::barrier_mode();
    // SAFETY: getpid has no preconditions.
    let me = u64::from(unsafe { libc::getpid() } as u32);
    loop {
        // Acquire: as in `install_fork_handlers`.
        let cur = INSTALL.load(Ordering::Acquire);
        if cur == INSTALL_DONE {
            return;
        }
        if cur == me {
            // Another thread of this process registers them.
            std::thread::sleep(std::time::Duration::from_micros(50));
            continue;
        }
        // Unclaimed, or claimed by the parent of this fork child: ours.
        if INSTALL
            .compare_exchange(cur, me, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
        {
            break;
        }
    }
    // SAFETY: static `extern "C" fn()`s that only take and release locks and store to
    // atomics (no allocation).
    let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if r != 0 {
        eprintln!("slab: pthread_atfork failed ({r}); fork() children may hang in the allocator");
    }
    // Release pairs with the Acquire loads above (failed or not: it is not retried).
    INSTALL.store(INSTALL_DONE, Ordering::Release);
}

/// Crate-internal alias of [`install_fork_handlers`].
pub(crate) fn install() {
    install_fork_handlers();
}

extern "C" fn prepare() {
    INIT.raw().lock();
    crate::cache::fork::fork_prepare();
    crate::cache::tcache::ids_lock().lock();
    crate::shrink::registry_lock().lock();
}

extern "C" fn parent() {
    crate::shrink::registry_lock().unlock();
    crate::cache::tcache::ids_lock().unlock();
    crate::cache::fork::fork_parent();
    INIT.raw().unlock();
}

extern "C" fn child() {
    // This handler runs only if the parent had registered it (registration and `fork()` exclude
    // each other in the C library), even if its registering thread had not marked that yet.
    INSTALL.store(INSTALL_DONE, Ordering::Relaxed);
    crate::shrink::registry_lock().unlock();
    crate::cache::tcache::ids_lock().unlock();
    crate::cache::tcache::fork_child();
    if crate::cache::fork::fork_child() {
        DEAD_SLOTS.store(true, Ordering::Relaxed);
    }
    INIT.raw().unlock();
}

/// Revives dead slots if a `fork()` child has any (slow paths only: allocates).
#[inline]
pub(crate) fn revive_if_needed() {
    if DEAD_SLOTS.load(Ordering::Relaxed) {
        revive();
    }
}

#[cold]
fn revive() {
    if DEAD_SLOTS.swap(false, Ordering::Relaxed) && !crate::cache::fork::revive_dead_slots() {
        // The registry was busy (maybe held by this very caller): leave it to a later call.
        DEAD_SLOTS.store(true, Ordering::Relaxed);
    }
}
