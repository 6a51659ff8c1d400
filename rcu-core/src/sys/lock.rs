//! The engine's locks and futex helpers.
//!
//! # Implementation
//!
//! `std::sync::Mutex` cannot be unlocked by a thread that does not hold its guard, and a child of
//! `fork()` inherits locks held by threads that no longer exist. The engine's locks are therefore
//! [`SpinLock`]s, which the atfork child handler may reset. None of them is ever held across a
//! wait for readers except the grace-period lock, which is only ever *try*-locked: callers that do
//! not get it sleep on a futex word (`futex_wait`) that the holder bumps and broadcasts
//! (`futex_wake_all`) when it lets go. Under `rcu_loom` waiting is a yield loop.

use crate::primitive::sync::atomic::{AtomicU32, Ordering};

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

#[cfg(not(all(target_os = "linux", not(rcu_loom))))]
fn wait(state: &AtomicU32, expected: u32) {
    while state.load(Ordering::Relaxed) == expected {
        crate::primitive::thread::yield_now();
    }
}

/// Sleeps while `word == expected` (a spurious return is possible; callers re-check). Under
/// `rcu_loom` (or off Linux) a yield loop.
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    wait(word, expected)
}

/// Wakes every thread sleeping in [`futex_wait`] on `word`.
pub fn futex_wake_all(word: &AtomicU32) {
    futex_wake(word, i32::MAX)
}

/// Wakes up to `n` threads sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    #[cfg(all(target_os = "linux", not(rcu_loom)))]
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
    #[cfg(not(all(target_os = "linux", not(rcu_loom))))]
    let _ = (word, n);
}

/// A spin lock whose unlock is a plain Release store (no second read-modify-write): for short
/// critical sections on paths where one atomic RMW per operation matters (`call_rcu`). Waiters
/// spin, then yield, then sleep briefly; the `fork()` child may reset it.
#[derive(Debug)]
pub(crate) struct SpinLock {
    locked: crate::primitive::sync::atomic::AtomicBool,
}

impl SpinLock {
    /// An unlocked lock.
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new() -> Self {
        SpinLock {
            locked: crate::primitive::sync::atomic::AtomicBool::new(false),
        }
    }
    /// An unlocked lock.
    #[cfg(rcu_loom)]
    pub(crate) fn new() -> Self {
        SpinLock {
            locked: crate::primitive::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes the lock if free. Acquire pairs with the Release in `unlock`.
    #[inline(always)]
    pub(crate) fn try_lock(&self) -> bool {
        !self.locked.load(Ordering::Relaxed)
            && self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes the lock, waiting while it is held.
    pub(crate) fn lock(&self) {
        let mut i = 0u32;
        while !self.try_lock() {
            #[cfg(not(rcu_loom))]
            {
                if i < 64 {
                    core::hint::spin_loop();
                } else if i < 256 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            }
            #[cfg(rcu_loom)]
            crate::primitive::thread::yield_now();
            i = i.saturating_add(1);
        }
    }

    /// Releases the lock (Release pairs with the next Acquire).
    #[inline(always)]
    pub(crate) fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Whether the lock is held right now (a racy hint).
    #[inline]
    pub(crate) fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    /// Forces the lock free in a `fork()` child.
    #[cfg(not(rcu_loom))]
    pub(crate) fn reset_after_fork(&self) {
        self.locked.store(false, Ordering::Relaxed);
    }
}
