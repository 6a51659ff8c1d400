//! Guard-bound atomic pointers: [`Atomic`], [`Shared`] and [`Retired`].
//!
//! The kernel publishes with `rcu_assign_pointer()` and reads with `rcu_dereference()`; the
//! reference a reader gets is valid until its `rcu_read_unlock()`, and a writer frees what it
//! unpublished only after a grace period. Here the compiler checks both halves:
//!
//! * [`Atomic::load`] takes a `&'g RcuReadGuard` and returns a [`Shared<'g, T>`]: the `&T` it
//!   gives cannot outlive the guard (nor the `Atomic`).
//! * [`Atomic::swap`], [`Atomic::store`] and [`Atomic::compare_exchange`] take the new value as
//!   an owned `Box<T>` and hand what they unpublish back as a [`Retired<T>`]: an owned handle
//!   that can only be retired — [`Retired::kfree_rcu`] (the default, also what its `Drop` does:
//!   bounded memory), [`Retired::call_rcu`], or [`Retired::synchronize`], which waits for a grace
//!   period and only then gives the `Box` back. There is no way to get a `Box` (or a `&mut T`,
//!   or the value) out of a `Retired` before a grace period has passed.
//!
//! ```
//! use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, Atomic};
//!
//! let config = Atomic::new(String::from("v1"));
//! let g = rcu_read_lock();
//! let seen: &String = config.load(&g).as_ref().unwrap();
//! // A writer (here the same thread) publishes v2; v1 stays valid for `seen`.
//! let old = config.swap(Some(Box::new(String::from("v2")))).unwrap();
//! old.kfree_rcu(); // freed after a grace period, i.e. after `g` drops
//! assert_eq!(seen, "v1");
//! drop(g);
//! kvfree_rcu_barrier();
//! ```
//!
//! A reference cannot outlive its guard:
//!
//! ```compile_fail,E0597
//! use rcu_kit::{rcu_read_lock, Atomic};
//! let a = Atomic::new(1u32);
//! let r: &u32;
//! {
//!     let g = rcu_read_lock();
//!     r = a.load(&g).as_ref().unwrap();
//! }
//! println!("{r}");
//! ```
//!
//! nor can the guard be given away while a reference lives:
//!
//! ```compile_fail,E0505
//! use rcu_kit::{rcu_read_lock, Atomic};
//! let a = Atomic::new(1u32);
//! let g = rcu_read_lock();
//! let r = a.load(&g).as_ref().unwrap();
//! std::mem::forget(g);
//! println!("{r}");
//! ```
//!
//! and a `Retired` is not a `Box`:
//!
//! ```compile_fail,E0277
//! use rcu_kit::Atomic;
//! let a = Atomic::new(1u32);
//! let old = a.swap(None).unwrap();
//! let b: Box<u32> = old.into();
//! ```
//!
//! # Implementation
//!
//! An `Atomic<T>` is an `AtomicPtr<T>` that owns the `Box<T>` it points to (or null).
//!
//! Invariants:
//! 1. A non-null pointer stored in an `Atomic` came from `Box::into_raw` and is owned by exactly
//!    one owner: the `Atomic` while it is published there, then the [`Retired`] that unpublished
//!    it.
//! 2. A `Retired` frees its pointer only after a grace period that starts after the unpublish
//!    (through `kfree_rcu`, `call_rcu` or `synchronize_rcu`), never earlier; its drop retires
//!    through `kfree_rcu`, so an ignored or unwound handle is never freed early (nor leaked).
//!    While the thread holds a list or map writer lock, `kfree_rcu` runs under a read guard of
//!    its own: the batcher then neither runs other objects' destructors inline nor waits.
//! 3. A [`Shared<'g, T>`] is only made by [`Atomic::load`] (or a chain link's load, whose
//!    structure keeps the same contract: `link` module) under a guard borrowed for `'g`, so
//!    its pointee was published when this thread's critical section was already open; by 2 it
//!    stays valid for `'g`.
//! 4. Dropping the `Atomic` (or [`Atomic::get_mut`], [`Atomic::into_box`]) needs `&mut self` or
//!    `self`, which no live `Shared` (borrowing `&'g self`) allows: the current pointee is freed
//!    or handed out at once.
//!
//! A pointee reachable through a value that a `Retired` frees (an `Atomic` field of a retired
//! node) is dropped with it, after the grace period: by 1 it was reachable only through that
//! value, which no new reader could reach after the unpublish.
//!
//! ## Memory orderings
//! * `load` is Acquire (the kernel's `rcu_dereference` is a dependency-ordered load; Rust has no
//!   consume): pairs with the Release of the store that published the pointer, so the pointee's
//!   initialisation is visible before the reader dereferences it. Without it a reader could see
//!   the pointer before the fields.
//! * `swap`/`store`/`compare_exchange` success are AcqRel: Release publishes the new pointee
//!   (`rcu_assign_pointer`); Acquire orders the writer after the publication of the value it
//!   unpublishes, whose contents its `Retired` will drop. A failed `compare_exchange` is Acquire:
//!   it returns the current value as a `Shared`, read like a `load`.
//! * The grace period orders every reader's accesses before the free (rcu-core's guarantee).

