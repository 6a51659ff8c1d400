//! `RcuCell<T>`: an RCU-protected owning pointer.
//!
//! # Implementation
//!
//! An `AtomicPtr<T>` holding a `Box<T>` (or null). Readers load it with Acquire (pairs with the
//! Release of the swap that published the value, so the pointee's initialisation is visible) inside
//! a read-side critical section; the reference they get lives no longer than their guard. Writers
//! swap (AcqRel: Release publishes the new value, Acquire makes the old one's contents ours to
//! drop) and retire the old box: through `call_rcu` ([`RcuCell::replace`], [`RcuCell::take`]) or by
//! waiting ([`RcuCell::replace_sync`], which hands the old box back after `synchronize_rcu`).
//!
//! Dropping the cell frees the current value at once: `&self` borrows end first, and a reference
//! from [`RcuCell::read`] borrows the cell, so no reader can still hold it.

use core::marker::PhantomData;

use crate::global::{call_rcu_raw, synchronize_rcu, RcuReadGuard};
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
// threads and the old value is dropped on the worker thread (needs `T: Send`).
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

    /// Publishes `value` and retires the previous one with `call_rcu` (dropped on the worker
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

fn retire<T: Send + 'static>(old: *mut T) {
    if old.is_null() {
        return;
    }
    // SAFETY: `old` is an unpublished `Box<T>` with `T: Send`, dropped exactly once by
    // `drop_box::<T>` on the worker after a grace period.
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
}
