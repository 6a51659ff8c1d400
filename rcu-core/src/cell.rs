//! `RcuCell<T>`: an RCU-protected owning pointer.
//!
//! # Implementation
//!
//! An `AtomicPtr<T>` holding a `Box<T>` (or null). Readers load it with Acquire (pairs with the
//! Release of the swap that published the value, so the pointee's initialisation is visible) inside
//! a read-side critical section; the reference they get lives no longer than their guard. Writers
//! swap or compare-and-swap (AcqRel: Release publishes the new value, Acquire makes the old one's
//! contents ours to drop) and retire the old box: through `call_rcu` ([`RcuCell::replace`],
//! [`RcuCell::take`], [`RcuCell::compare_exchange`]), by waiting ([`RcuCell::replace_sync`], which
//! hands the old box back after `synchronize_rcu`), or through any [`Retire`] strategy
//! ([`RcuCell::replace_with`], [`RcuCell::update_with`], ...). The facade crate `rcu-kit` adds a
//! strategy that retires through `kfree_rcu` and an extension trait built on it.
//!
//! `Retire` is an `unsafe trait` because the box it receives may still be read: an implementation
//! that dropped it at once would let safe code read freed memory. That includes unwinding: a
//! strategy that panics before the grace period (as [`RetireBySync`] does inside a read-side
//! critical section) must leak the box rather than let the unwind drop it.
//!
//! The old value travels as the raw pointer the cell held, never as a `Box`, until a grace period
//! has passed: a `Box` asserts that it is the only pointer to its value, which is false while
//! readers still hold `&T` to it (under Stacked Borrows, re-making the `Box` invalidates their
//! references). The cell hands it to [`Retire::retire_raw`]; the built-in strategies implement
//! it, and its default (for strategies that only implement [`Retire::retire`]) makes the `Box`.
//!
//! Dropping the cell frees the current value at once: `&self` borrows end first, and a reference
//! from [`RcuCell::read`] borrows the cell, so no reader can still hold it.

use core::marker::PhantomData;

use crate::global::{call_rcu_raw, rcu_read_lock, synchronize_rcu, RcuReadGuard};
use crate::primitive::sync::atomic::{AtomicPtr, Ordering};

/// An RCU-protected, owning, nullable pointer to a `T`.
///
/// ```
/// use rcu_core::{rcu_read_lock, RcuCell};
/// let cell = RcuCell::new(Some(Box::new(String::from("v1"))));
/// {
///     let g = rcu_read_lock();
///     assert_eq!(cell.read(&g).map(String::as_str), Some("v1"));
/// }
/// cell.replace(Some(Box::new(String::from("v2")))); // v1 freed after a grace period
/// let g = rcu_read_lock();
/// assert_eq!(cell.read(&g).unwrap(), "v2");
/// ```
pub struct RcuCell<T: Send + 'static> {
    ptr: AtomicPtr<T>,
    _owns: PhantomData<Box<T>>,
}

// SAFETY: readers on several threads get `&T` (needs `T: Sync`); writers move boxes between
// threads and the old value is dropped on a callback thread (needs `T: Send`).
unsafe impl<T: Send + Sync + 'static> Sync for RcuCell<T> {}
// SAFETY: the cell owns a `Box<T>`.
unsafe impl<T: Send + 'static> Send for RcuCell<T> {}

