//! The facade's owning RCU pointers: [`RcuCell`] (nullable) and [`RcuBox`] (always set), built
//! on [`Atomic`].
//!
//! Every retiring method without a suffix retires through `kfree_rcu` (bounded memory); the
//! `call_rcu` form is named (`replace_call_rcu`, ...), waiting is named (`replace_sync`), and
//! `*_with` takes any [`Retire`] strategy. `rcu_core::RcuCell` (whose unsuffixed methods retire
//! through `call_rcu`) stays available for code that depends only on `rcu-core`.
//!
//! # Implementation
//!
//! Each type is one [`Atomic<T>`]; its invariants and memory orderings are those of the
//! [`ptr`](crate::ptr) module (Acquire loads, AcqRel swaps and successful CAS, Acquire failed
//! CAS). [`RcuBox`] adds one invariant: its `Atomic` is never null (every constructor and every
//! writer stores a box), so [`RcuBox::read`] never fails.

use core::fmt;

use rcu_core::{CompareExchangeError, RcuReadGuard, Retire, RetireByCallRcu};

use crate::ptr::{Atomic, Retired, Shared};

/// Hands a retired value to a [`Retire`] strategy as the raw pointer it is.
///
/// While the thread holds a list or map writer lock, the strategy runs inside a read-side
/// critical section of its own: a reader may be waiting for that lock inside its critical
/// section, so a strategy that waits for a grace period (`RetireBySync`) would wait forever; in
/// a reader it panics instead (and leaks the value, never frees it early), and the non-waiting
/// strategies behave as in any reader (`ptr` Invariant 2).
fn retire_with<T: Send + 'static, R: Retire<T>>(old: Option<Retired<T>>, how: R) {
    if let Some(old) = old {
        let _reader = crate::writer_lock::holds_a_writer_lock().then(rcu_core::rcu_read_lock);
        let p = old.into_raw_for_retire();
        // SAFETY: `p` came from `Box::into_raw`, is unpublished, and the handle gave up its
        // ownership to this call (`Retire::retire_raw`'s contract).
        unsafe { how.retire_raw(p) };
    }
}

/// An RCU-protected, owning, nullable pointer whose writers retire through `kfree_rcu`.
///
/// ```
/// use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuCell};
/// static CURRENT: RcuCell<String> = RcuCell::empty();
/// CURRENT.replace(Some(Box::new("v1".into())));
/// {
///     let g = rcu_read_lock();
///     assert_eq!(CURRENT.read(&g).map(String::as_str), Some("v1"));
/// }
/// CURRENT.replace(Some(Box::new("v2".into()))); // v1: kfree_rcu
/// CURRENT.take();
/// kvfree_rcu_barrier();
/// ```
pub struct RcuCell<T: Send + 'static> {
    inner: Atomic<T>,
}

