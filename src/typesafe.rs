//! Safe `SLAB_TYPESAFE_BY_RCU` caches: [`TypesafeCache`], the counted reference [`TsRef`], and
//! the published slot [`TsAtomic`] with the canonical revalidating lookup [`TsAtomic::get`].
//!
//! # WARNING: a typesafe object can be freed and reused while a reader holds a pointer to it
//!
//! The kernel's rule for `SLAB_TYPESAFE_BY_RCU`: the cache delays the release of its *pages*,
//! not of its *objects*. An object a reader finds under `rcu_read_lock()` may be freed and
//! handed to a new owner — with a different key — between the lookup and the access. Its memory
//! stays a valid `T` of the cache until the reader's critical section ends, nothing more. So a
//! reader must (1) look the object up inside a read-side critical section, (2) take a reference
//! unless the count is zero (zero means free or being freed), and (3) **check the identity again
//! after taking the reference**, dropping it and retrying or missing when it does not match.
//! [`TsAtomic::get`] is that sequence.
//!
//! The rule a Rust user needs most: **a stale reader may read fields while a new owner writes
//! them**. Here the type system enforces it: the cache never hands out `&mut T` (objects are
//! initialised by the ctor, and by the `init` closure of [`TypesafeCache::alloc`] through `&T`),
//! and `T: Sync`. So every write a new owner makes goes through a type that is safe to read
//! concurrently (atomics, locks), and a plain field can only be set by the ctor: it is
//! immutable for the life of the slab, the same for every incarnation. A `u64` key that changes
//! per owner must be an `AtomicU64`. No `unsafe` is needed on the user's side.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//! use rcu_kit::{rcu_read_lock, TsAtomic, TypesafeCache};
//!
//! #[derive(Default)]
//! struct Session {
//!     id: AtomicU64, // identity: rewritten by every new owner, so atomic
//!     hits: AtomicU64,
//! }
//!
//! let cache = TypesafeCache::new("sessions", Session::default).unwrap();
//! let slot = TsAtomic::null();
//!
//! // Writer: allocate, initialise through &Session, publish.
//! let s = cache.alloc(|s| s.id.store(42, Relaxed)).unwrap();
//! assert!(slot.swap(&cache, Some(s)).is_none());
//!
//! // Reader: lookup, take a reference unless zero, check the identity again.
//! let g = rcu_read_lock();
//! let r = slot.get(&cache, &g, |s| s.id.load(Relaxed) == 42).expect("found");
//! r.hits.fetch_add(1, Relaxed);
//! assert!(slot.get(&cache, &g, |s| s.id.load(Relaxed) == 7).is_none());
//! drop(g);
//!
//! // Writer: unpublish; the object goes back to the cache when the last reference drops.
//! drop(slot.swap(&cache, None));
//! drop(r);
//! assert_eq!(cache.stats().active_objects, 0);
//! ```
//!
//! A reference cannot outlive its cache, and the cache hands out no `&mut T`:
//!
//! ```compile_fail,E0505
//! let cache = rcu_kit::TypesafeCache::new("c", || 0u64).unwrap();
//! let r = cache.alloc(|_| ()).unwrap();
//! drop(cache);
//! println!("{}", *r);
//! ```
//!
//! ```compile_fail,E0594
//! let cache = rcu_kit::TypesafeCache::new("c", || 0u64).unwrap();
//! let r = cache.alloc(|_| ()).unwrap();
//! *r = 5;
//! ```
//!
//! # Implementation
//!
//! A `TypesafeCache<T>` is a typesafe [`KmemCache`] of `Slot<T> { cache_id, refs, value }`;
//! its ctor (a closure) builds `Slot { cache_id: <this cache's id>, refs: 0, value: ctor() }`.
//!
//! Invariants:
//! 1. Every object of the cache holds a valid `Slot<T>` from its slab's creation to its slab's
//!    discard (the ctor made it one, and nothing writes a `Slot` except through `&`); the
//!    discard comes a grace period after the slab's last object was freed (slab-backend's
//!    `typesafe` module). So a pointer to an object found under a guard reads a valid `Slot<T>`
//!    until the guard drops, whatever happened to the object meanwhile.
//! 2. `refs` is 0 exactly while the object is free (or being freed: the put that reached 0).
//!    `alloc` takes a free object (0), runs `init`, then stores 1 (or, if `init` panics, frees
//!    it back with the count still 0); a reference is taken only by
//!    `alloc`, by cloning a reference, or by an increment from a non-zero value (inc-not-zero),
//!    so nobody gains a reference to a free object. The put that brings `refs` to 0 frees the
//!    object to this cache, once.
//! 3. `cache_id` is immutable after the ctor and unique per `TypesafeCache`; every free goes to
//!    the cache whose id the slot holds (checked: a slot of another cache panics).
//! 4. A [`TsRef<'c, T>`] borrows its cache for `'c`: the cache outlives every reference. A
//!    [`TsAtomic`] owns one reference while non-null; dropped non-null, it leaks that reference
//!    (the object stays allocated and the cache reports it when destroyed), never frees it.
//!
//! Names: a cache's slab name is `"<name>#<id>"`, so several caches may share a name.
//!
//! ## Memory orderings
//! * `alloc` stores `refs = 1` with Release after `init`; inc-not-zero is an Acquire CAS:
//!   a reader that gets a reference sees the new owner's `init` (and so checks the current
//!   identity, not a torn mix). Without it a reader could take a reference and read the previous
//!   owner's key.
//! * A put is a Release decrement; the one reaching 0 runs an Acquire fence before freeing
//!   (as `Arc`): every access of every holder happens before the object's reuse.
//! * Clone is a Relaxed increment (the holder's reference keeps the object alive).
//! * `TsAtomic` publishes with AcqRel swap and loads with Acquire (pairs: the pointee's `init`
//!   is visible; the identity check then goes through the reference's Acquire anyway).