impl<T: Send + 'static> RcuCell<T> {
    /// A cell holding `value`.
    pub fn new(value: Option<Box<T>>) -> Self {
        RcuCell {
            ptr: AtomicPtr::new(into_raw(value)),
            _owns: PhantomData,
        }
    }

    /// The current value, valid while `guard` (and the cell borrow) live.
    #[inline]
    pub fn read<'a>(&'a self, _guard: &'a RcuReadGuard) -> Option<&'a T> {
        // Acquire pairs with the Release part of the swap that published the value.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw`; it is retired only after a grace
        // period that starts after it was unpublished, and `_guard` keeps this thread's critical
        // section open for the returned lifetime.
        unsafe { p.as_ref() }
    }

    /// The current value, valid while `guard` (and the cell borrow) live. Same as
    /// [`RcuCell::read`], under the name crossbeam and arc-swap users look for.
    #[inline]
    pub fn load<'a>(&'a self, guard: &'a RcuReadGuard) -> Option<&'a T> {
        self.read(guard)
    }

    /// Publishes `value` and hands the previous value (if any) to `retire`, which frees it after
    /// a grace period.
    ///
    /// ```
    /// use rcu_core::{RcuCell, RetireBySync};
    /// let cell = RcuCell::new(Some(Box::new(1u8)));
    /// cell.replace_with(Some(Box::new(2)), RetireBySync); // waits, then drops 1
    /// ```
    pub fn replace_with<R: Retire<T>>(&self, value: Option<Box<T>>, retire: R) {
        let old = self.swap_raw(value);
        retire_with(old, retire);
    }

    /// Unpublishes the value and hands it to `retire`.
    pub fn take_with<R: Retire<T>>(&self, retire: R) {
        self.replace_with(None, retire)
    }

    /// Publishes `new` if the cell still holds `current` (compared by address; `None` = empty),
    /// and retires the replaced value with `call_rcu`.
    ///
    /// `current` normally comes from [`RcuCell::read`] under the same `guard`: its object cannot be
    /// freed and reused while the guard lives, so the comparison has no ABA problem. On success
    /// it returns the newly published value (valid under `guard`); on failure it returns what the
    /// cell holds now together with `new`, which was not published.
    ///
    /// ```
    /// use rcu_core::{rcu_read_lock, RcuCell};
    /// let cell = RcuCell::new(Some(Box::new(1u32)));
    /// let g = rcu_read_lock();
    /// let seen = cell.read(&g);
    /// assert_eq!(cell.compare_exchange(seen, Some(Box::new(2)), &g).unwrap(), Some(&2));
    /// // `seen` is stale now: the second attempt fails and gives the box back.
    /// let err = cell.compare_exchange(seen, Some(Box::new(3)), &g).unwrap_err();
    /// assert_eq!(err.current, Some(&2));
    /// assert_eq!(err.new.as_deref(), Some(&3));
    /// ```
    pub fn compare_exchange<'g>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        guard: &'g RcuReadGuard,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        self.compare_exchange_with(current, new, guard, RetireByCallRcu)
    }

    /// [`RcuCell::compare_exchange`] with a chosen [`Retire`] strategy for the replaced value.
    ///
    /// The strategy runs while `guard` is held, so it must not block for a grace period
    /// ([`RetireBySync`] panics here).
    pub fn compare_exchange_with<'g, R: Retire<T>>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        _guard: &'g RcuReadGuard,
        retire: R,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        let expected = current.map_or(core::ptr::null_mut(), |r| (r as *const T).cast_mut());
        let new_raw = into_raw(new);
        // Success AcqRel: Release publishes the new box's contents to readers (pairs with the
        // Acquire load in `read`); Acquire takes over the old value's contents (pairs with the
        // Release of the swap/CAS that published it). Failure Acquire: the value we hand back as
        // `current` may be read, so pair with the Release that published it.
        match self
            .ptr
            .compare_exchange(expected, new_raw, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(old) => {
                retire_with(old, retire);
                // SAFETY: `new_raw` came from `Box::into_raw` (or is null); even if another
                // writer has replaced it since, it is retired only after a grace period, and
                // `_guard` keeps this thread's critical section open for `'g`.
                Ok(unsafe { new_raw.as_ref() })
            }
            Err(now) => Err(CompareExchangeError {
                // SAFETY: as in `read`: published pointer, guard held for `'g`.
                current: unsafe { now.as_ref() },
                // SAFETY: `new_raw` came from `into_raw` above and was never published.
                new: (!new_raw.is_null()).then(|| unsafe { Box::from_raw(new_raw) }),
            }),
        }
    }

    /// Replaces the value with `f(current)` in a compare-and-swap loop and hands the replaced
    /// value to `retire` after the swap succeeded (outside the internal read-side critical
    /// section, so [`RetireBySync`] works when the caller holds no guard).
    ///
    /// `f` may run several times when writers race; boxes it returned for failed attempts are
    /// dropped at once (they were never published). Returning `None` empties the cell.
    ///
    /// ```
    /// use rcu_core::{rcu_barrier, rcu_read_lock, RcuCell, RetireByCallRcu};
    /// let counter = RcuCell::new(Some(Box::new(0u64)));
    /// counter.update_with(|old| Some(Box::new(old.copied().unwrap_or(0) + 1)), RetireByCallRcu);
    /// assert_eq!(counter.read(&rcu_read_lock()), Some(&1));
    /// # rcu_barrier();
    /// ```
    pub fn update_with<F, R>(&self, mut f: F, retire: R)
    where
        F: FnMut(Option<&T>) -> Option<Box<T>>,
        R: Retire<T>,
    {
        let old = {
            let _guard = rcu_read_lock();
            // Acquire: `f` reads the pointee (pairs with the Release that published it).
            let mut cur = self.ptr.load(Ordering::Acquire);
            loop {
                // SAFETY: as in `read`: a published pointer read under `_guard`.
                let new_raw = into_raw(f(unsafe { cur.as_ref() }));
                // Orderings as in `compare_exchange_with`.
                match self
                    .ptr
                    .compare_exchange(cur, new_raw, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(old) => break old,
                    Err(now) => {
                        if !new_raw.is_null() {
                            // SAFETY: from `into_raw` above, never published.
                            drop(unsafe { Box::from_raw(new_raw) });
                        }
                        cur = now;
                    }
                }
            }
            // `_guard` drops here, before the retire strategy runs.
        };
        retire_with(old, retire);
    }

    /// Publishes `value` and retires the previous one with `call_rcu` (dropped on a callback
    /// thread after a grace period). Callable inside a read-side critical section.
    pub fn replace(&self, value: Option<Box<T>>) {
        let old = self.swap_raw(value);
        retire(old);
    }

    /// Unpublishes the value and retires it with `call_rcu`.
    pub fn take(&self) {
        self.replace(None)
    }

    /// Publishes `value`, waits for a grace period and returns the previous value, which no reader
    /// can still see.
    ///
    /// # Panics
    /// Inside a read-side critical section (see [`synchronize_rcu`]).
    #[track_caller]
    pub fn replace_sync(&self, value: Option<Box<T>>) -> Option<Box<T>> {
        let old = self.swap_raw(value);
        if old.is_null() {
            return None;
        }
        synchronize_rcu();
        // SAFETY: `old` came from `Box::into_raw`, was unpublished by our swap, and the grace
        // period ended every critical section that could have loaded it.
        Some(unsafe { Box::from_raw(old) })
    }

    /// Whether the cell is currently empty (a racy snapshot).
    pub fn is_none(&self) -> bool {
        self.ptr.load(Ordering::Relaxed).is_null()
    }

    fn swap_raw(&self, value: Option<Box<T>>) -> *mut T {
        // AcqRel: Release publishes the new box's contents; Acquire takes over the old one's.
        self.ptr.swap(into_raw(value), Ordering::AcqRel)
    }
}

