//! Stall reporting: readers that hold up a grace period for too long, threads that exit inside a
//! read-side critical section (whose section stays open, see `global`), and conditions the layers
//! above report through the same hook ([`report_stall`]: kfree-batch's retire spill).
//!
//! # Implementation
//!
//! A reader's fast path cannot read a clock, so stalls are detected by the waiter: when a grace
//! period has waited for one reader longer than the stall timeout, a [`StallReport`] goes to the
//! hook (default: one line on stderr), and again each time the wait doubles. The reported duration
//! is how long the grace period has waited for that reader, a lower bound of the section's length.
//!
//! Reports are built and printed without allocating: they are made while memory may be short
//! (retirers fall back to waiting for grace periods exactly then). The thread name is a copy in
//! a fixed buffer ([`ThreadName`]), the default hook formats into a stack buffer and writes it
//! with `write(2)` (`lowmem::report`), and the timeout is read from the environment once, when
//! the engine initialises.
//!
//! The timeout and hook are process-wide configuration, not modelled concurrency: they use
//! `core` atomics directly (also under `rcu_loom`, where stall checks are compiled out).

use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

use crate::seq::GpSeq;

/// Default stall timeout: 10 s (the kernel uses 21 s; userspace tests want reports sooner).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Stall timeout in milliseconds; `u64::MAX` = not yet read from the environment.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(u64::MAX);
/// The hook, a `fn(&StallReport)` stored as a pointer (never an integer: it keeps its
/// provenance); null = the default stderr printer.
static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// What a [`StallReport`] is about. More kinds may be added: match with a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StallKind {
    /// A grace period has been waiting for this reader for `duration`.
    ReaderStall,
    /// The thread exited while inside a read-side critical section (a guard leaked, or kept in a
    /// thread-local destroyed after the engine's exit hook). Its section stays open: grace
    /// periods wait for it until that guard is dropped, forever if it never is (references read
    /// under it may still be in use). Reported once, at the exit.
    ExitedInCriticalSection,
    /// A layer built on the engine (kfree-batch's `kfree_rcu`) retired more objects inside one
    /// read-side critical section than its own reserved memory holds while no batching memory
    /// could be had, and kept the rest in memory from the system allocator until the section's
    /// grace period ends. Legal RCU, reported once per process as a sign of memory pressure (or
    /// of a reader elsewhere holding grace periods up).
    RetireSpilled,
}

/// A thread's name as recorded for stall reports: up to 32 bytes (cut at a character
/// boundary), stored inline so that a report is made without allocating. Dereferences to `str`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ThreadName {
    bytes: [u8; ThreadName::MAX],
    len: u8,
}

impl ThreadName {
    /// Longest name kept, in bytes.
    pub const MAX: usize = 32;