use core::fmt;
use core::ops::Deref;
use core::ptr::{self, NonNull};

use rcu_core::RcuReadGuard;
use slab_backend::{CacheStats, KmemCache, SlabError};

use crate::primitive::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};

/// Ids of typesafe caches (Invariant 3); 0 is never used. Also numbers the caches of
/// [`TypesafeHashMap`](crate::map::TypesafeHashMap)s, so that no two slab names built from it
/// collide.
pub(crate) static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// An object of a [`TypesafeCache`]: its cache's id, its reference count and the value.
struct Slot<T> {
    cache_id: usize,
    refs: AtomicUsize,
    value: T,
}

/// A `SLAB_TYPESAFE_BY_RCU` cache of `T`s with counted references and safe access (see the
/// [module docs](self), and their WARNING).
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// let cache = rcu_kit::TypesafeCache::new("counters", || AtomicU32::new(0)).unwrap();
/// let a = cache.alloc(|c| c.store(5, Ordering::Relaxed)).unwrap();
/// assert_eq!(a.load(Ordering::Relaxed), 5);
/// drop(a); // the last reference: back to the cache
/// assert_eq!(cache.stats().active_objects, 0);
/// ```
pub struct TypesafeCache<T: Send + Sync + 'static> {
    id: usize,
    cache: KmemCache<Slot<T>>,
}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + Sync + 'static> TypesafeCache<T> {
    /// A typesafe cache named `name` (names need not be unique) whose objects `ctor` makes, once
    /// per object when a slab is created. `ctor` may capture.
    ///
    /// ```
    /// use std::sync::atomic::AtomicU64;
    /// let a = rcu_kit::TypesafeCache::new("same", || AtomicU64::new(0)).unwrap();
    /// let b = rcu_kit::TypesafeCache::new("same", || AtomicU64::new(0)).unwrap();
    /// assert_ne!(a.name(), b.name());
    /// ```
    pub fn new<F>(name: &str, ctor: F) -> Result<Self, SlabError>
    where
        F: Fn() -> T + Send + Sync + 'static,
    {
        // Relaxed: a unique-number counter.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let cache = KmemCache::builder(&format!("{name}#{id}"))
            .typesafe_by_rcu(true)
            .ctor(move || Slot {
                cache_id: id,
                refs: AtomicUsize::new(0),
                value: ctor(),
            })
            .build()?;
        Ok(TypesafeCache { id, cache })
    }

    /// Allocates an object (a fresh one from the ctor, or a reused one in the state its last
    /// owner left), runs `init` on it, and returns the first reference. Stale readers may be
    /// looking at it while `init` runs; none can take a reference until it returns.
    /// `None` when no memory can be had.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// let cache = rcu_kit::TypesafeCache::new("ids", || AtomicU64::new(0)).unwrap();
    /// let r = cache.alloc(|id| id.store(9, Relaxed)).unwrap();
    /// assert_eq!(r.load(Relaxed), 9);
    /// ```
    pub fn alloc<F: FnOnce(&T)>(&self, init: F) -> Option<TsRef<'_, T>> {
        let p = self.cache.alloc()?;
        // SAFETY: Invariant 1: the cache has a ctor, so `p` is a valid `Slot<T>`; we only make
        // a shared reference (stale readers may hold others).
        let slot = unsafe { p.as_ref() };
        debug_assert_eq!(slot.cache_id, self.id);
        // Relaxed: Invariant 2 says a free object's count is 0 and stays 0 until our store.
        debug_assert_eq!(slot.refs.load(Ordering::Relaxed), 0);
        // If `init` (user code) panics, the object goes back to the cache: its count is still
        // 0, so nobody took a reference (Invariant 2), and it holds a valid `T` (Invariant 1).
        let back = GiveBack { cache: self, p };
        init(&slot.value);
        core::mem::forget(back);
        // Release: publishes `init` to readers' Acquire inc-not-zero (module docs).
        slot.refs.store(1, Ordering::Release);
        Some(TsRef {
            slot: p,
            cache: self,
        })
    }

    /// The cache's statistics.
    ///
    /// ```
    /// let cache = rcu_kit::TypesafeCache::new("st", || 0u64).unwrap();
    /// let _r = cache.alloc(|_| ()).unwrap();
    /// assert_eq!(cache.stats().active_objects, 1);
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The cache's slab name (`"<name>#<id>"`).
    ///
    /// ```
    /// let cache = rcu_kit::TypesafeCache::new("named", || 0u8).unwrap();
    /// assert!(cache.name().starts_with("named#"));
    /// ```
    pub fn name(&self) -> &str {
        self.cache.name()
    }

    /// Releases empty slabs (after a grace period); returns how many were queued.
    ///
    /// ```
    /// let cache = rcu_kit::TypesafeCache::new("shrink", || 0u8).unwrap();
    /// drop(cache.alloc(|_| ()));
    /// cache.shrink();
    /// ```
    pub fn shrink(&self) -> usize {
        self.cache.shrink()
    }

    /// Frees the object at `p` if `slot` belongs here; panics otherwise (Invariant 3).
    fn put_last(&self, p: NonNull<Slot<T>>) {
        // SAFETY: Invariants 1-3: an object of this cache (checked by the callers), whose last
        // reference was just put (or that `alloc` took and gives back before any reference was
        // made), so it is allocated and nobody else frees it; it holds a valid
        // `Slot<T>`, which the cache keeps for its next owner.
        unsafe { self.cache.free(p) };
    }

    #[track_caller]
    fn check_owner(&self, slot: &Slot<T>) {
        assert!(
            slot.cache_id == self.id,
            "TypesafeCache: an object of another cache was passed to {} (a TsAtomic is used with \
             the cache its objects come from)",
            self.name()
        );
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for TypesafeCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypesafeCache")
            .field("name", &self.name())
            .finish()
    }
}