impl<T: Send + 'static> RcuCell<T> {
    /// A cell holding `value`.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// assert!(c.is_some());
    /// ```
    pub fn new(value: Option<Box<T>>) -> Self {
        RcuCell {
            inner: Atomic::from_box(value),
        }
    }

    /// An empty cell. `const`: usable in a `static`.
    ///
    /// ```
    /// static C: rcu_kit::RcuCell<u8> = rcu_kit::RcuCell::empty();
    /// assert!(C.is_none());
    /// ```
    pub const fn empty() -> Self {
        RcuCell {
            inner: Atomic::null(),
        }
    }

    /// The current value, valid while `guard` (and the cell borrow) live.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// assert_eq!(c.read(&rcu_kit::rcu_read_lock()), Some(&1));
    /// ```
    #[inline]
    pub fn read<'g>(&'g self, guard: &'g RcuReadGuard) -> Option<&'g T> {
        self.inner.load(guard).as_ref()
    }

    /// [`RcuCell::read`] under the name crossbeam and arc-swap users look for.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// assert_eq!(c.load(&rcu_kit::rcu_read_lock()), Some(&1));
    /// ```
    #[inline]
    pub fn load<'g>(&'g self, guard: &'g RcuReadGuard) -> Option<&'g T> {
        self.read(guard)
    }

    /// Whether the cell is empty (a snapshot).
    ///
    /// ```
    /// assert!(rcu_kit::RcuCell::<u8>::empty().is_none());
    /// ```
    pub fn is_none(&self) -> bool {
        self.inner.is_null()
    }

    /// Whether the cell holds a value (a snapshot).
    ///
    /// ```
    /// assert!(rcu_kit::RcuCell::new(Some(Box::new(1u8))).is_some());
    /// ```
    pub fn is_some(&self) -> bool {
        !self.is_none()
    }

    /// Publishes `value`; the previous value comes back as a [`Retired`] handle.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.swap(None).unwrap().call_rcu();
    /// rcu_kit::rcu_barrier();
    /// ```
    #[must_use = "the unpublished value is handed back: retire it (dropping it retires it with kfree_rcu)"]
    pub fn swap(&self, value: Option<Box<T>>) -> Option<Retired<T>> {
        self.inner.swap(value)
    }

    /// Publishes `value` and retires the previous one with `kfree_rcu` (bounded memory).
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.replace(Some(Box::new(2)));
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    pub fn replace(&self, value: Option<Box<T>>) {
        self.inner.store(value)
    }

    /// Publishes `value` and retires the previous one with `call_rcu` (one callback per value,
    /// unbounded memory).
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.replace_call_rcu(Some(Box::new(2)));
    /// rcu_kit::rcu_barrier();
    /// ```
    pub fn replace_call_rcu(&self, value: Option<Box<T>>) {
        self.replace_with(value, RetireByCallRcu)
    }

    /// Publishes `value`, waits for a grace period and hands the previous value back.
    ///
    /// # Panics
    /// Inside a read-side critical section (the previous value is then retired with
    /// `kfree_rcu`).
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// assert_eq!(c.replace_sync(None).as_deref(), Some(&1));
    /// ```
    #[track_caller]
    pub fn replace_sync(&self, value: Option<Box<T>>) -> Option<Box<T>> {
        self.swap(value).map(Retired::synchronize)
    }

    /// Publishes `value` and hands the previous value to `retire`.
    ///
    /// ```
    /// use rcu_kit::{RcuCell, RetireBySync};
    /// let c = RcuCell::new(Some(Box::new(1u8)));
    /// c.replace_with(Some(Box::new(2)), RetireBySync);
    /// ```
    pub fn replace_with<R: Retire<T>>(&self, value: Option<Box<T>>, retire: R) {
        retire_with(self.swap(value), retire)
    }

    /// Empties the cell and retires the value with `kfree_rcu`.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.take();
    /// assert!(c.is_none());
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    pub fn take(&self) {
        self.replace(None)
    }

    /// Empties the cell and retires the value with `call_rcu`.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.take_call_rcu();
    /// rcu_kit::rcu_barrier();
    /// ```
    pub fn take_call_rcu(&self) {
        self.replace_call_rcu(None)
    }

    /// Empties the cell and hands the value to `retire`.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.take_with(rcu_kit::RetireBySync);
    /// ```
    pub fn take_with<R: Retire<T>>(&self, retire: R) {
        self.replace_with(None, retire)
    }

    /// Publishes `new` if the cell still holds `current` (compared by address), retiring the
    /// replaced value with `kfree_rcu`; on failure returns what it holds now and `new` back.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(None::<Box<u8>>);
    /// let g = rcu_kit::rcu_read_lock();
    /// assert_eq!(c.compare_exchange(None, Some(Box::new(1)), &g).unwrap(), Some(&1));
    /// assert!(c.compare_exchange(None, Some(Box::new(2)), &g).is_err());
    /// ```
    pub fn compare_exchange<'g>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        guard: &'g RcuReadGuard,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        self.compare_exchange_with(current, new, guard, crate::RetireByKfree)
    }

    /// [`RcuCell::compare_exchange`], retiring with `call_rcu`.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// let g = rcu_kit::rcu_read_lock();
    /// let cur = c.read(&g);
    /// assert!(c.compare_exchange_call_rcu(cur, None, &g).is_ok());
    /// ```
    pub fn compare_exchange_call_rcu<'g>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        guard: &'g RcuReadGuard,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        self.compare_exchange_with(current, new, guard, RetireByCallRcu)
    }

    /// [`RcuCell::compare_exchange`] with any [`Retire`] strategy. It runs inside `guard`'s
    /// critical section, so a waiting strategy ([`RetireBySync`](rcu_core::RetireBySync))
    /// panics there after the exchange, leaking the replaced value rather than freeing it under
    /// the readers.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// let g = rcu_kit::rcu_read_lock();
    /// let cur = c.read(&g);
    /// assert!(c.compare_exchange_with(cur, None, &g, rcu_kit::RetireByCallRcu).is_ok());
    /// ```
    pub fn compare_exchange_with<'g, R: Retire<T>>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        guard: &'g RcuReadGuard,
        retire: R,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        // SAFETY: only compared with the current pointer by `compare_exchange`, which hands
        // back loaded pointers, never this one.
        let cur = unsafe { Shared::from_ptr(current.map_or(core::ptr::null(), |r| r as *const T)) };
        match self.inner.compare_exchange(cur, new, guard) {
            Ok((now, old)) => {
                retire_with(old, retire);
                Ok(now.as_ref())
            }
            Err(e) => Err(CompareExchangeError {
                current: e.current.as_ref(),
                new: e.new,
            }),
        }
    }

    /// Replaces the value with `f(current)` in a compare-and-swap loop and retires the replaced
    /// value with `kfree_rcu`. `f` may run more than once when writers race.
    ///
    /// `f` runs inside a read-side critical section (it reads the current value): it must not
    /// wait for a grace period (`synchronize_rcu`, [`Retired::synchronize`](crate::Retired::synchronize), `*_sync`: they
    /// panic there), nor take a lock that a thread waiting for a grace period holds (that
    /// deadlocks).
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.update(|v| Some(Box::new(v.copied().unwrap_or(0) + 1)));
    /// assert_eq!(c.read(&rcu_kit::rcu_read_lock()), Some(&2));
    /// ```
    pub fn update<F: FnMut(Option<&T>) -> Option<Box<T>>>(&self, f: F) {
        self.update_with(f, crate::RetireByKfree)
    }

    /// [`RcuCell::update`] with any [`Retire`] strategy.
    ///
    /// ```
    /// let c = rcu_kit::RcuCell::new(Some(Box::new(1u8)));
    /// c.update_with(|_| None, rcu_kit::RetireByCallRcu);
    /// assert!(c.is_none());
    /// ```
    pub fn update_with<F, R>(&self, mut f: F, retire: R)
    where
        F: FnMut(Option<&T>) -> Option<Box<T>>,
        R: Retire<T>,
    {
        let g = rcu_core::rcu_read_lock();
        let mut cur = self.inner.load(&g);
        let mut new = f(cur.as_ref());
        let old = loop {
            match self.inner.compare_exchange(cur, new, &g) {
                Ok((_, old)) => break old,
                Err(e) => {
                    cur = e.current;
                    drop(e.new);
                    new = f(cur.as_ref());
                }
            }
        };
        // Outside the guard: a waiting strategy (RetireBySync) may block.
        drop(g);
        retire_with(old, retire);
    }
}