use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use rcu_core::{RcuReadGuard, Retire, RetireByCallRcu};

use crate::primitive::sync::atomic::{AtomicPtr, Ordering};

/// An RCU-protected atomic pointer that owns its pointee (a `Box<T>` or null).
///
/// See the [module docs](self). Readers [`load`](Atomic::load) under a guard; writers publish
/// owned boxes and get what they unpublish back as a [`Retired`].
///
/// ```
/// use rcu_kit::{rcu_read_lock, Atomic};
/// static EMPTY: Atomic<u64> = Atomic::null();
/// let g = rcu_read_lock();
/// assert!(EMPTY.load(&g).is_null());
/// ```
pub struct Atomic<T: Send + 'static> {
    ptr: AtomicPtr<T>,
    _owns: PhantomData<Box<T>>,
}

// SAFETY: the `Atomic` owns a `Box<T>` (moved between threads: `T: Send`).
unsafe impl<T: Send + 'static> Send for Atomic<T> {}
// SAFETY: shared `&Atomic` hands out `&T` to many threads (`T: Sync`) and moves boxes between
// threads through `swap` and `Retired` (`T: Send`).
unsafe impl<T: Send + Sync + 'static> Sync for Atomic<T> {}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + 'static> Atomic<T> {
    /// An empty (null) pointer. `const`: usable in a `static`.
    ///
    /// ```
    /// let a = rcu_kit::Atomic::<u8>::null();
    /// assert!(a.is_null());
    /// ```
    pub const fn null() -> Self {
        Atomic {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// A pointer to a new box holding `value`.
    ///
    /// ```
    /// let a = rcu_kit::Atomic::new(5u8);
    /// assert!(!a.is_null());
    /// ```
    pub fn new(value: T) -> Self {
        Self::from_box(Some(Box::new(value)))
    }

    /// A pointer owning `value` (null for `None`).
    ///
    /// ```
    /// let a = rcu_kit::Atomic::from_box(Some(Box::new([0u8; 64])));
    /// assert!(!a.is_null());
    /// ```
    pub fn from_box(value: Option<Box<T>>) -> Self {
        Atomic {
            ptr: AtomicPtr::new(value.map_or(ptr::null_mut(), Box::into_raw)),
            _owns: PhantomData,
        }
    }

    /// The current pointee, valid while `guard` (and `self`) are borrowed: the kernel's
    /// `rcu_dereference()`. Acquire (module docs).
    ///
    /// ```
    /// use rcu_kit::{rcu_read_lock, Atomic};
    /// let a = Atomic::new(3u32);
    /// let g = rcu_read_lock();
    /// assert_eq!(a.load(&g).as_ref(), Some(&3));
    /// ```
    #[inline]
    pub fn load<'g>(&'g self, _guard: &'g RcuReadGuard) -> Shared<'g, T> {
        // Acquire: pairs with the Release of the swap/CAS that published the pointer.
        Shared::from_raw(self.ptr.load(Ordering::Acquire))
    }

    /// The current pointer, Relaxed, for a writer that holds the lock serialising every writer
    /// of this `Atomic` (the lock orders it after the previous writer's store); dereferencing
    /// it is on the caller, valid until the caller itself unpublishes it.
    #[inline]
    pub(crate) fn load_relaxed_by_writer(&self) -> *mut T {
        // Relaxed: the writers' lock orders this after the previous store (doc above).
        self.ptr.load(Ordering::Relaxed)
    }

    /// Whether the pointer is null now (a snapshot; needs no guard since nothing is
    /// dereferenced).
    ///
    /// ```
    /// assert!(rcu_kit::Atomic::<u8>::null().is_null());
    /// ```
    #[inline]
    pub fn is_null(&self) -> bool {
        // Relaxed: no pointee is read.
        self.ptr.load(Ordering::Relaxed).is_null()
    }

    /// Publishes `new` (the kernel's `rcu_assign_pointer()`) and returns what was there, to be
    /// retired.
    ///
    /// ```
    /// use rcu_kit::{kvfree_rcu_barrier, Atomic};
    /// let a = Atomic::new(1u32);
    /// if let Some(old) = a.swap(Some(Box::new(2))) {
    ///     old.call_rcu(); // or kfree_rcu() (what dropping it does), or synchronize()
    /// }
    /// rcu_kit::rcu_barrier();
    /// ```
    #[inline]
    #[must_use = "the unpublished value is handed back: retire it (dropping it retires it with kfree_rcu)"]
    pub fn swap(&self, new: Option<Box<T>>) -> Option<Retired<T>> {
        let new = new.map_or(ptr::null_mut(), Box::into_raw);
        // AcqRel: module docs.
        let old = self.ptr.swap(new, Ordering::AcqRel);
        // SAFETY: `old` was published here (Invariant 1) and is unpublished by the swap; its
        // ownership passes to the handle.
        NonNull::new(old).map(|p| unsafe { Retired::from_unpublished(p) })
    }

    /// Publishes `new` and retires the previous pointee with `kfree_rcu` (bounded memory).
    ///
    /// ```
    /// let a = rcu_kit::Atomic::new(1u32);
    /// a.store(Some(Box::new(2)));
    /// a.store(None);
    /// assert!(a.is_null());
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    #[inline]
    pub fn store(&self, new: Option<Box<T>>) {
        if let Some(old) = self.swap(new) {
            old.kfree_rcu();
        }
    }

    /// Publishes `new` if the pointer still is `current`; on success returns the new pointee
    /// (valid under `guard`) and what was unpublished, on failure the current pointee and `new`
    /// back.
    ///
    /// `current` came from a `load` under a guard that is still held (its lifetime says so), so
    /// its pointee cannot have been freed and its address reused: no ABA.
    ///
    /// ```
    /// use rcu_kit::{rcu_read_lock, Atomic};
    /// let counter = Atomic::new(0u64);
    /// loop {
    ///     let g = rcu_read_lock();
    ///     let cur = counter.load(&g);
    ///     let next = Box::new(cur.as_ref().map_or(0, |v| *v) + 1);
    ///     match counter.compare_exchange(cur, Some(next), &g) {
    ///         Ok((now, _old)) => {
    ///             assert_eq!(now.as_ref(), Some(&1));
    ///             break; // `_old` drops here: kfree_rcu
    ///         }
    ///         Err(e) => drop(e.new),
    ///     }
    /// }
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn compare_exchange<'g>(
        &'g self,
        current: Shared<'_, T>,
        new: Option<Box<T>>,
        _guard: &'g RcuReadGuard,
    ) -> Result<(Shared<'g, T>, Option<Retired<T>>), CompareExchangeFailure<'g, T>> {
        let new_ptr = new.map_or(ptr::null_mut(), Box::into_raw);
        // AcqRel on success, Acquire on failure: module docs.
        match self.ptr.compare_exchange(
            current.as_ptr() as *mut T,
            new_ptr,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(old) => Ok((
                Shared::from_raw(new_ptr),
                // SAFETY: `old` was published here and is unpublished by the CAS.
                NonNull::new(old).map(|p| unsafe { Retired::from_unpublished(p) }),
            )),
            Err(now) => Err(CompareExchangeFailure {
                current: Shared::from_raw(now),
                // SAFETY: `new_ptr` came from `Box::into_raw` above and was never published.
                new: NonNull::new(new_ptr).map(|p| unsafe { Box::from_raw(p.as_ptr()) }),
            }),
        }
    }

    /// Replaces the pointee with `f(current)` in a compare-and-swap loop and retires the old one
    /// with `kfree_rcu`. `f` may run more than once when writers race.
    ///
    /// `f` runs inside a read-side critical section (it reads the current value): it must not
    /// wait for a grace period (`synchronize_rcu`, [`Retired::synchronize`], `*_sync`: they
    /// panic there), nor take a lock that a thread waiting for a grace period holds (that
    /// deadlocks).
    ///
    /// ```
    /// let hits = rcu_kit::Atomic::new(0u64);
    /// hits.update(|old| Some(Box::new(old.copied().unwrap_or(0) + 1)));
    /// assert_eq!(hits.load(&rcu_kit::rcu_read_lock()).as_ref(), Some(&1));
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    pub fn update<F: FnMut(Option<&T>) -> Option<Box<T>>>(&self, mut f: F) {
        let g = rcu_core::rcu_read_lock();
        let mut cur = self.load(&g);
        let mut new = f(cur.as_ref());
        loop {
            match self.compare_exchange(cur, new, &g) {
                Ok((_, old)) => {
                    drop(g);
                    if let Some(old) = old {
                        old.kfree_rcu();
                    }
                    return;
                }
                Err(e) => {
                    cur = e.current;
                    drop(e.new);
                    new = f(cur.as_ref());
                }
            }
        }
    }

    /// The pointee, for the exclusive owner (no reader can hold it: they borrow `self`).
    ///
    /// ```
    /// let mut a = rcu_kit::Atomic::new(1u8);
    /// *a.get_mut().unwrap() = 2;
    /// assert_eq!(a.into_box().as_deref(), Some(&2));
    /// ```
    pub fn get_mut(&mut self) -> Option<&mut T> {
        // SAFETY: `&mut self` excludes every `Shared` (Invariant 4); the pointer is owned here.
        unsafe { self.ptr.get_mut().as_mut() }
    }

    /// The pointee as a `Box`, consuming the `Atomic` (no reader can hold it: Invariant 4).
    ///
    /// ```
    /// assert!(rcu_kit::Atomic::<u8>::null().into_box().is_none());
    /// ```
    pub fn into_box(self) -> Option<Box<T>> {
        let mut this = core::mem::ManuallyDrop::new(self);
        let p = core::mem::replace(this.ptr.get_mut(), ptr::null_mut());
        // SAFETY: Invariant 1 (a `Box` allocation owned here) and 4 (no reader).
        NonNull::new(p).map(|p| unsafe { Box::from_raw(p.as_ptr()) })
    }
}

impl<T: Send + 'static> Drop for Atomic<T> {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: Invariants 1 and 4: owned here, and no reader can hold it.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<T: Send + 'static> Default for Atomic<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for Atomic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = rcu_core::rcu_read_lock();
        f.debug_tuple("Atomic")
            .field(&self.load(&g).as_ref())
            .finish()
    }
}

