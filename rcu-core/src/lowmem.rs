//! Helpers for the kit's paths that may run when the process is out of memory: starting a
//! background thread, and reporting a failure on stderr.
//!
//! # Implementation
//!
//! Rust's global allocation functions abort the process when an infallible allocation
//! (`Box::new`, `String::from`, `format!`, a `Vec` growing) fails, and the kit's fallbacks run
//! exactly when memory is short: a page mapping was refused, a thread could not be created, a
//! grace period waits for a stalled reader while retirers fall back to it. On those paths:
//!
//! 1. Messages are formatted into a fixed buffer on the stack ([`StackBuf`], truncating) and
//!    written with `write(2)` ([`report`]); never through `format!`, never through an
//!    `io::Error`'s `Display` (it allocates the `strerror` text: [`OsError`] formats it into a
//!    stack buffer).
//! 2. A background thread is started by [`spawn`], which fails softly (an
//!    [`std::io::ErrorKind::OutOfMemory`] error, nothing started) unless the calling thread can
//!    allocate [`SPAWN_HEADROOM`] bytes first. `std::thread::Builder::spawn` only reports the
//!    OS-side failure (no stack) as an error; its own allocations (the name, the thread handle,
//!    the result packet, the boxed closure) and the new thread's first ones (its reader record,
//!    its thread-local destructor list) abort. The probe block is freed right before the spawn,
//!    so the allocator has that much free in the calling thread's arena for them. This is a
//!    heuristic, not a reservation: another thread may take the memory in between, but with it
//!    the common case (the heap exhausted before the start) fails softly instead of aborting.
//!    The name is copied into a `String` reserved fallibly.

use core::fmt::{self, Write as _};
use std::io;
use std::thread::JoinHandle;

/// Bytes the calling thread must be able to allocate before [`spawn`] starts a thread. Below
/// glibc's default mmap threshold (128 KiB), so that the probe comes from (and goes back to) the
/// arena the spawn's own allocations use.
pub const SPAWN_HEADROOM: usize = 64 << 10;

/// A fixed-size buffer on the stack that [`core::fmt::Write`] fills, silently truncating (at a
/// character boundary) what does not fit.
#[derive(Debug)]
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Something was cut: later pieces are dropped too (no text after a gap).
    cut: bool,
}

impl<const N: usize> StackBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
            cut: false,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole characters are copied in (`write_str`).
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            return Ok(());
        }
        let mut n = s.len().min(N - self.len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        self.cut = n < s.len();
        Ok(()) // truncation is not an error: the message is diagnostic
    }
}

/// Writes one line (`args` and a newline) to stderr without allocating: formatted into a
/// 512-byte stack buffer (longer text is cut) and written with `write(2)`. Errors are ignored.
pub fn report(args: fmt::Arguments<'_>) {
    let mut b = StackBuf::<512>::new();
    let _ = b.write_fmt(args);
    if b.len == b.buf.len() {
        b.len -= 1;
    }
    b.buf[b.len] = b'\n';
    b.len += 1;
    write_stderr(b.as_bytes());
}

fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid readable slice; fd 2 is only written.
        let r = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if r == 0 {
            return;
        }
        bytes = &bytes[r as usize..];
    }
}

/// Displays an `io::Error` without allocating: an OS error as its `strerror` text (formatted
/// into a stack buffer) and code, anything else as its kind. (`io::Error`'s own `Display`
/// allocates the text of an OS error.)
#[derive(Debug)]
pub struct OsError<'a>(pub &'a io::Error);

impl fmt::Display for OsError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(code) = self.0.raw_os_error() else {
            return write!(f, "{}", self.0.kind());
        };
        let mut buf = [0u8; 128];
        // SAFETY: strerror_r (the XSI version, which the libc crate binds on Linux) writes at
        // most `buf.len()` bytes including the terminating NUL into `buf`.
        let r = unsafe { libc::strerror_r(code, buf.as_mut_ptr().cast(), buf.len()) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
        match core::str::from_utf8(&buf[..end]) {
            Ok(text) if r == 0 && !text.is_empty() => write!(f, "{text} (os error {code})"),
            _ => write!(f, "os error {code}"),
        }
    }
}

/// Whether the calling thread can allocate `bytes` now (allocated and freed at once; never
/// aborts).
///
/// The probe is at least [`MIN_PROBE`] bytes: glibc keeps freed chunks of up to 1032 bytes in a
/// per-thread cache that serves only requests of the same size class, so a small probe can succeed
/// from a chunk that no other request (the C library's own small allocations that follow, such
/// as its record of a thread-local destructor) could use. A larger probe comes from the shared
/// bins or the top of the heap, and its chunk, freed, can be split for a request of any size.
pub fn heap_headroom(bytes: usize) -> bool {
    let Ok(layout) = std::alloc::Layout::from_size_align(bytes.max(MIN_PROBE), 16) else {
        return false;
    };
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        return false;
    }
    // SAFETY: `p` was allocated just above with `layout`.
    unsafe { std::alloc::dealloc(p, layout) };
    true
}

/// Smallest probe of [`heap_headroom`]: above glibc's per-thread cache and fast bins.
pub const MIN_PROBE: usize = 4096;

/// Starts a named thread running `f`, failing softly when memory is short (module docs, point
/// 2): an `OutOfMemory` error if [`SPAWN_HEADROOM`] bytes cannot be had or the name cannot be
/// copied, the OS error if the thread cannot be created.
pub fn spawn<F>(name: fmt::Arguments<'_>, f: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let mut text = StackBuf::<64>::new();
    let _ = text.write_fmt(name);
    if !heap_headroom(SPAWN_HEADROOM) {
        return Err(io::ErrorKind::OutOfMemory.into());
    }
    let mut owned = String::new();
    if owned.try_reserve_exact(text.len).is_err() {
        return Err(io::ErrorKind::OutOfMemory.into());
    }
    owned.push_str(text.as_str());
    std::thread::Builder::new().name(owned).spawn(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_buf_truncates_at_a_char_boundary() {
        let mut b = StackBuf::<5>::new();
        b.write_str("ab").unwrap();
        b.write_str("é€x").unwrap();
        b.write_str("y").unwrap(); // dropped: text after a cut would read as if contiguous
        assert_eq!(b.as_str(), "abé");
    }

    #[test]
    fn os_error_text() {
        let e = io::Error::from_raw_os_error(libc::EAGAIN);
        let mut b = StackBuf::<128>::new();
        write!(b, "{}", OsError(&e)).unwrap();
        assert_eq!(b.as_str(), e.to_string());
        let e: io::Error = io::ErrorKind::OutOfMemory.into();
        let mut b = StackBuf::<128>::new();
        write!(b, "{}", OsError(&e)).unwrap();
        assert_eq!(b.as_str(), "out of memory");
    }
}