fn into_raw<T>(v: Option<Box<T>>) -> *mut T {
    v.map_or(core::ptr::null_mut(), Box::into_raw)
}

/// Drops a `Box<T>` given as a type-erased pointer.
///
/// # Safety
/// `p` must come from `Box::<T>::into_raw` and be dropped only once.
unsafe fn drop_box<T>(p: *mut ()) {
    // SAFETY: the function contract.
    drop(unsafe { Box::from_raw(p.cast::<T>()) });
}

fn retire_with<T: Send + 'static, R: Retire<T>>(old: *mut T, retire: R) {
    if old.is_null() {
        return;
    }
    // SAFETY: `old` came from `Box::into_raw` and was unpublished by the caller's swap/CAS, which
    // won it exclusively (ownership passes here, and the cell makes no reference to it again);
    // `Retire`'s contract makes `retire_raw` free it only after a grace period.
    unsafe { retire.retire_raw(old) };
}

fn retire<T: Send + 'static>(old: *mut T) {
    if old.is_null() {
        return;
    }
    // SAFETY: `old` is an unpublished `Box<T>` with `T: Send`, dropped exactly once by
    // `drop_box::<T>` on a callback thread after a grace period.
    unsafe { call_rcu_raw(drop_box::<T>, old.cast()) };
}

impl<T: Send + 'static> Drop for RcuCell<T> {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: `&mut self`: no reader can hold a reference (they borrow the cell).
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<T: Send + Sync + core::fmt::Debug + 'static> core::fmt::Debug for RcuCell<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let g = crate::global::rcu_read_lock();
        f.debug_tuple("RcuCell").field(&self.read(&g)).finish()
    }
}