/// A pointer loaded under a guard: valid (or null) for `'g`. `Copy`, compared by address.
///
/// ```
/// use rcu_kit::{rcu_read_lock, Atomic, Shared};
/// let a = Atomic::new(7i32);
/// let g = rcu_read_lock();
/// let s: Shared<'_, i32> = a.load(&g);
/// assert_eq!(s, a.load(&g));
/// assert!(!s.is_null() && Shared::<i32>::null().is_null());
/// assert_eq!(*s.as_ref().unwrap(), 7);
/// ```
pub struct Shared<'g, T> {
    ptr: *const T,
    _life: PhantomData<&'g T>,
}

impl<T> Clone for Shared<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<'_, T> {}

impl<T> PartialEq for Shared<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        ptr::eq(self.ptr, other.ptr)
    }
}
impl<T> Eq for Shared<'_, T> {}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<'g, T> Shared<'g, T> {
    /// The null pointer.
    ///
    /// ```
    /// assert!(rcu_kit::Shared::<u8>::null().as_ref().is_none());
    /// ```
    pub const fn null() -> Self {
        Shared {
            ptr: ptr::null(),
            _life: PhantomData,
        }
    }

    /// A `Shared` of any address, for comparisons only ([`Atomic::compare_exchange`]'s
    /// `current`).
    ///
    /// # Safety
    /// The result is never dereferenced (`as_ref`) nor handed to safe code that could: nothing
    /// keeps its pointee alive.
    #[inline]
    pub(crate) unsafe fn from_ptr(ptr: *const T) -> Self {
        Self::from_raw(ptr)
    }

    /// A `Shared` loaded from a chain [`Link`](crate::link::Link) under a guard borrowed for
    /// `'g`: the link's Invariants 1 and 2 give it Invariant 3.
    ///
    /// # Safety
    /// `ptr` is null or was just loaded from a chain link under a guard borrowed for `'g`
    /// (Invariant 3): [`Shared::as_ref`], a safe method, dereferences it for `'g`.
    #[inline]
    pub(crate) unsafe fn from_link(ptr: *const T) -> Self {
        Self::from_raw(ptr)
    }

    #[inline]
    fn from_raw(ptr: *const T) -> Self {
        Shared {
            ptr,
            _life: PhantomData,
        }
    }

    /// The pointee, valid for `'g`.
    ///
    /// ```
    /// let a = rcu_kit::Atomic::new(1u8);
    /// assert_eq!(a.load(&rcu_kit::rcu_read_lock()).as_ref(), Some(&1));
    /// ```
    #[inline]
    pub fn as_ref(self) -> Option<&'g T> {
        // SAFETY: Invariant 3: made by `Atomic::load` under a guard held for `'g`; the pointee is
        // freed only after a grace period that starts after its unpublish (Invariant 2).
        unsafe { self.ptr.as_ref() }
    }

    /// Whether this is null.
    ///
    /// ```
    /// assert!(rcu_kit::Shared::<u8>::null().is_null());
    /// ```
    #[inline]
    pub fn is_null(self) -> bool {
        self.ptr.is_null()
    }

    /// The address (for identity checks; dereferencing it is on you).
    ///
    /// ```
    /// assert!(rcu_kit::Shared::<u8>::null().as_ptr().is_null());
    /// ```
    #[inline]
    pub fn as_ptr(self) -> *const T {
        self.ptr
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Shared").field(&self.as_ref()).finish()
    }
}

