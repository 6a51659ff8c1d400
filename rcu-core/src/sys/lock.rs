//! A minimal mutex the engine can reset in a `fork()` child.
//!
//! # Implementation
//!
//! `std::sync::Mutex` cannot be unlocked by a thread that does not hold its guard, and a child of
//! `fork()` inherits locks held by threads that no longer exist. The engine's few locks are
//! therefore this word-sized lock, which the atfork child handler may [`RawLock::reset_after_fork`].
//!
//! | state | meaning                          |
//! |-------|----------------------------------|
//! | 0     | unlocked                         |
//! | 1     | locked, no waiter                |
//! | 2     | locked, waiters may sleep on the futex |
//!
//! Same protocol as std's futex mutex: lock is a `0 → 1` CAS (Acquire), contended lockers swap in
//! `2` and `FUTEX_WAIT`; unlock swaps in `0` (Release) and wakes one waiter if the old value was 2.
//! Under `rcu_loom` waiting is a yield loop.

use crate::primitive::sync::atomic::{AtomicU32, Ordering};

/// A futex mutex with an explicit guard-free API (callers pair `lock`/`unlock`).
#[derive(Debug)]
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    /// An unlocked lock.
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
        }
    }
    /// An unlocked lock.
    #[cfg(rcu_loom)]
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
        }
    }

    /// Takes the lock if it is free. Acquire pairs with the Release in `unlock`.
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the lock, sleeping while it is held.
    #[inline]
    pub(crate) fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        // Spin a little first: the engine's critical sections are short.
        #[cfg(not(rcu_loom))]
        for _ in 0..100 {
            crate::primitive::thread::spin_hint();
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

    /// Forces the lock free. Only for the single-threaded `fork()` child, where the holder (another
    /// thread of the parent) does not exist. Async-signal-safe.
    pub(crate) fn reset_after_fork(&self) {
        self.state.store(0, Ordering::Relaxed);
    }
}

#[cfg(all(target_os = "linux", not(rcu_loom)))]
fn wait(state: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 that lives as long as the lock; a spurious return
    // is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

#[cfg(all(target_os = "linux", not(rcu_loom)))]
fn wake_one(state: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

#[cfg(not(all(target_os = "linux", not(rcu_loom))))]
fn wait(state: &AtomicU32, expected: u32) {
    while state.load(Ordering::Relaxed) == expected {
        crate::primitive::thread::yield_now();
    }
}

#[cfg(not(all(target_os = "linux", not(rcu_loom))))]
fn wake_one(_state: &AtomicU32) {}
