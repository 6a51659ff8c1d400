//! Destroying a cache: unregister it, flush every layer back to the slabs, discard them (after a
//! grace period for a `SLAB_TYPESAFE_BY_RCU` cache) and report leaks; or, where the caller may
//! not wait, do it on a thread of its own.
//!
//! # Implementation
//!
//! The steps, their invariants (the cache module's Invariants 1 and 3: a slab with live objects
//! keeps its cache; a typesafe destroy waits for its deferred discards with `rcu_barrier`) and
//! why no lock is held across the waits are in the comments of [`destroy_raw`].

use core::mem::ManuallyDrop;
use std::sync::Arc;

use super::node::Detached;
use super::{registry, tcache, RawCache, SlabError};
use crate::primitive::sync::atomic::Ordering;
use crate::sheaf::Mode;

/// Why the calling thread cannot destroy `raw` now, or `None` if it can: a typesafe cache's
/// destroy waits for its RCU-deferred discards with `rcu_barrier`, which would wait for itself
/// inside a read-side critical section or on a callback thread, and for a callback that waits
/// for the caller inside a no-barrier scope (`rcu_core::raw::enter_no_barrier`: a kfree-batch
/// free) (cache Invariant 3).
pub(crate) fn destroy_blocked(raw: &RawCache) -> Option<&'static str> {
    if !raw.typesafe || rcu_core::may_block() {
        None
    } else if rcu_core::rcu_read_lock_held() {
        Some("inside an RCU read-side critical section")
    } else if let Some(why) = rcu_core::raw::no_barrier_reason() {
        Some(why)
    } else {
        Some("on an RCU callback thread")
    }
}

/// Destroys a cache (see [`KmemCache::destroy`]). The caller gave up the last user handle, so
/// no thread allocates from or frees to it any more.
///
/// # Panics
/// Where [`destroy_blocked`] says no, before touching the cache: it stays registered (the
/// registry's `Arc` keeps it alive) and intact, only ownerless.
pub(crate) fn destroy_raw(raw: Arc<RawCache>) -> Result<(), SlabError> {
    if let Some(why) = destroy_blocked(&raw) {
        panic!(
            "slab cache {}: destroyed {why}; destroying a SLAB_TYPESAFE_BY_RCU cache waits for \
             its pending slab releases with rcu_barrier(), which cannot wait here. The \
             cache is left as it was (leaked); destroy it outside readers and callbacks",
            raw.name
        );
    }
    // In the typesafe RCU debug mode, frees deferred by a grace period must land before the
    // objects are counted below (else they would be reported as leaked); also on the thread of
    // a deferred destroy.
    super::sanitize::before_destroy(&raw);
    // From here on slabs may be queued for discard through `call_rcu`, pointing to the cache: it
    // is freed only at the end, when every one of them has run, and never by an unwind (a panic
    // on the way leaks it; cache Invariant 1).
    let raw = ManuallyDrop::new(raw);
    registry().retain(|c| !Arc::ptr_eq(c, &raw));
    // In a `fork()` child, slots held by threads that do not exist there get new sheaves, so
    // the flush below does not wait for them forever.
    raw.cpu.revive_dead();
    let mut out = Detached::new();
    let counts = {
        // No FLUSH lock here: the cache is out of the registry (no shrinker reaches it) and its
        // owner gave it up, so nobody else flushes it; and waiting for slots while holding FLUSH
        // could deadlock against a slot holder whose page allocation runs the slab shrinker.
        // Thread caches first (every thread's, waiting for owners in a window; entries are
        // unbound so the id can be reused), then the per-CPU layer.
        tcache::steal(&raw, true, |objs| {
            raw.return_objects(objs, Mode::Normal);
        });
        raw.cpu.flush_all(&**raw, true);
        let mut g = raw.node().lock(Mode::Normal).expect("Normal");
        // Every empty slab goes, past the typesafe pending-discard cap too: nothing may stay
        // behind, and the barrier below waits for all of them.
        g.detach_empty(
            &mut || crate::typesafe::force_reserve_discard(&raw),
            &mut out,
        );
        g.counts()
    };
    raw.discard_with(out, true);
    // Slabs that a registry or flush holder detached before we unregistered the cache are
    // discarded right after that lock is released; they point to the cache (cache Invariant 1).
    let mut waited = 0u32;
    // Acquire: pairs with the Release decrement in `discard_stash`.
    while raw.discards_in_flight.load(Ordering::Acquire) != 0 {
        waited += 1;
        if waited < 100 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    if raw.typesafe {
        // Every RCU-deferred discard (this one's and earlier shrinks') must have run before the
        // cache goes (cache Invariant 1).
        rcu_core::rcu_barrier();
    }
    if counts.inuse > 0 {
        let e = SlabError::Leaked {
            name: raw.name.clone(),
            objects: counts.inuse,
        };
        eprintln!("{e}");
        // cache Invariant 1: slabs with live objects keep pointing at the cache, so it must stay (with
        // its thread-cache id: tcache Invariant 2); `raw` is never dropped.
        return Err(e);
    }
    tcache::free_id(raw.tc_id);
    drop(ManuallyDrop::into_inner(raw));
    Ok(())
}

/// Destroys `raw` on a new thread, for a drop where the caller may not wait ([`destroy_blocked`]
/// said `why`). If no thread can be started, the cache is leaked: it stays registered and intact
/// (the registry's `Arc` keeps it), and the leak is reported on stderr.
///
/// Nothing here allocates unless the thread starts (`rcu_core::lowmem`): the name is copied
/// onto the stack for the report, the start fails softly when the heap is exhausted, and the
/// report is written without allocating.
pub(crate) fn destroy_deferred(raw: Arc<RawCache>, why: &str) {
    let mut name = rcu_core::lowmem::StackBuf::<128>::new();
    let _ = core::fmt::Write::write_str(&mut name, &raw.name);
    let spawned = rcu_core::lowmem::spawn(format_args!("slab-destroy"), move || {
        // Not the CPU binding of a callback invoker that may have started us.
        rcu_core::cpu::unbind_thread();
        let _ = destroy_raw(raw);
    });
    if let Err(e) = spawned {
        // The closure, and with it our `Arc`, was dropped: the registry's keeps the cache.
        rcu_core::lowmem::report(format_args!(
            "slab cache {}: dropped {why}, where it cannot wait for its pending RCU slab \
             releases, and no thread to destroy it could be started ({}); the cache is leaked",
            name.as_str(),
            rcu_core::lowmem::OsError(&e)
        ));
    }
}
