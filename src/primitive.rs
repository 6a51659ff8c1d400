//! The one place the facade's atomics come from (the member crates have their own shims, which
//! swap in loom's types for their models; the facade's data structures are tested with real
//! threads, so this is `core` only).
//!
//! Rule for the crate: new code takes atomics from here, not from `core::sync::atomic`.

pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use core::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    }
}
