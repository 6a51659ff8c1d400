//! The cache's sanitizer hooks: what `crate::sanitize` (below the page layer) does for the
//! objects of one cache, by its mode (normal or typesafe) and the typesafe RCU debug mode. The
//! mechanism and its invariants are in `crate::sanitize`'s Implementation section.

use core::ptr::NonNull;

use super::RawCache;
#[cfg(rcu_sanitize)]
use crate::sanitize::debug;
use crate::sanitize::poison;
use crate::sanitize::unpoison;

/// An object of `cache` is handed out.
#[inline(always)]
pub(crate) fn on_alloc(cache: &RawCache, p: *mut u8) {
    unpoison(p, cache.layout.size);
}

/// An object of `cache` is being freed (`Normal` mode). Returns `true` if the free was deferred
/// by a grace period (typesafe RCU debug mode): the caller must not free it now.
#[inline(always)]
pub(crate) fn on_free(cache: &RawCache, p: NonNull<u8>) -> bool {
    #[cfg(rcu_sanitize)]
    {
        if cache.typesafe {
            if debug::REAL_FREE.with(|f| f.get()) {
                poison(p.as_ptr(), cache.layout.size);
                return false;
            }
            if debug::get() && defer_free(cache, p) {
                return true;
            }
            return false;
        }
        poison(p.as_ptr(), cache.layout.size);
    }
    #[cfg(not(rcu_sanitize))]
    let _ = (cache, p);
    false
}

/// A kmalloc object is about to be freed in `Nolock` mode (maybe in a signal handler: no
/// deferral there). If the free fails, `on_alloc` makes it addressable again before the
/// deferred list links it through its first word.
#[inline(always)]
pub(crate) fn on_free_nolock(cache: &RawCache, p: NonNull<u8>) {
    if !cache.typesafe {
        poison(p.as_ptr(), cache.layout.size);
    }
}

/// Queues the real free of a typesafe object after a grace period (Implementation, 3); `false`
/// if the callback could not be queued (the caller frees the object now).
#[cfg(rcu_sanitize)]
#[cold]
fn defer_free(cache: &RawCache, p: NonNull<u8>) -> bool {
    // SAFETY: every `RawCache` lives in an `Arc` (`RawCache::create`; the kmalloc classes hold
    // theirs), and the caller's reference keeps it alive now, so taking one more strong count
    // is sound.
    let arc = unsafe {
        let raw = cache as *const RawCache;
        std::sync::Arc::increment_strong_count(raw);
        std::sync::Arc::from_raw(raw)
    };
    let addr = p.as_ptr() as usize;
    // Relaxed: destroy's owner freed the objects (program order) before destroying the cache;
    // a free on another thread reaches the destroy through whatever handed the cache over.
    debug::DEFERRED.store(true, crate::primitive::sync::atomic::Ordering::Relaxed);
    rcu_core::try_call_rcu(move || {
        // SAFETY: `addr` is an object of this cache that its owner freed a grace period ago;
        // nobody else frees it.
        let p = unsafe { NonNull::new_unchecked(addr as *mut u8) };
        debug::REAL_FREE.with(|f| f.set(true));
        // SAFETY: as above; `checked`: the debug checks ran at the first free.
        unsafe { arc.free_normal(p, arc.tc_id, true) };
        debug::REAL_FREE.with(|f| f.set(false));
    })
    .is_ok() // the closure given back drops its `Arc`
}

/// Before a typesafe cache is destroyed: once the RCU debug mode deferred a free (it may have
/// been switched off since), wait for the deferred frees.
/// The caller checked that the thread may block (`destroy_blocked`).
pub(crate) fn before_destroy(cache: &RawCache) {
    #[cfg(rcu_sanitize)]
    if cache.typesafe
        && debug::DEFERRED.load(crate::primitive::sync::atomic::Ordering::Relaxed)
        && rcu_core::may_block()
    {
        rcu_core::rcu_barrier();
    }
    #[cfg(not(rcu_sanitize))]
    let _ = cache;
}
