//! The one place atomics, fences, cells, thread-locals and thread operations come from.
//!
//! Under `--cfg rcu_loom` everything here is loom's model type, so the crate's loom models
//! (`tests/loom_*.rs`) exercise the code that ships. Outside loom it is `core`/`std`, with
//! `UnsafeCell` wrapped to offer loom's `with`/`with_mut` API.
//!
//! Rule for the crate: no file uses `std::sync::atomic`, `core::cell::UnsafeCell`,
//! `std::thread_local!` or `std::thread::{park, yield_now}` directly; they go through this module.
//!
//! rcu-core, kfree-batch and slab-backend each carry this module with the same mappings (the
//! items up to the crate's own additions at the end are the same in the three files), so a
//! model of one crate means the same thing as a model of another. Not every crate uses every
//! item.
#![allow(dead_code, unused_imports, unused_macros)]

#[cfg(not(rcu_loom))]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use core::sync::atomic::{
            compiler_fence, fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64,
            AtomicU8, AtomicUsize, Ordering,
        };
    }
}

#[cfg(rcu_loom)]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{
            fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        };

        /// Loom has no compiler fence (loom#117). A compiler fence orders nothing between
        /// threads and loom models no signal handlers, so its model is nothing; the asymmetric
        /// barrier it is the light side of is modelled where it is used (rcu-core's
        /// `sys::membarrier`).
        #[inline(always)]
        pub(crate) fn compiler_fence(order: Ordering) {
            let _ = order;
        }
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

/// Thread operations: yield, park (outside loom), and a spin hint loom understands.
pub(crate) mod thread {
    #[cfg(rcu_loom)]
    pub(crate) use loom::thread::yield_now;
    #[cfg(not(rcu_loom))]
    pub(crate) use std::thread::{park, park_timeout, yield_now};

    /// One step of a spin loop: a CPU hint outside loom, a scheduling point inside it (loom must
    /// be told that the thread waits for another one, or it explores the spin forever).
    #[inline(always)]
    pub(crate) fn spin_hint() {
        #[cfg(not(rcu_loom))]
        core::hint::spin_loop();
        #[cfg(rcu_loom)]
        loom::thread::yield_now();
    }
}

/// Declares a thread-local through the shim (`std::thread_local!` or loom's).
macro_rules! rcu_thread_local {
    ($($tt:tt)*) => {
        #[cfg(not(rcu_loom))]
        std::thread_local!($($tt)*);
        #[cfg(rcu_loom)]
        loom::thread_local!($($tt)*);
    };
}
pub(crate) use rcu_thread_local;
