//! Small layout helpers.

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
