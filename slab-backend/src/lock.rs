//! The word-sized lock used for the barn and the per-node slab lists.
//!
//! # Implementation
//!
//! A futex mutex with a `try_lock` that is async-signal-safe (one CAS), so the `*_nolock` paths
//! can use it from a signal handler: they only ever `try_lock`, and a failed attempt means "the
//! interrupted code may hold it", never "wait".
//!
//! | state | meaning                                  |
//! |-------|------------------------------------------|
//! | 0     | unlocked                                 |
//! | 1     | locked, nobody sleeps on it              |
//! | 2     | locked, waiters may sleep on the futex   |
//!
//! `lock`: CAS `0 → 1` (Acquire); on failure spin briefly, then swap in `2` and `FUTEX_WAIT` until
//! the swap returns 0. `unlock`: swap in `0` (Release), `FUTEX_WAKE` one waiter if the old value
//! was 2. Under `rcu_loom` the wait is a yield loop.
//!
//! ## Memory orderings
//! The Acquire of every successful CAS/swap pairs with the Release swap in `unlock` of the previous
//! holder, so all writes of one critical section happen-before the next one.
//!
//! Locks of this type are *leaves* apart from the documented order in `cache/mod.rs`: no code
//! takes another blocking lock while it holds a barn or node lock.
//!
//! [`Locked<T>`] is a `RawLock` with the data it guards (the cache registry, the flush lock, the
//! shrinker list, the thread-cache ids). Unlike a std `Mutex` it can be taken and released
//! without a guard, which the `fork()` handlers need: *prepare* takes every lock and returns,
//! *parent* and *child* release them (`crate::fork`).

use crate::primitive::sync::atomic::{AtomicU32, Ordering};

/// A futex mutex with an explicit `lock`/`unlock` API (see the module docs).
#[derive(Debug)]
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    /// An unlocked lock.
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
        }
    }

    /// An unlocked lock, usable in a `static`.
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new_const() -> Self {
        Self {
            state: AtomicU32::new(0),
        }
    }

    /// Takes the lock if it is free; async-signal-safe. Acquire pairs with `unlock`'s Release.
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the lock, sleeping while another thread holds it. Never from a signal handler.
    #[inline]
    pub(crate) fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..64 {
            crate::primitive::thread::spin_hint();
            // Relaxed peek; the CAS in try_lock carries the Acquire.
            if self.state.load(Ordering::Relaxed) == 0 && self.try_lock() {
                return;
            }
        }
        // Acquire: pairs with the Release swap in `unlock` of the previous holder.
        while self.state.swap(2, Ordering::Acquire) != 0 {
            wait(&self.state, 2);
        }
    }

    /// Releases the lock. Release pairs with the Acquire of the next `lock`/`try_lock`.
    #[inline]
    pub(crate) fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            wake_one(&self.state);
        }
    }
}

/// Data guarded by a [`RawLock`] (module docs).
#[cfg(not(rcu_loom))]
#[derive(Debug)]
pub(crate) struct Locked<T> {
    lock: RawLock,
    data: crate::primitive::cell::UnsafeCell<T>,
}

// SAFETY: `data` is only reached through a guard (lock held) or by the `fork()` handlers, which
// hold the lock themselves; so `T: Send` suffices, as for `std::sync::Mutex`.
#[cfg(not(rcu_loom))]
unsafe impl<T: Send> Sync for Locked<T> {}

#[cfg(not(rcu_loom))]
impl<T> Locked<T> {
    /// Unlocked, holding `v`.
    pub(crate) const fn new(v: T) -> Self {
        Self {
            lock: RawLock::new_const(),
            data: crate::primitive::cell::UnsafeCell::new(v),
        }
    }

    /// Takes the lock.
    pub(crate) fn lock(&self) -> LockedGuard<'_, T> {
        self.lock.lock();
        LockedGuard { l: self }
    }

    /// Takes the lock if it is free.
    pub(crate) fn try_lock(&self) -> Option<LockedGuard<'_, T>> {
        self.lock.try_lock().then_some(LockedGuard { l: self })
    }

    /// The lock itself, for the `fork()` handlers (which take and release it without a guard).
    pub(crate) fn raw(&self) -> &RawLock {
        &self.lock
    }

    /// The data, for a caller that holds the lock without a guard (the `fork()` handlers).
    ///
    /// # Safety
    /// The caller holds the lock (taken through [`Locked::raw`]) for as long as it uses the
    /// reference.
    pub(crate) unsafe fn get_locked(&self) -> &T {
        // SAFETY: the caller holds the lock (contract), so nobody writes the data.
        self.data.with(|p| unsafe { &*p })
    }
}

/// A held [`Locked`] lock; releases it on drop.
#[cfg(not(rcu_loom))]
pub(crate) struct LockedGuard<'a, T> {
    l: &'a Locked<T>,
}

#[cfg(not(rcu_loom))]
impl<T> core::ops::Deref for LockedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no `&mut` to the data exists elsewhere.
        self.l.data.with(|p| unsafe { &*p })
    }
}

#[cfg(not(rcu_loom))]
impl<T> core::ops::DerefMut for LockedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock and `&mut self` makes this the only reference.
        self.l.data.with_mut(|p| unsafe { &mut *p })
    }
}

#[cfg(not(rcu_loom))]
impl<T> Drop for LockedGuard<'_, T> {
    fn drop(&mut self) {
        self.l.lock.unlock();
    }
}

/// Sleeps while the lock word still reads `expected` (rcu-core's futex wrapper).
fn wait(state: &AtomicU32, expected: u32) {
    rcu_core::raw::futex_wait(state, expected)
}

/// Wakes one waiter.
fn wake_one(state: &AtomicU32) {
    rcu_core::raw::futex_wake(state, 1)
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::RawLock;
    use std::sync::Arc;

    #[test]
    fn try_lock_is_exclusive() {
        let l = RawLock::new();
        assert!(l.try_lock());
        assert!(!l.try_lock());
        l.unlock();
        assert!(l.try_lock());
        l.unlock();
    }

    #[test]
    fn contended_counter() {
        struct Shared(RawLock, std::cell::UnsafeCell<u64>);
        // SAFETY: the u64 is only touched with the lock held.
        unsafe impl Sync for Shared {}
        let s = Arc::new(Shared(RawLock::new(), std::cell::UnsafeCell::new(0)));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        s.0.lock();
                        // SAFETY: the lock is held for the increment.
                        unsafe { *s.1.get() += 1 };
                        s.0.unlock();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // SAFETY: all threads joined.
        assert_eq!(unsafe { *s.1.get() }, 40_000);
    }
}
