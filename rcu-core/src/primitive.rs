//! The one place atomics, fences, cells, thread-locals and thread operations come from.
//!
//! Under `--cfg rcu_loom` everything here is loom's model type, so the loom models in
//! `tests/loom_*.rs` exercise the same reader/grace-period/callback code that ships. Outside loom it
//! is `core`/`std`, with `UnsafeCell` wrapped to offer loom's `with`/`with_mut` API.
//!
//! Rule for the crate: no file uses `std::sync::atomic`, `core::cell::UnsafeCell`,
//! `std::thread_local!` or `std::thread::{park, yield_now}` directly; they go through this module.

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
        // No `compiler_fence`: loom has none (loom#117), and its one user, membarrier mode's
        // light barrier, is modelled in `sys::membarrier`.
        pub(crate) use loom::sync::atomic::{
            fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
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

/// Thread operations the engine uses (yield while spinning, park/unpark of its worker).
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
#[cfg_attr(rcu_loom, allow(unused_macros))]
macro_rules! rcu_thread_local {
    ($($tt:tt)*) => {
        #[cfg(not(rcu_loom))]
        std::thread_local!($($tt)*);
        #[cfg(rcu_loom)]
        loom::thread_local!($($tt)*);
    };
}
#[cfg_attr(rcu_loom, allow(unused_imports))]
pub(crate) use rcu_thread_local;
