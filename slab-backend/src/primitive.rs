//! The one place atomics, fences and cells come from.
//!
//! Under `--cfg rcu_loom` these are loom's model types, so the loom model in `tests/loom_sheaf.rs`
//! exercises the per-CPU sheaf and barn code that ships. Outside loom they are `core`/`std`, with
//! `UnsafeCell` wrapped to offer loom's `with`/`with_mut` API.
//!
//! Rule for the crate: no file uses `std::sync::atomic` or `core::cell::UnsafeCell` directly; they
//! go through this module. Process-wide statics (page counters, the cache registry) only exist
//! outside loom (`page`, `cache::mod` and friends are `cfg(not(rcu_loom))`), because loom atomics
//! cannot live in statics.

#[cfg(not(rcu_loom))]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use core::sync::atomic::{
            compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8,
            AtomicUsize, Ordering,
        };
    }
}

#[cfg(rcu_loom)]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{
            AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        };
    }
}

#[cfg(not(rcu_loom))]
pub(crate) mod cell {
    /// `core::cell::UnsafeCell` with loom's closure API.
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// Wraps `v`.
        #[inline(always)]
        pub(crate) const fn new(v: T) -> Self {
            Self(core::cell::UnsafeCell::new(v))
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Runs `f` with a shared raw pointer to the contents.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        /// Runs `f` with a mutable raw pointer to the contents.
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

/// Thread operations: a spin hint that loom understands.
pub(crate) mod thread {
    /// One step of a spin loop: a CPU hint outside loom, a scheduling point inside it.
    #[inline(always)]
    pub(crate) fn spin_hint() {
        #[cfg(not(rcu_loom))]
        core::hint::spin_loop();
        #[cfg(rcu_loom)]
        loom::thread::yield_now();
    }

    /// Gives the CPU away (a scheduling point under loom).
    #[inline(always)]
    pub(crate) fn yield_now() {
        #[cfg(not(rcu_loom))]
        std::thread::yield_now();
        #[cfg(rcu_loom)]
        loom::thread::yield_now();
    }
}
