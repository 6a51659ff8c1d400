//! Small layout helpers and the kit's monotonic clock.

use core::ops::{Deref, DerefMut};

/// Pads and aligns a value to 128 bytes (two cache lines: the adjacent-line prefetcher on x86
/// pulls pairs), so that fields written by different threads never share a line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct CachePadded<T>(pub T);

impl<T> CachePadded<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        CachePadded(value)
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for CachePadded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Nanoseconds since the first call in this process (monotonic): the one clock the kit's
/// background machinery uses for delays and back-offs (`rcu_core::raw::monotonic_ns`).
pub fn monotonic_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}