impl<T: Send + 'static> Default for RcuCell<T> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for RcuCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = rcu_core::rcu_read_lock();
        f.debug_tuple("RcuCell").field(&self.read(&g)).finish()
    }
}

/// An RCU-protected, owning pointer that always holds a value: reads need no `.expect()`.
///
/// ```
/// use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuBox};
/// #[derive(Clone)]
/// struct Config { limit: u32 }
/// let config = RcuBox::new(Config { limit: 1 });
/// config.update(|c| Box::new(Config { limit: c.limit + 1 }));
/// assert_eq!(config.read(&rcu_read_lock()).limit, 2);
/// kvfree_rcu_barrier();
/// ```
pub struct RcuBox<T: Send + 'static> {
    /// Never null (module docs).
    inner: Atomic<T>,
}

impl<T: Send + 'static> RcuBox<T> {
    /// A pointer to `value`.
    ///
    /// Not `const`: it allocates (stable Rust has no allocation in `const`). A `static` that
    /// always holds a value is a `LazyLock` around it (made on first use); an RCU pointer that
    /// may be empty has `const` constructors: [`RcuCell::empty`], [`Atomic::null`].
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u8);
    /// assert_eq!(*b.read(&rcu_kit::rcu_read_lock()), 1);
    /// ```
    ///
    /// ```
    /// use std::sync::LazyLock;
    /// use rcu_kit::{rcu_read_lock, RcuBox};
    ///
    /// static LIMIT: LazyLock<RcuBox<u32>> = LazyLock::new(|| RcuBox::new(100));
    /// LIMIT.replace(Box::new(200));
    /// assert_eq!(*LIMIT.read(&rcu_read_lock()), 200);
    /// ```
    pub fn new(value: T) -> Self {
        Self::from_box(Box::new(value))
    }

    /// A pointer owning `value`.
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::from_box(Box::new([1u8; 16]));
    /// assert_eq!(b.read(&rcu_kit::rcu_read_lock())[0], 1);
    /// ```
    pub fn from_box(value: Box<T>) -> Self {
        RcuBox {
            inner: Atomic::from_box(Some(value)),
        }
    }

    /// The current value, valid while `guard` (and the borrow) live.
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(String::from("x"));
    /// assert_eq!(b.read(&rcu_kit::rcu_read_lock()), "x");
    /// ```
    #[inline]
    pub fn read<'g>(&'g self, guard: &'g RcuReadGuard) -> &'g T {
        match self.inner.load(guard).as_ref() {
            Some(v) => v,
            None => unreachable!("RcuBox is never null"),
        }
    }

    /// [`RcuBox::read`] under the name crossbeam and arc-swap users look for.
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u8);
    /// assert_eq!(*b.load(&rcu_kit::rcu_read_lock()), 1);
    /// ```
    #[inline]
    pub fn load<'g>(&'g self, guard: &'g RcuReadGuard) -> &'g T {
        self.read(guard)
    }

    /// Publishes `value`; the previous value comes back as a [`Retired`] handle.
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u8);
    /// let old = b.swap(Box::new(2));
    /// assert_eq!(*old.synchronize(), 1);
    /// ```
    #[must_use = "the unpublished value is handed back: retire it (dropping it retires it with kfree_rcu)"]
    pub fn swap(&self, value: Box<T>) -> Retired<T> {
        match self.inner.swap(Some(value)) {
            Some(old) => old,
            None => unreachable!("RcuBox is never null"),
        }
    }

    /// Publishes `value` and retires the previous one with `kfree_rcu`.
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u8);
    /// b.replace(Box::new(2));
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    pub fn replace(&self, value: Box<T>) {
        self.swap(value).kfree_rcu()
    }

    /// Publishes `value` and retires the previous one with `call_rcu`.
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u8);
    /// b.replace_call_rcu(Box::new(2));
    /// rcu_kit::rcu_barrier();
    /// ```
    pub fn replace_call_rcu(&self, value: Box<T>) {
        self.swap(value).call_rcu()
    }

    /// Publishes `value`, waits for a grace period and hands the previous value back.
    ///
    /// # Panics
    /// Inside a read-side critical section (the previous value is then retired with
    /// `kfree_rcu`).
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u8);
    /// assert_eq!(*b.replace_sync(Box::new(2)), 1);
    /// ```
    #[track_caller]
    pub fn replace_sync(&self, value: Box<T>) -> Box<T> {
        self.swap(value).synchronize()
    }

    /// Publishes `new` if the pointer still holds `current` (compared by address), retiring the
    /// replaced value with `kfree_rcu`; on failure returns the current value and `new` back.
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u8);
    /// let g = rcu_kit::rcu_read_lock();
    /// let cur = b.read(&g);
    /// assert_eq!(b.compare_exchange(cur, Box::new(2), &g).ok(), Some(&2));
    /// let (now, back) = b.compare_exchange(cur, Box::new(3), &g).unwrap_err();
    /// assert_eq!((*now, *back), (2, 3));
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn compare_exchange<'g>(
        &'g self,
        current: &T,
        new: Box<T>,
        guard: &'g RcuReadGuard,
    ) -> Result<&'g T, (&'g T, Box<T>)> {
        // SAFETY: as in `RcuCell::compare_exchange_with`: compared, never dereferenced.
        let cur = unsafe { Shared::from_ptr(current as *const T) };
        match self.inner.compare_exchange(cur, Some(new), guard) {
            Ok((now, old)) => {
                if let Some(old) = old {
                    old.kfree_rcu();
                }
                Ok(now.as_ref().expect("RcuBox is never null"))
            }
            Err(e) => Err((
                e.current.as_ref().expect("RcuBox is never null"),
                e.new.expect("the value passed in"),
            )),
        }
    }

    /// Replaces the value with `f(current)` in a compare-and-swap loop and retires the replaced
    /// value with `kfree_rcu`. `f` may run more than once when writers race.
    ///
    /// `f` runs inside a read-side critical section (it reads the current value): it must not
    /// wait for a grace period (`synchronize_rcu`, [`Retired::synchronize`](crate::Retired::synchronize), `*_sync`: they
    /// panic there), nor take a lock that a thread waiting for a grace period holds (that
    /// deadlocks).
    ///
    /// ```
    /// let b = rcu_kit::RcuBox::new(1u64);
    /// b.update(|v| Box::new(v + 1));
    /// assert_eq!(*b.read(&rcu_kit::rcu_read_lock()), 2);
    /// ```
    pub fn update<F: FnMut(&T) -> Box<T>>(&self, mut f: F) {
        self.inner
            .update(|cur| Some(f(cur.expect("RcuBox is never null"))))
    }

    /// The value, for the exclusive owner.
    ///
    /// ```
    /// let mut b = rcu_kit::RcuBox::new(1u8);
    /// *b.get_mut() = 2;
    /// assert_eq!(*b.into_box(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().expect("RcuBox is never null")
    }

    /// The value as a `Box`, consuming the pointer.
    ///
    /// ```
    /// assert_eq!(*rcu_kit::RcuBox::new(3u8).into_box(), 3);
    /// ```
    pub fn into_box(self) -> Box<T> {
        self.inner.into_box().expect("RcuBox is never null")
    }
}

