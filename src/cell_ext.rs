//! `rcu_core::RcuCell` retiring through `kfree_rcu`: the [`RetireByKfree`] strategy and the
//! [`RcuCellExt`] extension trait. (The facade's own [`crate::RcuCell`] retires through
//! `kfree_rcu` by default and implements the trait too, for code written against it.)

use rcu_core::{CompareExchangeError, RcuCell, RcuReadGuard, Retire};

/// [`Retire`] through [`kfree_batch::kfree_rcu`]: the old box joins a per-CPU page-sized block
/// and is freed with its block after a grace period, within the batcher's memory cap.
///
/// Never blocks inside a read-side critical section (under memory pressure it parks the object;
/// outside a reader it may wait for a grace period itself, see the `kfree_batch` docs).
///
/// ```
/// let cell = rcu_kit::rcu_core::RcuCell::new(Some(Box::new(1u8)));
/// cell.replace_with(Some(Box::new(2)), rcu_kit::RetireByKfree);
/// rcu_kit::kvfree_rcu_barrier();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RetireByKfree;

// SAFETY: `kfree_rcu` frees the box only after a grace period that starts after this call.
unsafe impl<T: Send + 'static> Retire<T> for RetireByKfree {
    #[inline]
    fn retire(self, old: Box<T>) {
        // SAFETY: a `Box<T>` allocation given up here; nobody else frees it.
        unsafe { crate::ptr::kfree_under_writer_aware(Box::into_raw(old)) };
    }
    #[inline]
    unsafe fn retire_raw(self, old: *mut T) {
        // Under a list or map writer lock, as inside a reader (`ptr` Invariant 2).
        // SAFETY: `retire_raw`'s contract is `kfree_rcu_raw`'s: an unpublished `Box<T>`
        // allocation whose ownership passes to the call.
        unsafe { crate::ptr::kfree_under_writer_aware(old) };
    }
}

/// `rcu_core::RcuCell` writers that retire the replaced value with `kfree_rcu`.
///
/// The inherent `rcu_core::RcuCell::replace` / `take` / `compare_exchange` retire through
/// `call_rcu` (one callback per value); these retire through the `kfree_rcu` batcher (8 bytes per
/// value, bounded pending memory), which is what most writers want. The facade's
/// [`crate::RcuCell`] does so without the trait.
///
/// ```
/// use rcu_kit::rcu_core::RcuCell;
/// use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuCellExt};
/// let hits = RcuCell::new(Some(Box::new(0u64)));
/// hits.update(|old| Some(Box::new(old.copied().unwrap_or(0) + 1)));
/// hits.replace_kfree(Some(Box::new(10)));
/// assert_eq!(hits.read(&rcu_read_lock()), Some(&10));
/// hits.take_kfree();
/// assert!(hits.is_none());
/// kvfree_rcu_barrier(); // every retired value is freed
/// ```
pub trait RcuCellExt<T: Send + 'static> {
    /// Replaces the value with `f(current)` in a compare-and-swap loop and retires the replaced
    /// value with `kfree_rcu`. `f` may run more than once when writers race.
    fn update<F: FnMut(Option<&T>) -> Option<Box<T>>>(&self, f: F);

    /// Publishes `value` and retires the previous one with `kfree_rcu`.
    fn replace_kfree(&self, value: Option<Box<T>>);

    /// Empties the cell and retires the value with `kfree_rcu`.
    fn take_kfree(&self);

    /// [`RcuCell::compare_exchange`], retiring the replaced value with `kfree_rcu`.
    fn compare_exchange_kfree<'g>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        guard: &'g RcuReadGuard,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>>;
}

impl<T: Send + 'static> RcuCellExt<T> for RcuCell<T> {
    #[inline]
    fn update<F: FnMut(Option<&T>) -> Option<Box<T>>>(&self, f: F) {
        self.update_with(f, RetireByKfree);
    }

    #[inline]
    fn replace_kfree(&self, value: Option<Box<T>>) {
        self.replace_with(value, RetireByKfree);
    }

    #[inline]
    fn take_kfree(&self) {
        self.take_with(RetireByKfree);
    }

    #[inline]
    fn compare_exchange_kfree<'g>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        guard: &'g RcuReadGuard,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        self.compare_exchange_with(current, new, guard, RetireByKfree)
    }
}

impl<T: Send + 'static> RcuCellExt<T> for crate::RcuCell<T> {
    #[inline]
    fn update<F: FnMut(Option<&T>) -> Option<Box<T>>>(&self, f: F) {
        crate::RcuCell::update(self, f)
    }

    #[inline]
    fn replace_kfree(&self, value: Option<Box<T>>) {
        self.replace(value)
    }

    #[inline]
    fn take_kfree(&self) {
        self.take()
    }

    #[inline]
    fn compare_exchange_kfree<'g>(
        &'g self,
        current: Option<&T>,
        new: Option<Box<T>>,
        guard: &'g RcuReadGuard,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        self.compare_exchange(current, new, guard)
    }
}