/// How an unpublished value is freed once no reader can see it.
///
/// # Safety
/// `retire` receives a box that readers which entered their critical section before it was
/// unpublished may still be reading. An implementation must not drop it, move out of it or
/// mutate it before a grace period has passed since the call (for example: queue it with
/// `call_rcu`, wait with `synchronize_rcu`, or hand it to `kfree_rcu`).
///
/// This holds on unwind paths too: if `retire` (or anything it calls, such as a
/// `synchronize_rcu` that panics inside a read-side critical section) unwinds before that grace
/// period has passed, the box must not be dropped by the unwind. Leak it (hold it in
/// [`core::mem::ManuallyDrop`] or as a raw pointer until the grace period is over) or hand it to
/// `call_rcu` first.
pub unsafe trait Retire<T: Send + 'static> {
    /// Frees `old` after a grace period.
    fn retire(self, old: Box<T>);

    /// Frees `old`, given as a raw owned pointer, after a grace period. [`RcuCell`] retires
    /// through this method, so that no `Box` of a value readers may still hold is made before
    /// the grace period (module docs). The default makes the `Box` and calls
    /// [`Retire::retire`]; strategies that can should carry the pointer instead.
    ///
    /// # Safety
    /// * `old` is non-null and was allocated for a `T` by the global allocator with `T`'s layout
    ///   (as by `Box::<T>::into_raw`), and holds a valid `T`;
    /// * it is unpublished: no new reader can reach it (readers that found it before may still
    ///   read it);
    /// * ownership passes to the call: the caller makes no new reference to it and never uses
    ///   or frees it again.
    unsafe fn retire_raw(self, old: *mut T)
    where
        Self: Sized,
    {
        // SAFETY: the caller's contract (a `Box<T>` allocation it gave up).
        self.retire(unsafe { Box::from_raw(old) });
    }
}

/// [`Retire`] through `call_rcu`: dropped on a callback thread after a grace period. Never
/// blocks; callable inside a read-side critical section.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetireByCallRcu;

// SAFETY: the box is dropped by a callback that runs after a grace period.
unsafe impl<T: Send + 'static> Retire<T> for RetireByCallRcu {
    fn retire(self, old: Box<T>) {
        retire(Box::into_raw(old));
    }
    unsafe fn retire_raw(self, old: *mut T) {
        retire(old);
    }
}

/// [`Retire`] by waiting: `synchronize_rcu()`, then drop in the caller.
///
/// Panics when used inside a read-side critical section (see [`synchronize_rcu`]); the old
/// value is then leaked, never freed under the readers (the caller's own included).
#[derive(Clone, Copy, Debug, Default)]
pub struct RetireBySync;

// SAFETY: the box is dropped only after `synchronize_rcu` returned; if it panics, the
// `ManuallyDrop` keeps the unwind from dropping it (leaked).
unsafe impl<T: Send + 'static> Retire<T> for RetireBySync {
    #[track_caller]
    fn retire(self, old: Box<T>) {
        let old = core::mem::ManuallyDrop::new(old);
        synchronize_rcu();
        drop(core::mem::ManuallyDrop::into_inner(old));
    }
    #[track_caller]
    unsafe fn retire_raw(self, old: *mut T) {
        // A panic here (inside a read-side critical section) leaks `old` rather than freeing it
        // under a reader.
        synchronize_rcu();
        // SAFETY: the caller's contract (an unpublished `Box<T>` allocation it gave up), and the
        // grace period has passed: no reader can still hold it.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// The failure of [`RcuCell::compare_exchange`]: the cell held another value.
pub struct CompareExchangeError<'g, T> {
    /// What the cell holds now (valid under the guard that was passed in).
    pub current: Option<&'g T>,
    /// The value that was not published, handed back.
    pub new: Option<Box<T>>,
}

impl<T: core::fmt::Debug> core::fmt::Debug for CompareExchangeError<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CompareExchangeError")
            .field("current", &self.current)
            .field("new", &self.new)
            .finish()
    }
}

impl<T> core::fmt::Display for CompareExchangeError<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RcuCell::compare_exchange: the cell no longer holds the expected value")
    }
}