/// Frees an object whose `alloc` is unwinding out of `init` (dropped only then).
struct GiveBack<'c, T: Send + Sync + 'static> {
    cache: &'c TypesafeCache<T>,
    p: NonNull<Slot<T>>,
}

impl<T: Send + Sync + 'static> Drop for GiveBack<'_, T> {
    fn drop(&mut self) {
        self.cache.put_last(self.p);
    }
}

/// Takes a reference unless the count is zero (Invariant 2).
fn inc_not_zero<T>(slot: &Slot<T>) -> bool {
    // Relaxed: the CAS below decides.
    let mut c = slot.refs.load(Ordering::Relaxed);
    loop {
        if c == 0 {
            return false;
        }
        let next = c
            .checked_add(1)
            .expect("TypesafeCache: reference count overflow");
        // Acquire: pairs with `alloc`'s Release store of 1 (module docs).
        match slot
            .refs
            .compare_exchange_weak(c, next, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => return true,
            Err(now) => c = now,
        }
    }
}

/// A counted reference to an object of a [`TypesafeCache`]: derefs to `&T`; dropping the last
/// one frees the object back to the cache (a put).
///
/// ```
/// let cache = rcu_kit::TypesafeCache::new("refs", || 0u64).unwrap();
/// let a = cache.alloc(|_| ()).unwrap();
/// let b = a.clone();
/// assert!(a.ptr_eq(&b));
/// drop(a);
/// assert_eq!(cache.stats().active_objects, 1);
/// drop(b);
/// assert_eq!(cache.stats().active_objects, 0);
/// ```
pub struct TsRef<'c, T: Send + Sync + 'static> {
    slot: NonNull<Slot<T>>,
    cache: &'c TypesafeCache<T>,
}

