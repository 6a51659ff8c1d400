//! The one place atomics, cells and thread operations come from (std normally, loom under
//! `--cfg rcu_loom`), so the loom model of the block hand-off runs the shipped code.

#[cfg(not(rcu_loom))]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use core::sync::atomic::{
            AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        };
    }
}

#[cfg(rcu_loom)]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{
            AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        };
    }
}

#[cfg(not(rcu_loom))]
pub(crate) mod cell {
    /// `core::cell::UnsafeCell` with loom's closure API.
    #[derive(Debug, Default)]
    pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);
    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(v: T) -> Self {
            Self(core::cell::UnsafeCell::new(v))
        }
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(rcu_loom)]
pub(crate) mod cell {
    pub(crate) use loom::cell::UnsafeCell;
}

/// One step of a wait loop: spin, then yield, then sleep (a collector may hold a lock across a
/// grace period, and this machine has two cores) outside loom; a scheduling point inside it.
#[inline]
pub(crate) fn spin_wait(iter: u32) {
    #[cfg(not(rcu_loom))]
    {
        if iter < 64 {
            core::hint::spin_loop();
        } else if iter < 256 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
    #[cfg(rcu_loom)]
    {
        let _ = iter;
        loom::thread::yield_now();
    }
}
