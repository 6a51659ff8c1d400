//! The one place atomics, cells and thread operations come from (std normally, loom under
//! `--cfg rcu_loom`), so the loom model of the block hand-off runs the shipped code.

#[cfg(not(rcu_loom))]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use core::sync::atomic::{
            fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        };
    }
}

#[cfg(rcu_loom)]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{
            fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
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

/// Release store to a `u32` that is otherwise a plain field (a block's `count`): every write the
/// thread made before it is stored first, in program order and on the hardware (`chan.rs`,
/// Memory orderings: a `fork()` child sees a prefix of another thread's stores). Under loom,
/// which models no fork and tracks no plain memory, a plain store.
///
/// # Safety
/// `p` is valid for writes and aligned, and no other thread accesses `*p` concurrently without
/// synchronisation (as for a plain store; atomic and plain accesses are never concurrent).
#[inline(always)]
pub(crate) unsafe fn store_release_u32(p: *mut u32, v: u32) {
    #[cfg(not(rcu_loom))]
    // SAFETY: forwarded contract; `AtomicU32` has `u32`'s size and alignment, and no plain
    // access is concurrent with this one.
    unsafe {
        core::sync::atomic::AtomicU32::from_ptr(p).store(v, core::sync::atomic::Ordering::Release)
    };
    #[cfg(rcu_loom)]
    // SAFETY: forwarded contract.
    unsafe {
        p.write(v)
    };
}

/// Acquire load of a `u32` stored with [`store_release_u32`] (a collector's read of `count`,
/// before it reads the pointers below it). Under loom a plain load.
///
/// # Safety
/// `p` is valid for reads and aligned, and no other thread writes `*p` concurrently.
#[inline(always)]
pub(crate) unsafe fn load_acquire_u32(p: *const u32) -> u32 {
    #[cfg(not(rcu_loom))]
    // SAFETY: forwarded contract, as in `store_release_u32`.
    unsafe {
        core::sync::atomic::AtomicU32::from_ptr(p.cast_mut())
            .load(core::sync::atomic::Ordering::Acquire)
    }
    #[cfg(rcu_loom)]
    // SAFETY: forwarded contract.
    unsafe {
        p.read()
    }
}

/// One step of a wait loop: spin, then yield, then sleep (a collector may hold a lock across a
/// grace period, and there may be fewer cores than waiting threads) outside loom; a scheduling
/// point inside it.
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