    /// Copies `name`, cut to [`ThreadName::MAX`] bytes at a character boundary.
    pub fn new(name: &str) -> ThreadName {
        let mut len = name.len().min(Self::MAX);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; Self::MAX];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        ThreadName {
            bytes,
            len: len as u8,
        }
    }

    /// Takes the longest valid UTF-8 prefix of `raw` (up to [`ThreadName::MAX`] bytes).
    pub(crate) fn from_utf8_prefix(raw: &[u8]) -> ThreadName {
        let raw = &raw[..raw.len().min(Self::MAX)];
        ThreadName::new(match core::str::from_utf8(raw) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default(),
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Only whole characters of a `str` are copied in (`new`).
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl core::ops::Deref for ThreadName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl core::fmt::Display for ThreadName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::fmt::Debug for ThreadName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for ThreadName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ThreadName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One stall report, passed to the hook set with [`set_stall_hook`].
#[derive(Clone, Debug)]
pub struct StallReport {
    /// What happened.
    pub kind: StallKind,
    /// The reader thread's name, empty if it had none.
    pub thread_name: ThreadName,
    /// The reader's kernel thread id (0 if unknown).
    pub tid: u32,
    /// How long the grace period has waited for this reader so far (zero for exits).
    pub duration: Duration,
    /// The grace period that is waiting (for exits: the sequence at exit).
    pub gp: GpSeq,
    /// Nesting depth of the reader when observed.
    pub nesting: u64,
}

impl core::fmt::Display for StallReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = if self.thread_name.is_empty() {
            "<unnamed>"
        } else {
            self.thread_name.as_str()
        };
        match self.kind {
            StallKind::ReaderStall => write!(
                f,
                "rcu: INFO: rcu stall: thread '{}' (tid {}) has been inside a read-side critical \
                 section for at least {:.3?} (nesting {}), blocking grace period {:?}",
                name, self.tid, self.duration, self.nesting, self.gp
            ),
            StallKind::ExitedInCriticalSection => write!(
                f,
                "rcu: BUG: thread '{}' (tid {}) exited inside a read-side critical section \
                 (nesting {}, a read guard was leaked or outlives the thread's exit); grace \
                 periods wait for that section until its guard is dropped",
                name, self.tid, self.nesting
            ),
            StallKind::RetireSpilled => write!(
                f,
                "rcu: WARNING: thread '{}' (tid {}) retired objects inside a read-side critical \
                 section beyond its reserved memory while no batching memory could be had; they \
                 are kept in system-allocator memory until the grace period (reported once)",
                name, self.tid
            ),
        }
    }
}

/// Sets how long a grace period waits for one reader before reporting a stall.
/// The default is [`DEFAULT_STALL_TIMEOUT`], or `RCU_KIT_STALL_MS` from the environment.
pub fn set_stall_timeout(timeout: Duration) {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX - 1)
        .min(u64::MAX - 1);
    TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// The stall timeout in force.
pub fn stall_timeout() -> Duration {
    let ms = TIMEOUT_MS.load(Ordering::Relaxed);
    if ms != u64::MAX {
        return Duration::from_millis(ms);
    }
    let from_env = std::env::var("RCU_KIT_STALL_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|v| v.min(u64::MAX - 1))
        .unwrap_or(DEFAULT_STALL_TIMEOUT.as_millis() as u64);
    // A racing `set_stall_timeout` wins: only replace the "unset" marker.
    let _ = TIMEOUT_MS.compare_exchange(u64::MAX, from_env, Ordering::Relaxed, Ordering::Relaxed);
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Replaces the stall hook; `None` restores the default (one line on stderr).
///
/// The hook runs on the thread that waits for the grace period (a `synchronize_rcu` caller or the
/// callback worker); it must not wait for a grace period itself. It may run while memory is
/// short: a hook that allocates may then abort the process (the default one does not allocate).
/// [`StallReport`]'s `Display` does not allocate.
pub fn set_stall_hook(hook: Option<fn(&StallReport)>) {
    HOOK.store(
        hook.map_or(core::ptr::null_mut(), |f| f as *mut ()),
        Ordering::Release,
    );
}

/// Delivers `r` to the stall hook (the default prints it on stderr). For layers built on the
/// engine that report their own conditions ([`StallKind::RetireSpilled`]); the hook runs on the
/// caller's thread, possibly inside a read-side critical section.
pub fn report_stall(r: &StallReport) {
    report(r)
}

/// Delivers a report to the hook.
pub(crate) fn report(r: &StallReport) {
    // Acquire pairs with the Release in `set_stall_hook` (the fn address is code, but keep the
    // hand-off explicit).
    let h = HOOK.load(Ordering::Acquire);
    if h.is_null() {
        // Without allocating (module docs): `eprintln!` would not allocate either, but a test
        // harness's output capture does.
        crate::lowmem::report(format_args!("{r}"));
    } else {
        // SAFETY: non-null values are only ever stored from a `fn(&StallReport)` in
        // `set_stall_hook` (function pointers are never null), as a pointer: transmuting it back
        // (same size) keeps the function pointer's provenance.
        let f: fn(&StallReport) = unsafe { core::mem::transmute::<*mut (), fn(&StallReport)>(h) };
        f(r);
    }
}
