//! The typed user API over a raw cache: [`KmemCache<T>`] and its builder (layout from `T`,
//! the optional constructor, typesafe-by-RCU, destruction with leak reporting). Every object
//! operation forwards to [`RawCache`](super::RawCache) (module docs of `cache`).

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, ManuallyDrop};
use core::ptr::NonNull;
use std::sync::Arc;

use super::destroy::{destroy_blocked, destroy_deferred, destroy_raw};
use super::{CtorFn, RawCache, RawConfig, SlabError};
use crate::sheaf::Mode;
use crate::stats::CacheStats;

/// A cache of `T`-sized objects with per-CPU sheaves, per-node slab lists and optional
/// `SLAB_TYPESAFE_BY_RCU` semantics.
///
/// ```
/// use slab_backend::KmemCache;
/// #[derive(Default)]
/// struct Node { key: u64, val: u64 }
/// let cache = KmemCache::<Node>::builder("doc-nodes").ctor(Node::default).build().unwrap();
/// let p = cache.alloc().unwrap();
/// // SAFETY (doc): with a ctor, `p` points to a valid Node that we own.
/// unsafe {
///     (*p.as_ptr()).key = 7;
///     cache.free(p);
/// }
/// assert_eq!(cache.stats().active_objects, 0);
/// ```
///
/// Dropping a typesafe cache waits for pending RCU page releases with `rcu_barrier()`. Where that
/// cannot wait (inside a read-side critical section, or in a `call_rcu` callback: for example an
/// `RcuCell` retiring a value that owns the cache), the drop returns at once and the cache is
/// destroyed on a thread of its own once the waiting is over; its name stays taken until then.
/// Dropping a cache with objects still allocated reports the leak on stderr and keeps their memory
/// (see [`KmemCache::destroy`]).
pub struct KmemCache<T> {
    /// Taken out exactly once, by `destroy` or `Drop`.
    raw: ManuallyDrop<Arc<RawCache>>,
    _t: PhantomData<fn(T) -> T>,
}

// SAFETY: the cache hands out `T` slots that any thread may use and free; its interior is
// synchronised by the slot, barn and node locks. `T: Send` because objects (and, for ctor
// caches, the drop of `T` on slab discard, maybe on an RCU worker) cross threads.
unsafe impl<T: Send> Send for KmemCache<T> {}
// SAFETY: as for Send; every `&self` method is thread-safe.
unsafe impl<T: Send> Sync for KmemCache<T> {}

impl<T> fmt::Debug for KmemCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmemCache")
            .field("name", &self.raw.name)
            .field("object_size", &self.raw.layout.size)
            .field("typesafe_by_rcu", &self.raw.typesafe)
            .finish()
    }
}

/// Builder of a [`KmemCache`], from [`KmemCache::builder`].
pub struct KmemCacheBuilder<T> {
    name: String,
    typesafe: bool,
    hwcache: bool,
    debug: bool,
    align: usize,
    ctor: Option<Arc<dyn Fn() -> T + Send + Sync>>,
}

impl<T> fmt::Debug for KmemCacheBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmemCacheBuilder")
            .field("name", &self.name)
            .field("typesafe", &self.typesafe)
            .field("hwcache", &self.hwcache)
            .field("debug", &self.debug)
            .field("align", &self.align)
            .field("ctor", &self.ctor.is_some())
            .finish()
    }
}

impl<T: Send + 'static> KmemCacheBuilder<T> {
    /// `SLAB_TYPESAFE_BY_RCU`: freed objects may be reused at once, but their memory stays a valid
    /// `T` of this cache until every read-side critical section that could have seen them ended.
    /// Requires a ctor. Read the crate-level WARNING.
    pub fn typesafe_by_rcu(mut self, on: bool) -> Self {
        self.typesafe = on;
        self
    }

    /// `SLAB_HWCACHE_ALIGN`: objects start on (and are padded to) 64-byte cache lines.
    pub fn hwcache_align(mut self, on: bool) -> Self {
        self.hwcache = on;
        self
    }

    /// A constructor run once per object when a fresh slab is made (never on `alloc`). Its state
    /// survives reuse: `free` hands the object back still holding a valid `T`, which the cache
    /// drops only when the slab's pages are released. It may be a closure that captures (it runs
    /// on whichever thread makes a slab, hence `Send + Sync`).
    ///
    /// ```
    /// use slab_backend::KmemCache;
    /// let tag = 7u32;
    /// let c = KmemCache::<(u32, u64)>::builder("doc-ctor-closure")
    ///     .ctor(move || (tag, 0))
    ///     .build()
    ///     .unwrap();
    /// let p = c.alloc().unwrap();
    /// // SAFETY (doc): with a ctor, `p` is a valid (u32, u64) that we own.
    /// assert_eq!(unsafe { p.as_ref() }.0, 7);
    /// unsafe { c.free(p) };
    /// ```
    pub fn ctor<F: Fn() -> T + Send + Sync + 'static>(mut self, f: F) -> Self {
        self.ctor = Some(Arc::new(f));
        self
    }

    /// A minimum object alignment (a power of two up to the page size).
    pub fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// Double-free and foreign-pointer checks on every free. On by default in debug builds.
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// Creates the cache.
    pub fn build(self) -> Result<KmemCache<T>, SlabError> {
        let name = self.name;
        if self.typesafe && size_of::<T>() == 0 {
            return Err(SlabError::ZeroSizedTypesafe(name));
        }
        if self.typesafe && self.ctor.is_none() {
            return Err(SlabError::TypesafeWithoutCtor(name));
        }
        if !self.align.is_power_of_two() {
            return Err(SlabError::BadAlignment {
                name,
                align: self.align,
            });
        }
        let mut align = self.align.max(align_of::<T>());
        if self.hwcache {
            align = align.max(64);
        }
        let has_ctor = self.ctor.is_some();
        let ctor: Option<Box<CtorFn>> = self.ctor.map(|f| {
            Box::new(move |p: *mut u8| {
                // SAFETY: `p` is an object slot of a `T` cache: sized and aligned for `T`
                // (layout), fresh (no `T` to overwrite).
                unsafe { p.cast::<T>().write(f()) }
            }) as Box<CtorFn>
        });
        let drop_obj: Option<unsafe fn(*mut u8)> = if has_ctor && core::mem::needs_drop::<T>() {
            Some(drop_slot::<T>)
        } else {
            None
        };
        let raw = RawCache::create(RawConfig {
            name,
            size: size_of::<T>(),
            align,
            typesafe: self.typesafe,
            debug: self.debug,
            kmalloc: false,
            ctor,
            drop_obj,
        })?;
        Ok(KmemCache {
            raw: ManuallyDrop::new(raw),
            _t: PhantomData,
        })
    }
}