/// The failure of [`Atomic::compare_exchange`]: the pointer held another value.
///
/// ```
/// use rcu_kit::{rcu_read_lock, Atomic, Shared};
/// let a = Atomic::new(1u8);
/// let g = rcu_read_lock();
/// let e = a.compare_exchange(Shared::null(), Some(Box::new(2)), &g).unwrap_err();
/// assert_eq!(e.current.as_ref(), Some(&1));
/// assert_eq!(e.new.as_deref(), Some(&2));
/// ```
pub struct CompareExchangeFailure<'g, T> {
    /// What the pointer holds now (valid under the guard that was passed in).
    pub current: Shared<'g, T>,
    /// The value that was not published, handed back.
    pub new: Option<Box<T>>,
}

impl<T: fmt::Debug> fmt::Debug for CompareExchangeFailure<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompareExchangeFailure")
            .field("current", &self.current)
            .field("new", &self.new)
            .finish()
    }
}

/// An unpublished value that readers may still be looking at: it can only be retired.
///
/// * [`Retired::kfree_rcu`] (also what dropping the handle does): freed after a grace period by
///   the `kfree_rcu` batcher, within its memory cap.
/// * [`Retired::call_rcu`]: dropped by a `call_rcu` callback (one callback per value, unbounded
///   memory: for values whose drop must run soon, or runs code).
/// * [`Retired::synchronize`]: waits for a grace period, then hands the `Box` back (outside
///   read-side critical sections only: it panics inside one, and the value is then retired with
///   `kfree_rcu` instead).
///
/// Nothing gives a `&mut T`, the `T`, or a `Box<T>` before a grace period has passed: that would
/// let a writer move a value out of memory readers still read.
///
/// ```
/// use rcu_kit::{rcu_read_lock, Atomic};
/// let a = Atomic::new(String::from("old"));
/// let old = a.swap(None).unwrap();
/// let back: Box<String> = old.synchronize(); // waits for readers first
/// assert_eq!(*back, "old");
/// ```
#[must_use = "a Retired is freed with kfree_rcu when dropped; say so with .kfree_rcu()"]
pub struct Retired<T: Send + 'static> {
    ptr: NonNull<T>,
    _owns: PhantomData<Box<T>>,
}

