//! The cache layer's part of `fork()` handling: the handlers `crate::fork` registers call these
//! to take, release and reset the locks of every registered cache, and to revive the per-CPU
//! slots that other threads held at the fork.
//!
//! # Implementation
//!
//! Lock order (the cache module's "Lock order"): `REGISTRY`, `FLUSH`, then per registered cache
//! its steal lock, its CPU slots, its barn and its node locks. Prepare takes them in that order
//! (a slot holder is waited for at most [`FORK_SLOT_WAIT_NS`] in total: it may be blocked on a
//! lock prepare already holds, and its slot is then dead in the child); parent releases them;
//! child releases them too, marks the slots other threads held as dead and forgets their
//! in-flight discards. No allocation in any handler.

use super::{FLUSH, REGISTRY};
use crate::primitive::sync::atomic::Ordering;

/// Slot holders the `fork()` prepare handler waits for, in total (nanoseconds). A holder may be
/// blocked on a lock the handler already holds; its slot is then given up on (dead in the child).
const FORK_SLOT_WAIT_NS: u64 = 5_000_000;

/// `fork()` prepare handler: takes `REGISTRY`, `FLUSH`, then per registered cache its steal
/// lock, its CPU slots (bounded wait), its barn and node locks. No allocation.
pub(crate) fn fork_prepare() {
    REGISTRY.raw().lock();
    FLUSH.raw().lock();
    // SAFETY: REGISTRY is held until the parent or child handler releases it.
    let caches = unsafe { REGISTRY.get_locked() };
    for c in caches.iter() {
        c.tc_steal_lock.raw().lock();
    }
    let start = rcu_core::raw::monotonic_ns();
    let mut expired = || rcu_core::raw::monotonic_ns().saturating_sub(start) > FORK_SLOT_WAIT_NS;
    for c in caches.iter() {
        c.cpu.fork_lock_slots(&mut expired);
    }
    for c in caches.iter() {
        c.cpu.fork_lock_barn();
        for n in c.nodes.iter() {
            n.fork_lock();
        }
    }
}

/// `fork()` parent handler: releases what [`fork_prepare`] took.
pub(crate) fn fork_parent() {
    // SAFETY: REGISTRY is held (taken by `fork_prepare`).
    let caches = unsafe { REGISTRY.get_locked() };
    for c in caches.iter() {
        for n in c.nodes.iter() {
            n.fork_unlock();
        }
        c.cpu.fork_unlock();
        c.tc_steal_lock.raw().unlock();
    }
    FLUSH.raw().unlock();
    REGISTRY.raw().unlock();
}

/// `fork()` child handler: releases what [`fork_prepare`] took, marks the slots other threads
/// held as dead (returns whether there is one) and forgets the discards other threads had
/// stashed (those slabs are leaked in the child). No allocation.
pub(crate) fn fork_child() -> bool {
    // SAFETY: REGISTRY is held (taken by `fork_prepare` on this thread).
    let caches = unsafe { REGISTRY.get_locked() };
    let mut dead = false;
    for c in caches.iter() {
        for n in c.nodes.iter() {
            n.fork_unlock();
        }
        dead |= c.cpu.fork_child();
        c.tc_steal_lock.raw().unlock();
        // Relaxed: the child is single-threaded here.
        c.discards_in_flight.store(0, Ordering::Relaxed);
    }
    FLUSH.raw().unlock();
    REGISTRY.raw().unlock();
    dead
}

/// Gives the dead slots of every registered cache new sheaves (see [`fork_child`]); `false` if
/// the registry lock was not free (the caller may hold it: try again later).
pub(crate) fn revive_dead_slots() -> bool {
    let Some(reg) = super::try_registry() else {
        return false;
    };
    for c in reg.iter() {
        c.cpu.revive_dead();
    }
    true
}