/// Drops the `T` in a slot.
///
/// # Safety
/// `p` holds a valid `T` that nobody uses any more.
unsafe fn drop_slot<T>(p: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::drop_in_place(p.cast::<T>()) }
}

impl<T: Send + 'static> KmemCache<T> {
    /// Starts building a cache named `name`.
    pub fn builder(name: &str) -> KmemCacheBuilder<T> {
        KmemCacheBuilder {
            name: name.to_owned(),
            typesafe: false,
            hwcache: false,
            debug: cfg!(debug_assertions),
            align: 1,
            ctor: None,
        }
    }

    /// Allocates an object: with a ctor a valid `T` (maybe a reused one, in whatever state its
    /// last user freed it), without one uninitialised memory. `None` when no memory can be had.
    #[inline]
    pub fn alloc(&self) -> Option<NonNull<T>> {
        self.raw.alloc(Mode::Normal).ok().map(NonNull::cast)
    }

    /// Gives an object back.
    ///
    /// # Safety
    /// `p` came from this cache's `alloc` and was not freed since; the caller does not use it
    /// afterwards. With a ctor it must hold a valid `T` (the next `alloc` returns it as is);
    /// without one, the cache never drops it (drop it first if needed). For a typesafe cache,
    /// readers in read-side critical sections may still look at it (that is the point), but they
    /// must revalidate identity.
    #[inline]
    pub unsafe fn free(&self, p: NonNull<T>) {
        // SAFETY: forwarded contract; `Normal` mode never fails.
        let _ = unsafe { self.raw.free(p.cast(), Mode::Normal, false) };
    }

    /// Frees a batch of objects.
    ///
    /// # Safety
    /// As for [`KmemCache::free`], for each pointer; no pointer twice.
    pub unsafe fn free_bulk(&self, ps: &[NonNull<T>]) {
        for &p in ps {
            // SAFETY: forwarded contract.
            unsafe { self.free(p) };
        }
    }

    /// Flushes the per-CPU sheaves and releases every empty slab; returns how many slabs were
    /// released (for a typesafe cache: queued for release after a grace period; this never waits
    /// for readers; inside a read-side critical section its empty slabs are kept; and only as
    /// many as fit its cap on slabs waiting for a grace period, 4 MiB or 4 slabs: the others stay
    /// cached until earlier releases have gone).
    pub fn shrink(&self) -> usize {
        self.raw.shrink()
    }

    /// A statistics snapshot.
    pub fn stats(&self) -> CacheStats {
        self.raw.stats()
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.raw.name
    }

    /// Whether freed objects stay type-stable until a grace period passes.
    pub fn is_typesafe_by_rcu(&self) -> bool {
        self.raw.typesafe
    }

    /// Destroys the cache: flushes it, releases its slabs (after `rcu_barrier()` for typesafe
    /// caches) and reports objects still allocated as [`SlabError::Leaked`], in which case their
    /// memory is kept (leaked) rather than freed under a possible user.
    ///
    /// # Panics
    /// For a typesafe cache, inside a read-side critical section, on an RCU callback thread, or
    /// in the destructor of an object kfree-batch is freeing (`rcu_barrier` would wait for
    /// itself, or for a callback waiting for the caller; see [`rcu_core::may_block`]). The panic comes before
    /// anything is done: the cache is leaked as it was, with its objects and slabs. Dropping the
    /// cache there instead defers the destroy to another thread.
    pub fn destroy(self) -> Result<(), SlabError> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the Arc is taken exactly once.
        let raw = unsafe { ManuallyDrop::take(&mut this.raw) };
        destroy_raw(raw)
    }

    /// The type-erased cache (unit tests and [`crate::test_hooks`]).
    pub(crate) fn raw(&self) -> &RawCache {
        &self.raw
    }
}

impl<T> Drop for KmemCache<T> {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once and `self.raw` is not used after this take.
        let raw = unsafe { ManuallyDrop::take(&mut self.raw) };
        // No panic here: the drop may be part of an unwind (a second panic aborts).
        match destroy_blocked(&raw) {
            Some(why) => destroy_deferred(raw, why),
            None => {
                let _ = destroy_raw(raw);
            }
        }
    }
}