// SAFETY: the handle owns a `Box<T>` it only moves and frees (`T: Send`); it gives no access to
// the `T`.
unsafe impl<T: Send + 'static> Send for Retired<T> {}
// SAFETY: `&Retired` exposes only the address.
unsafe impl<T: Send + 'static> Sync for Retired<T> {}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + 'static> Retired<T> {
    /// Wraps an unpublished pointer.
    ///
    /// # Safety
    /// `p` came from `Box::<T>::into_raw`, holds a valid `T`, is unpublished (no new reader can
    /// reach it), and its ownership passes to the handle (nobody else frees or retires it).
    #[inline]
    pub(crate) unsafe fn from_unpublished(p: NonNull<T>) -> Self {
        Retired {
            ptr: p,
            _owns: PhantomData,
        }
    }

    /// Takes the pointer out without running `Drop`: the caller takes over the duty to retire
    /// it (after a grace period, never earlier).
    #[inline]
    pub(crate) fn into_raw_for_retire(self) -> *mut T {
        let p = self.ptr.as_ptr();
        core::mem::forget(self);
        p
    }

    /// The address of the retired value (for identity checks).
    ///
    /// ```
    /// let a = rcu_kit::Atomic::new(1u8);
    /// let addr = a.load(&rcu_kit::rcu_read_lock()).as_ptr();
    /// let old = a.swap(None).unwrap();
    /// assert_eq!(old.as_ptr(), addr);
    /// ```
    #[inline]
    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }

    /// Frees the value with `kfree_rcu` after a grace period (bounded memory; never blocks inside
    /// a read-side critical section).
    ///
    /// ```
    /// let a = rcu_kit::Atomic::new(1u8);
    /// a.swap(None).unwrap().kfree_rcu();
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    #[inline]
    pub fn kfree_rcu(self) {
        let p = self.into_raw_for_retire();
        // SAFETY: `from_unpublished`'s contract is `kfree_rcu_raw`'s; ownership passes here.
        unsafe { kfree_under_writer_aware(p) };
    }

    /// Drops the value in a `call_rcu` callback after a grace period.
    ///
    /// ```
    /// let a = rcu_kit::Atomic::new(1u8);
    /// a.swap(None).unwrap().call_rcu();
    /// rcu_kit::rcu_barrier();
    /// ```
    #[inline]
    pub fn call_rcu(self) {
        let p = self.into_raw_for_retire();
        // SAFETY: as for `kfree_rcu`; `Retire::retire_raw` has the same contract.
        unsafe { RetireByCallRcu.retire_raw(p) };
    }

    /// Waits for a grace period (`synchronize_rcu`), then hands the value back: no reader can
    /// hold it any more.
    ///
    /// # Panics
    /// Inside a read-side critical section (the wait could never end), and while the thread
    /// holds an [`RcuList`](crate::RcuList) writer lock (a [`ListWriter`](crate::ListWriter)) or
    /// an [`RcuHashMap`](crate::map::RcuHashMap)'s (user code run by its writers):
    /// readers may wait for that lock inside their critical sections, so the wait could never end
    /// either. The value is then retired with `kfree_rcu` by the unwind, never freed under the
    /// readers.
    ///
    /// ```
    /// let a = rcu_kit::Atomic::new(vec![1, 2]);
    /// let v = a.swap(None).unwrap().synchronize();
    /// assert_eq!(*v, [1, 2]);
    /// ```
    #[track_caller]
    pub fn synchronize(self) -> Box<T> {
        // A panic here drops `self`, which retires through `kfree_rcu` (Invariant 2).
        if crate::writer_lock::holds_a_writer_lock() {
            panic!(
                "Retired::synchronize called while this thread holds an RcuList or RcuHashMap \
                 writer lock (a ListWriter, or code run by a map writer): a reader waiting for \
                 that lock inside its read-side critical section would hold the grace period \
                 back forever; drop the ListWriter first"
            );
        }
        rcu_core::synchronize_rcu();
        let p = self.into_raw_for_retire();
        // SAFETY: a `Box<T>` allocation owned by the handle (Invariant 1), and a grace period
        // has passed since its unpublish: no reader can still hold it.
        unsafe { Box::from_raw(p) }
    }
}