// SAFETY: a reference gives `&T` (`T: Sync`) and may be put on any thread, which frees the object
// to the cache (a `KmemCache` is `Sync`; `T: Send`).
unsafe impl<T: Send + Sync + 'static> Send for TsRef<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Sync for TsRef<'_, T> {}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + Sync + 'static> TsRef<'_, T> {
    fn slot(&self) -> &Slot<T> {
        // SAFETY: we hold a reference, so the object is allocated and a valid `Slot<T>`
        // (Invariants 1 and 2); only shared references are ever made.
        unsafe { self.slot.as_ref() }
    }

    /// Whether both refer to the same object.
    ///
    /// ```
    /// let cache = rcu_kit::TypesafeCache::new("eq", || 0u8).unwrap();
    /// let a = cache.alloc(|_| ()).unwrap();
    /// assert!(a.ptr_eq(&a.clone()));
    /// ```
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.slot == other.slot
    }
}

impl<T: Send + Sync + 'static> Deref for TsRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.slot().value
    }
}

impl<T: Send + Sync + 'static> Clone for TsRef<'_, T> {
    fn clone(&self) -> Self {
        // Relaxed: our reference keeps the count above 0 (as `Arc::clone`).
        let old = self.slot().refs.fetch_add(1, Ordering::Relaxed);
        assert!(
            old < usize::MAX / 2,
            "TypesafeCache: reference count overflow"
        );
        TsRef {
            slot: self.slot,
            cache: self.cache,
        }
    }
}

impl<T: Send + Sync + 'static> Drop for TsRef<'_, T> {
    fn drop(&mut self) {
        // Release: our accesses happen before the object's reuse (module docs).
        if self.slot().refs.fetch_sub(1, Ordering::Release) == 1 {
            // Acquire: pairs with the other holders' Release decrements.
            fence(Ordering::Acquire);
            self.cache.put_last(self.slot);
        }
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for TsRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TsRef").field(&**self).finish()
    }
}

/// A published pointer to an object of a [`TypesafeCache`], holding one reference while set:
/// a hash bucket, a tree link. Readers find objects with [`TsAtomic::get`], which takes a
/// reference and revalidates identity.
///
/// Clear it ([`TsAtomic::swap`] with `None`) before dropping it: dropped while set, it leaks its
/// reference (the object stays allocated).
///
/// ```
/// use rcu_kit::{TsAtomic, TypesafeCache};
/// let cache = TypesafeCache::new("slot", || 0u8).unwrap();
/// static SLOT: TsAtomic<u8> = TsAtomic::null();
/// let old = SLOT.swap(&cache, cache.alloc(|_| ()));
/// assert!(old.is_none());
/// drop(SLOT.swap(&cache, None)); // the last reference: back to the cache
/// ```
pub struct TsAtomic<T: Send + Sync + 'static> {
    ptr: AtomicPtr<Slot<T>>,
}

// SAFETY: holds a reference to a `Sync + Send` object, moved and put on any thread.
unsafe impl<T: Send + Sync + 'static> Send for TsAtomic<T> {}
// SAFETY: as above; all access is atomic.
unsafe impl<T: Send + Sync + 'static> Sync for TsAtomic<T> {}