impl<T: Send + Default + 'static> Default for RcuBox<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for RcuBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = rcu_core::rcu_read_lock();
        f.debug_tuple("RcuBox").field(self.read(&g)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The unsuffixed writers retire through `kfree_rcu`: `kvfree_rcu_barrier` alone frees them.
    #[test]
    fn unsuffixed_writers_retire_through_kfree_rcu() {
        let drops = Arc::new(AtomicUsize::new(0));
        let before = kfree_batch::stats().queued;
        let c = RcuCell::new(Some(Box::new(Counted(drops.clone()))));
        c.replace(Some(Box::new(Counted(drops.clone()))));
        {
            let g = rcu_core::rcu_read_lock();
            let cur = c.read(&g);
            c.compare_exchange(cur, Some(Box::new(Counted(drops.clone()))), &g)
                .unwrap();
        }
        c.update(|_| Some(Box::new(Counted(drops.clone()))));
        c.take();
        let b = RcuBox::new(Counted(drops.clone()));
        b.replace(Box::new(Counted(drops.clone())));
        b.update(|_| Box::new(Counted(drops.clone())));
        assert!(kfree_batch::stats().queued >= before + 6);
        kfree_batch::kvfree_rcu_barrier();
        assert_eq!(drops.load(Ordering::SeqCst), 6);
        drop(b);
        assert_eq!(drops.load(Ordering::SeqCst), 7);
        c.replace_call_rcu(Some(Box::new(Counted(drops.clone()))));
        c.take_call_rcu();
        rcu_core::rcu_barrier();
        assert_eq!(drops.load(Ordering::SeqCst), 8);
    }
}