impl<T: Send + 'static> Drop for Retired<T> {
    fn drop(&mut self) {
        // SAFETY: the handle owns the unpublished pointer (`from_unpublished`), and `drop` runs
        // once; `kfree_rcu_raw` frees it after a grace period and never panics.
        unsafe { kfree_under_writer_aware(self.ptr.as_ptr()) };
    }
}

/// `kfree_rcu_raw`, which outside a reader may run ready objects' destructors inline or wait for
/// a grace period (crate docs of `kfree_batch`). While this thread holds an `RcuList` or
/// `RcuHashMap` writer lock, neither is allowed: a destructor using that structure would meet
/// its re-entrancy panic (a destructor's panic, which the batcher contains and reports), and a
/// reader waiting for the lock would hold the grace period back forever. So the retire then runs inside a
/// read-side critical section of its own, where the batcher does neither (it parks the object).
///
/// # Safety
/// `kfree_rcu_raw`'s contract.
pub(crate) unsafe fn kfree_under_writer_aware<T: Send + 'static>(p: *mut T) {
    let _reader = crate::writer_lock::holds_a_writer_lock().then(rcu_core::rcu_read_lock);
    // SAFETY: forwarded contract.
    unsafe { kfree_batch::kfree_rcu_raw(p) };
}

impl<T: Send + 'static> fmt::Debug for Retired<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Retired").field(&self.ptr).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    struct Counted(u64, Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0 = 0xdead;
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_retire_path_frees_once_after_a_grace_period() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mk = |v| Some(Box::new(Counted(v, drops.clone())));
        let a = Atomic::from_box(mk(1));
        let g = rcu_core::rcu_read_lock();
        let seen = a.load(&g).as_ref().unwrap();
        a.swap(mk(2)).unwrap().kfree_rcu();
        a.swap(mk(3)).unwrap().call_rcu();
        drop(a.swap(mk(4))); // drop = kfree_rcu
        a.store(mk(5));
        assert_eq!(seen.0, 1, "the reader's value stays intact under its guard");
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(g);
        let back = a.swap(None).unwrap().synchronize();
        assert_eq!(back.0, 5);
        drop(back);
        rcu_core::rcu_barrier();
        kfree_batch::kvfree_rcu_barrier();
        assert_eq!(drops.load(Ordering::SeqCst), 5);
        a.store(mk(6));
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn synchronize_inside_a_reader_panics_and_retires_instead() {
        let drops = Arc::new(AtomicUsize::new(0));
        let a = Atomic::new(Counted(1, drops.clone()));
        let g = rcu_core::rcu_read_lock();
        let seen = a.load(&g).as_ref().unwrap();
        let old = a.swap(None).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| old.synchronize()));
        assert!(r.is_err());
        assert_eq!(seen.0, 1, "not freed under the reader");
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(g);
        kfree_batch::kvfree_rcu_barrier();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_readers_never_see_a_freed_value() {
        use std::time::{Duration, Instant};
        let drops = Arc::new(AtomicUsize::new(0));
        let a = Atomic::new(Counted(1, drops.clone()));
        let made = AtomicUsize::new(1);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) && n < 200_000 {
                        let g = rcu_core::rcu_read_lock();
                        let v = a.load(&g).as_ref().unwrap().0;
                        assert!((1..=1_000_000).contains(&v), "reader saw {v:#x}");
                        n += 1;
                    }
                });
            }
            for i in 2..20_000u64 {
                if Instant::now() > deadline {
                    break;
                }
                made.fetch_add(1, Ordering::Relaxed);
                match i % 3 {
                    0 => a.store(Some(Box::new(Counted(i, drops.clone())))),
                    1 => a
                        .swap(Some(Box::new(Counted(i, drops.clone()))))
                        .unwrap()
                        .call_rcu(),
                    _ => a.update(|_| {
                        made.fetch_add(1, Ordering::Relaxed);
                        Some(Box::new(Counted(i, drops.clone())))
                    }),
                }
                if i % 3 == 2 {
                    made.fetch_sub(1, Ordering::Relaxed); // counted twice above
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        drop(a);
        rcu_core::rcu_barrier();
        kfree_batch::kvfree_rcu_barrier();
        assert_eq!(drops.load(Ordering::SeqCst), made.load(Ordering::Relaxed));
    }
}