impl<T: core::fmt::Debug> std::error::Error for CompareExchangeError<'_, T> {}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn replace_retires_after_barrier() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = RcuCell::new(Some(Box::new(Counted(drops.clone()))));
        cell.replace(Some(Box::new(Counted(drops.clone()))));
        cell.take();
        assert!(cell.is_none());
        crate::global::rcu_barrier();
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(cell);
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn replace_sync_returns_old() {
        let cell = RcuCell::new(Some(Box::new(1u32)));
        let old = cell.replace_sync(Some(Box::new(2)));
        assert_eq!(old.as_deref(), Some(&1));
        let g = crate::global::rcu_read_lock();
        assert_eq!(cell.read(&g), Some(&2));
        assert!(format!("{cell:?}").contains('2'));
    }

    #[test]
    fn load_is_read() {
        let cell = RcuCell::new(Some(Box::new(7u8)));
        let g = crate::global::rcu_read_lock();
        assert_eq!(cell.load(&g), cell.read(&g));
        assert_eq!(cell.load(&g), Some(&7));
    }

    #[test]
    fn replace_with_and_take_with_use_the_strategy() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = RcuCell::new(Some(Box::new(Counted(drops.clone()))));
        cell.replace_with(Some(Box::new(Counted(drops.clone()))), RetireBySync);
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 1);
        cell.take_with(RetireBySync);
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(cell.is_none());
        cell.take_with(RetireBySync); // empty: nothing to retire
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// `RetireBySync` under an outer guard panics (synchronize_rcu inside a reader); the
    /// unpublished value must not be dropped on that unwind: the caller's own reference (and any
    /// other reader's) still points to it.
    #[test]
    fn retire_by_sync_panicking_inside_a_reader_never_frees_the_old_value() {
        use std::panic::{catch_unwind, AssertUnwindSafe};
        type Op = fn(&RcuCell<Counted>, &RcuReadGuard, Arc<AtomicUsize>);
        let ops: [(&str, Op); 5] = [
            ("replace_with", |c, _, d| {
                c.replace_with(Some(Box::new(Counted(d))), RetireBySync)
            }),
            ("take_with", |c, _, _| c.take_with(RetireBySync)),
            ("compare_exchange_with", |c, g, d| {
                let cur = c.read(g);
                let _ = c.compare_exchange_with(cur, Some(Box::new(Counted(d))), g, RetireBySync);
            }),
            ("update_with", |c, _, d| {
                c.update_with(|_| Some(Box::new(Counted(d.clone()))), RetireBySync)
            }),
            ("Retire::retire", |c, _, _| {
                let old = c.swap_raw(None);
                // SAFETY: unpublished by the swap above; handed to a `Retire` strategy.
                RetireBySync.retire(unsafe { Box::from_raw(old) });
            }),
        ];
        for (name, op) in ops {
            let drops = Arc::new(AtomicUsize::new(0));
            let cell = RcuCell::new(Some(Box::new(Counted(drops.clone()))));
            let g = crate::global::rcu_read_lock();
            let seen: &Counted = cell.read(&g).unwrap();
            let r = catch_unwind(AssertUnwindSafe(|| {
                op(&cell, &g, Arc::new(AtomicUsize::new(0)))
            }));
            let msg = r.expect_err("synchronize_rcu inside a reader panics");
            let msg = msg
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            assert!(msg.contains("read-side critical section"), "{name}: {msg}");
            assert_eq!(
                drops.load(std::sync::atomic::Ordering::SeqCst),
                0,
                "{name}: RetireBySync dropped the old value on the unwind of its panic, under a \
                 live reader"
            );
            assert!(
                Arc::ptr_eq(&seen.0, &drops),
                "{name}: the reader's value changed"
            );
            let leaked = seen as *const Counted as *mut Counted;
            drop(g);
            drop(cell);
            crate::global::rcu_barrier();
            // The strategy leaked the unpublished value on its unwind (as it must); a grace
            // period after the reader's section, the test frees it (leak checkers run on tests).
            crate::global::synchronize_rcu();
            // SAFETY: `leaked` is the old value every op above unpublished and the strategy
            // forgot (a `Box` allocation); no reader can hold it after the grace period.
            drop(unsafe { Box::from_raw(leaked) });
        }
    }

    #[test]
    fn compare_exchange_success_and_failure() {
        let cell = RcuCell::new(None::<Box<u32>>);
        let g = crate::global::rcu_read_lock();
        assert_eq!(
            cell.compare_exchange(None, Some(Box::new(1)), &g).unwrap(),
            Some(&1)
        );
        let err = cell
            .compare_exchange(None, Some(Box::new(2)), &g)
            .unwrap_err();
        assert_eq!(err.current, Some(&1));
        assert_eq!(err.new.as_deref(), Some(&2));
        assert!(err.to_string().contains("compare_exchange"));
        let cur = cell.read(&g);
        assert_eq!(cell.compare_exchange(cur, None, &g).unwrap(), None);
        assert!(cell.is_none());
        drop(g);
        crate::global::rcu_barrier();
    }

    #[test]
    fn update_with_applies_function() {
        let cell = RcuCell::new(Some(Box::new(String::from("a"))));
        cell.update_with(
            |old| Some(Box::new(format!("{}b", old.map_or("", String::as_str)))),
            RetireBySync,
        );
        assert_eq!(cell.read(&crate::global::rcu_read_lock()).unwrap(), "ab");
        cell.update_with(|_| None, RetireByCallRcu);
        assert!(cell.is_none());
        crate::global::rcu_barrier();
    }

    /// A strategy that must receive the raw pointer: re-making a `Box` of a value readers may
    /// still hold would assert uniqueness over their shared references.
    struct RawOnly(Arc<std::sync::Mutex<Vec<usize>>>);
    // SAFETY: `retire_raw` frees through `call_rcu`, after a grace period; `retire` leaks.
    unsafe impl<T: Send + 'static> Retire<T> for RawOnly {
        fn retire(self, old: Box<T>) {
            let _ = Box::into_raw(old); // leaked, never freed under a reader
            panic!("RcuCell re-made a Box of a retired value");
        }
        unsafe fn retire_raw(self, old: *mut T) {
            self.0.lock().unwrap().push(old as usize);
            retire(old);
        }
    }

    #[test]
    fn cell_retires_through_the_raw_pointer() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let cell = RcuCell::new(Some(Box::new(1u64)));
        let addr = |c: &RcuCell<u64>| {
            c.read(&crate::global::rcu_read_lock())
                .map_or(0, |r| r as *const u64 as usize)
        };
        let mut expect = vec![addr(&cell)];
        cell.replace_with(Some(Box::new(2)), RawOnly(seen.clone()));
        expect.push(addr(&cell));
        cell.update_with(|_| Some(Box::new(3)), RawOnly(seen.clone()));
        expect.push(addr(&cell));
        {
            let g = crate::global::rcu_read_lock();
            let cur = cell.read(&g);
            cell.compare_exchange_with(cur, Some(Box::new(4)), &g, RawOnly(seen.clone()))
                .unwrap();
        }
        expect.push(addr(&cell));
        cell.take_with(RawOnly(seen.clone()));
        assert!(cell.is_none());
        assert_eq!(*seen.lock().unwrap(), expect);
        crate::global::rcu_barrier();
    }

    #[test]
    fn a_box_only_strategy_still_works() {
        struct BoxOnly(Arc<AtomicUsize>);
        // SAFETY: waits for a grace period before dropping.
        unsafe impl<T: Send + 'static> Retire<T> for BoxOnly {
            fn retire(self, old: Box<T>) {
                crate::global::synchronize_rcu();
                drop(old);
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let n = Arc::new(AtomicUsize::new(0));
        let cell = RcuCell::new(Some(Box::new(1u8)));
        cell.replace_with(Some(Box::new(2)), BoxOnly(n.clone()));
        cell.take_with(BoxOnly(n.clone()));
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_update_loses_no_increment() {
        use std::time::{Duration, Instant};
        const THREADS: u64 = 4;
        const PER: u64 = 2_000;
        let drops = Arc::new(AtomicUsize::new(0));
        struct N(u64, Arc<AtomicUsize>);
        impl Drop for N {
            fn drop(&mut self) {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let cell = Arc::new(RcuCell::new(Some(Box::new(N(0, drops.clone())))));
        let made = Arc::new(AtomicUsize::new(1));
        let start = Instant::now();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (cell, drops, made) = (cell.clone(), drops.clone(), made.clone());
                std::thread::spawn(move || {
                    for i in 0..PER {
                        if t == 0 && i % 64 == 0 {
                            // a CAS writer racing the update loops
                            let g = crate::global::rcu_read_lock();
                            let cur = cell.read(&g);
                            let v = cur.map_or(0, |n| n.0);
                            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Err(e) =
                                cell.compare_exchange(cur, Some(Box::new(N(v, drops.clone()))), &g)
                            {
                                drop(e.new);
                            }
                        }
                        cell.update_with(
                            |old| {
                                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                Some(Box::new(N(old.unwrap().0 + 1, drops.clone())))
                            },
                            RetireByCallRcu,
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "took too long");
        assert_eq!(
            cell.read(&crate::global::rcu_read_lock()).unwrap().0,
            THREADS * PER
        );
        crate::global::rcu_barrier();
        drop(cell);
        let made = made.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            drops.load(std::sync::atomic::Ordering::Relaxed),
            made,
            "every box freed once"
        );
    }
}