impl<T: Send + Sync + 'static> Default for TsAtomic<T> {
    fn default() -> Self {
        Self::null()
    }
}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + Sync + 'static> TsAtomic<T> {
    /// An empty slot. `const`.
    ///
    /// ```
    /// let s = rcu_kit::TsAtomic::<u8>::null();
    /// assert!(s.is_null());
    /// ```
    pub const fn null() -> Self {
        TsAtomic {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Whether the slot is empty (a snapshot).
    ///
    /// ```
    /// assert!(rcu_kit::TsAtomic::<u8>::null().is_null());
    /// ```
    pub fn is_null(&self) -> bool {
        // Relaxed: nothing is dereferenced.
        self.ptr.load(Ordering::Relaxed).is_null()
    }

    /// Publishes `new` (its reference becomes the slot's) and returns the slot's previous
    /// reference. Unlike an RCU pointer, nothing waits: dropping the returned reference may free
    /// the object at once, and readers that still see it revalidate (module WARNING).
    ///
    /// # Panics
    /// When `new` or the previous object comes from another cache than `cache` (the previous
    /// reference is then leaked, not freed to the wrong cache).
    ///
    /// ```
    /// let cache = rcu_kit::TypesafeCache::new("swap", || 0u8).unwrap();
    /// let slot = rcu_kit::TsAtomic::null();
    /// assert!(slot.swap(&cache, cache.alloc(|_| ())).is_none());
    /// assert!(slot.swap(&cache, None).is_some());
    /// ```
    #[track_caller]
    pub fn swap<'c>(
        &self,
        cache: &'c TypesafeCache<T>,
        new: Option<TsRef<'c, T>>,
    ) -> Option<TsRef<'c, T>> {
        let new_ptr = match new {
            Some(r) => {
                cache.check_owner(r.slot());
                let p = r.slot.as_ptr();
                core::mem::forget(r); // its reference becomes the slot's
                p
            }
            None => ptr::null_mut(),
        };
        // AcqRel: Release publishes the new object's `init`; Acquire orders us after the
        // publication of the old one, whose reference we take over.
        let old = NonNull::new(self.ptr.swap(new_ptr, Ordering::AcqRel))?;
        // SAFETY: the slot held a reference to `old`, now ours: allocated, a valid `Slot<T>`.
        cache.check_owner(unsafe { old.as_ref() });
        Some(TsRef { slot: old, cache })
    }

    /// The canonical typesafe lookup: inside `guard`, load the object, take a reference unless
    /// its count is zero, and check the identity again with `is_it` *after* taking it. Returns
    /// the reference when it matches; drops it and retries when the slot changed meanwhile;
    /// `None` (a miss) when the slot is empty or holds another object.
    ///
    /// # Panics
    /// When the slot's object comes from another cache than `cache`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// let cache = rcu_kit::TypesafeCache::new("get", || AtomicU64::new(0)).unwrap();
    /// let slot = rcu_kit::TsAtomic::null();
    /// drop(slot.swap(&cache, cache.alloc(|k| k.store(1, Relaxed))));
    /// let g = rcu_kit::rcu_read_lock();
    /// assert!(slot.get(&cache, &g, |k| k.load(Relaxed) == 1).is_some());
    /// assert!(slot.get(&cache, &g, |k| k.load(Relaxed) == 2).is_none());
    /// # drop(g);
    /// # drop(slot.swap(&cache, None));
    /// ```
    #[track_caller]
    pub fn get<'c, F: FnMut(&T) -> bool>(
        &self,
        cache: &'c TypesafeCache<T>,
        _guard: &RcuReadGuard,
        mut is_it: F,
    ) -> Option<TsRef<'c, T>> {
        loop {
            // Acquire: pairs with the AcqRel swap that published the object.
            let p = NonNull::new(self.ptr.load(Ordering::Acquire))?;
            // SAFETY: Invariant 1: an object of a typesafe cache of `Slot<T>` found under
            // `_guard`: a valid `Slot<T>` until the guard drops (maybe freed and reused: we only
            // read its immutable id and its atomic count through `&`).
            let slot = unsafe { p.as_ref() };
            cache.check_owner(slot);
            if inc_not_zero(slot) {
                let r = TsRef { slot: p, cache };
                if is_it(&r) {
                    return Some(r);
                }
                drop(r); // reused for another identity: not ours (may free it)
            }
            // Acquire: as above. Unchanged: the slot's object is not the one looked for, or is
            // being freed as it is unpublished: a miss.
            if self.ptr.load(Ordering::Acquire) == p.as_ptr() {
                return None;
            }
        }
    }

    /// The slot's object without taking a reference, valid under `guard` as *some* `T` of the
    /// cache: its identity may change at any moment (module WARNING), so check it again after
    /// [`TsAtomic::get`] before acting on what you read here.
    ///
    /// ```
    /// let cache = rcu_kit::TypesafeCache::new("peek", || 3u8).unwrap();
    /// let slot = rcu_kit::TsAtomic::null();
    /// drop(slot.swap(&cache, cache.alloc(|_| ())));
    /// assert_eq!(slot.peek(&rcu_kit::rcu_read_lock()), Some(&3));
    /// # drop(slot.swap(&cache, None));
    /// ```
    pub fn peek<'g>(&'g self, _guard: &'g RcuReadGuard) -> Option<&'g T> {
        // Acquire: as in `get`.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: as in `get`: a valid `Slot<T>` while `_guard` lives (Invariant 1).
        unsafe { p.as_ref() }.map(|s| &s.value)
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for TsAtomic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsAtomic")
            .field("null", &self.is_null())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[derive(Default)]
    struct Obj {
        key: AtomicU64,
        words: [AtomicU64; 4],
    }

    #[test]
    fn a_reference_keeps_its_object_and_identity() {
        let cache = TypesafeCache::new("t-keep", Obj::default).unwrap();
        let slot = TsAtomic::null();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (cache, slot) = (&cache, &slot);
                s.spawn(move || {
                    for i in 0..5_000u64 {
                        let key = t * 1_000_000 + i;
                        let r = cache
                            .alloc(|o| {
                                o.key.store(key, Ordering::Relaxed);
                                for w in &o.words {
                                    w.store(key, Ordering::Relaxed);
                                }
                            })
                            .unwrap();
                        drop(slot.swap(cache, Some(r)));
                    }
                });
            }
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let g = rcu_core::rcu_read_lock();
                        let Some(k) = slot.peek(&g).map(|o| o.key.load(Ordering::Relaxed)) else {
                            continue;
                        };
                        // Let writers reuse the object between the peek and the lookup.
                        std::thread::yield_now();
                        if let Some(r) =
                            slot.get(&cache, &g, |o| o.key.load(Ordering::Relaxed) == k)
                        {
                            std::thread::yield_now();
                            for w in &r.words {
                                assert_eq!(
                                    w.load(Ordering::Relaxed),
                                    k,
                                    "a lookup returned an object of another identity, or it was reused under its holder"
                                );
                            }
                        }
                    }
                });
            }
        });
        drop(slot.swap(&cache, None));
        assert_eq!(cache.stats().active_objects, 0, "every object freed");
    }

    #[test]
    fn a_panicking_init_gives_the_object_back() {
        let cache = TypesafeCache::new("t-init", || AtomicU64::new(0)).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.alloc(|_| panic!("init fails")).is_some()
        }));
        assert!(r.is_err(), "init's panic reaches the caller");
        assert_eq!(
            cache.stats().active_objects,
            0,
            "the object goes back to the cache, not leaked"
        );
        let r = cache.alloc(|k| k.store(3, Ordering::Relaxed)).unwrap();
        assert_eq!(r.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_slot_of_another_cache_panics_and_leaks_rather_than_misfreeing() {
        let a = TypesafeCache::new("t-a", || 0u8).unwrap();
        let b = TypesafeCache::new("t-a", || 0u8).unwrap();
        let slot = TsAtomic::null();
        drop(slot.swap(&a, a.alloc(|_| ())));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let g = rcu_core::rcu_read_lock();
            slot.get(&b, &g, |_| true).is_some()
        }));
        assert!(r.is_err());
        drop(slot.swap(&a, None));
        assert_eq!(a.stats().active_objects, 0);
    }
}
