//! The page layer: every page the kit uses comes from here.
//!
//! Pages are mapped from the OS with `mmap` and given back with `munmap`, so memory released too
//! early faults instead of hiding. The layer accounts the bytes it has handed out and honours a
//! process-wide budget set with [`set_memory_limit`]. An allocation that would pass the budget, or
//! that the OS refuses (`RLIMIT_AS`, `ENOMEM`), returns `None` after the registered shrinkers
//! (see [`crate::shrink`]) ran once; it never aborts and never panics.
//!
//! # Implementation
//!
//! * **Budget**: `IN_USE` is reserved with a CAS loop *before* `mmap`, so concurrent allocations
//!   can never overshoot the limit together; a failed `mmap` gives the reservation back.
//! * **Alignment**: slabs need their base aligned to their size class (the `cache` module finds a
//!   slab header by masking an object address). An aligned run is mapped `align - PAGE_SIZE` bytes
//!   longer and the head and tail are unmapped again; only the run itself is accounted.
//! * **Reclaim**: [`alloc_pages`] may run shrinkers (never recursively on one thread: a
//!   thread-local flag marks a thread that is inside a shrinker); [`try_alloc_pages`] never does
//!   and is async-signal-safe (atomics plus the `mmap`/`munmap` system calls).
//! * **Fault injection**: each attempt first asks the `pages` point of `rcu_core::fault`
//!   (with the slab cache's name for slab refills); an injected refusal takes the path of an OS
//!   refusal and is counted in [`MemoryStats::injected_failures`].
//! * **Near the limit** (over 7/8 of it after an allocation) the shrinkers are kicked at most once
//!   per 10 ms, so pressure is relieved before allocations start failing.
//!
//! Invariants:
//! 1. `IN_USE` equals the bytes of all runs returned by the allocators and not yet passed to
//!    [`free_pages`].
//! 2. When a limit is set, `IN_USE <= limit` at every moment (reservation precedes mapping).
//!
//! ## Memory orderings
//! All counters are statistics or budget words: nothing is published through them, so they use
//! `Relaxed` (the CAS on `IN_USE` is atomic on its own; the memory itself comes from `mmap`).

use core::ptr::NonNull;
use std::cell::Cell;

use crate::primitive::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Size of one page of the page layer (the x86-64/aarch64-4K base page).
pub const PAGE_SIZE: usize = 4096;

/// `usize::MAX` = no limit.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Bytes handed out and not yet freed (Invariant 1).
static IN_USE: AtomicUsize = AtomicUsize::new(0);
/// Highest value `IN_USE` reached.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Runs handed out / given back.
static RUNS_ALLOCATED: AtomicU64 = AtomicU64::new(0);
static RUNS_FREED: AtomicU64 = AtomicU64::new(0);
/// Allocations that returned `None` (after reclaim, if any).
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// Attempts refused by the budget / by the OS (each attempt counts, retries included).
static BUDGET_REFUSALS: AtomicU64 = AtomicU64::new(0);
static OS_REFUSALS: AtomicU64 = AtomicU64::new(0);
/// Attempts refused by the `pages` fault point (`rcu_core::fault`).
static INJECTED: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds (since `EPOCH`) of the last near-limit shrinker kick.
static LAST_KICK: AtomicU64 = AtomicU64::new(0);

std::thread_local! {
    /// Set while this thread runs shrinkers, so a shrinker that allocates cannot recurse.
    static IN_RECLAIM: Cell<bool> = const { Cell::new(false) };
}

/// Why an allocation attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Budget,
    Os,
}

/// Counters of the page layer, from [`memory_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Bytes handed out by the page layer and not yet freed.
    pub bytes_in_use: usize,
    /// Bytes currently mapped by the page layer (equal to `bytes_in_use`: nothing is cached).
    pub bytes_mapped: usize,
    /// Highest `bytes_in_use` seen.
    pub peak_bytes: usize,
    /// The limit set with [`set_memory_limit`], if any.
    pub limit: Option<usize>,
    /// Page runs handed out since start.
    pub runs_allocated: u64,
    /// Page runs given back since start.
    pub runs_freed: u64,
    /// Allocations that finally returned `None`.
    pub alloc_failures: u64,
    /// Attempts the budget refused.
    pub budget_refusals: u64,
    /// Attempts the OS refused (`mmap` failed, e.g. under `RLIMIT_AS`).
    pub os_refusals: u64,
    /// Reclaim passes over the registered shrinkers.
    pub shrinker_runs: u64,
    /// Attempts refused by the `pages` fault point (`rcu_core::fault`), each handled like an
    /// OS refusal (reclaim, retry, `None`).
    pub injected_failures: u64,
}

/// Sets (`Some(bytes)`) or clears (`None`) the process-wide limit on bytes handed out by the page
/// layer. Lowering it below the current use makes later allocations fail until memory is freed,
/// and makes recycling holders give pages back (see [`over_limit`]).
pub fn set_memory_limit(limit: Option<usize>) {
    LIMIT.store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
}

/// The current limit, if any.
pub fn memory_limit() -> Option<usize> {
    match LIMIT.load(Ordering::Relaxed) {
        usize::MAX => None,
        l => Some(l),
    }
}

/// Whether more bytes are handed out than the current limit allows (the limit was lowered below
/// the use). Holders of recyclable pages (kfree-batch's page caches) give pages back instead of
/// keeping them while this holds, so lowering the limit shrinks the kit instead of only
/// stopping its growth.
pub fn over_limit() -> bool {
    IN_USE.load(Ordering::Relaxed) > LIMIT.load(Ordering::Relaxed)
}

/// A snapshot of the page layer's counters.
pub fn memory_stats() -> MemoryStats {
    let in_use = IN_USE.load(Ordering::Relaxed);
    MemoryStats {
        bytes_in_use: in_use,
        bytes_mapped: in_use,
        peak_bytes: PEAK.load(Ordering::Relaxed),
        limit: memory_limit(),
        runs_allocated: RUNS_ALLOCATED.load(Ordering::Relaxed),
        runs_freed: RUNS_FREED.load(Ordering::Relaxed),
        alloc_failures: FAILURES.load(Ordering::Relaxed),
        budget_refusals: BUDGET_REFUSALS.load(Ordering::Relaxed),
        os_refusals: OS_REFUSALS.load(Ordering::Relaxed),
        shrinker_runs: crate::shrink::runs(),
        injected_failures: INJECTED.load(Ordering::Relaxed),
    }
}

/// Maps `npages` zeroed, page-aligned pages. On failure runs the shrinkers once (unless the caller
/// is itself a shrinker) and retries; returns `None` if memory still cannot be had.
///
/// Because shrinkers may run inside this call, never call it while holding a lock that a
/// registered shrinker takes (use [`try_alloc_pages`] there).
pub fn alloc_pages(npages: usize) -> Option<NonNull<u8>> {
    alloc_pages_aligned(npages, PAGE_SIZE, true)
}

/// Like [`alloc_pages`] but never runs shrinkers and never blocks: async-signal-safe. For
/// opportunistic refills (emergency caches) that must not rob reclaim of memory.
pub fn try_alloc_pages(npages: usize) -> Option<NonNull<u8>> {
    alloc_pages_aligned(npages, PAGE_SIZE, false)
}

/// Maps `npages` pages whose base is a multiple of `align` (a power of two `>= PAGE_SIZE`).
/// `reclaim` allows running shrinkers on failure.
pub(crate) fn alloc_pages_aligned(
    npages: usize,
    align: usize,
    reclaim: bool,
) -> Option<NonNull<u8>> {
    alloc_pages_for(npages, align, reclaim, None)
}

/// [`alloc_pages_aligned`] on behalf of the slab cache named `cache` (for the `cache` filter of
/// the `pages` fault point).
pub(crate) fn alloc_pages_for(
    npages: usize,
    align: usize,
    reclaim: bool,
    cache: Option<&str>,
) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE);
    let len = npages.checked_mul(PAGE_SIZE)?;
    if len == 0 {
        return None;
    }
    let first = attempt(len, align, cache);
    let p = match first {
        Ok(p) => p,
        Err(_) if reclaim && !IN_RECLAIM.with(Cell::get) => {
            crate::shrink::reclaim();
            match attempt(len, align, cache) {
                Ok(p) => p,
                Err(_) => {
                    FAILURES.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        Err(_) => {
            FAILURES.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    if reclaim {
        maybe_kick_near_limit();
    }
    Some(p)
}

/// Gives a run back to the OS.
///
/// # Safety
/// `ptr` must have come from this module's allocators with the same `npages`, must not have
/// been freed already, and nothing may access the run afterwards (it is unmapped).
pub unsafe fn free_pages(ptr: NonNull<u8>, npages: usize) {
    let len = npages * PAGE_SIZE;
    // Under the sanitizer a later access is reported even if the address is mapped again by
    // someone else (`crate::sanitize`); nothing in normal builds.
    crate::sanitize::poison(ptr.as_ptr(), len);
    // SAFETY: by the contract, [ptr, ptr+len) is one mapping of ours that nobody uses any more.
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    debug_assert_eq!(rc, 0, "munmap of a page run failed");
    IN_USE.fetch_sub(len, Ordering::Relaxed);
    RUNS_FREED.fetch_add(1, Ordering::Relaxed);
}

/// Whether the page containing `addr` is mapped in this process (via `mincore`; async-signal-safe).
/// A diagnostic: tests use it to show that released memory really went back to the OS.
pub fn is_mapped(addr: *const u8) -> bool {
    let base = (addr as usize) & !(PAGE_SIZE - 1);
    let mut vec = 0u8;
    // SAFETY: mincore only inspects the address range and writes one byte (one page) into `vec`;
    // an unmapped range is reported as ENOMEM, never a fault.
    let rc = unsafe { libc::mincore(base as *mut libc::c_void, PAGE_SIZE, &mut vec) };
    rc == 0
}

/// One allocation attempt: refused by the `pages` fault point (handled like an OS refusal by
/// the caller: reclaim, retry, `None`), else [`map_accounted`]. The point costs one Relaxed load
/// when nothing is armed.
fn attempt(len: usize, align: usize, cache: Option<&str>) -> Result<NonNull<u8>, Refusal> {
    use rcu_core::fault::{should_fail, should_fail_cache, Point};
    let injected = match cache {
        Some(name) => should_fail_cache(Point::Pages, len, name),
        None => should_fail(Point::Pages, len),
    };
    if injected {
        INJECTED.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::Os);
    }
    map_accounted(len, align)
}

/// Reserves `len` bytes of budget and maps an aligned run.
fn map_accounted(len: usize, align: usize) -> Result<NonNull<u8>, Refusal> {
    reserve(len).inspect_err(|_| {
        BUDGET_REFUSALS.fetch_add(1, Ordering::Relaxed);
    })?;
    match map_aligned(len, align) {
        Some(p) => {
            RUNS_ALLOCATED.fetch_add(1, Ordering::Relaxed);
            // The address may have been poisoned by an earlier run's free (`crate::sanitize`).
            crate::sanitize::unpoison(p.as_ptr(), len);
            Ok(p)
        }
        None => {
            IN_USE.fetch_sub(len, Ordering::Relaxed);
            OS_REFUSALS.fetch_add(1, Ordering::Relaxed);
            Err(Refusal::Os)
        }
    }
}

/// Adds `len` to `IN_USE` unless that passes the limit (Invariant 2).
fn reserve(len: usize) -> Result<(), Refusal> {
    let limit = LIMIT.load(Ordering::Relaxed);
    let mut cur = IN_USE.load(Ordering::Relaxed);
    loop {
        let new = cur.checked_add(len).ok_or(Refusal::Budget)?;
        if new > limit {
            return Err(Refusal::Budget);
        }
        match IN_USE.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                PEAK.fetch_max(new, Ordering::Relaxed);
                return Ok(());
            }
            Err(c) => cur = c,
        }
    }
}

/// `mmap`s `len` bytes aligned to `align`, trimming the slack.
fn map_aligned(len: usize, align: usize) -> Option<NonNull<u8>> {
    let map_len = len + (align - PAGE_SIZE);
    // SAFETY: an anonymous private mapping with no address hint; the kernel picks the place.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let start = p as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = map_len - head - len;
    if head > 0 {
        // SAFETY: [start, aligned) is the unused head of the mapping just made.
        unsafe { libc::munmap(p, head) };
    }
    if tail > 0 {
        // SAFETY: [aligned+len, start+map_len) is the unused tail of the mapping just made.
        unsafe { libc::munmap((aligned + len) as *mut libc::c_void, tail) };
    }
    NonNull::new(aligned as *mut u8)
}

fn now_ns() -> u64 {
    rcu_core::raw::monotonic_ns()
}

/// Runs the shrinkers when use is above 7/8 of the limit, at most once per 10 ms.
fn maybe_kick_near_limit() {
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit == usize::MAX || IN_USE.load(Ordering::Relaxed) <= limit - limit / 8 {
        return;
    }
    if IN_RECLAIM.with(Cell::get) {
        return;
    }
    let now = now_ns();
    let last = LAST_KICK.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 10_000_000 {
        return;
    }
    if LAST_KICK
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        crate::shrink::reclaim();
    }
}

/// Marks the calling thread as "inside reclaim" for the guard's lifetime.
pub(crate) struct ReclaimGuard {
    prev: bool,
}

impl ReclaimGuard {
    pub(crate) fn enter() -> Self {
        Self {
            prev: IN_RECLAIM.with(|c| c.replace(true)),
        }
    }
}

impl Drop for ReclaimGuard {
    fn drop(&mut self) {
        let prev = self.prev;
        IN_RECLAIM.with(|c| c.set(prev));
    }
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn alloc_write_free_unmaps() {
        let p = alloc_pages(3).expect("pages");
        // SAFETY: 3 fresh pages of ours.
        unsafe {
            assert_eq!(
                *p.as_ptr().add(2 * PAGE_SIZE + 5),
                0,
                "fresh pages are zeroed"
            );
            p.as_ptr().write_bytes(0xab, 3 * PAGE_SIZE);
        }
        assert!(is_mapped(p.as_ptr()));
        // SAFETY: allocated above with 3 pages, not used afterwards.
        unsafe { free_pages(p, 3) };
        // Another thread of the test binary could map the same address again, so only the
        // counters are asserted strictly.
        let s = memory_stats();
        assert!(s.runs_freed >= 1);
    }

    #[test]
    fn aligned_runs_are_aligned() {
        for align in [PAGE_SIZE, 16 * 1024, 64 * 1024] {
            let p = alloc_pages_aligned(2, align, false).expect("pages");
            assert_eq!(p.as_ptr() as usize % align, 0);
            // SAFETY: fresh run of 2 pages.
            unsafe { free_pages(p, 2) };
        }
    }

    #[test]
    fn zero_pages_is_none() {
        assert!(alloc_pages(0).is_none());
        assert!(alloc_pages(usize::MAX / 2).is_none());
    }

    #[test]
    fn null_page_is_not_mapped() {
        assert!(!is_mapped(core::ptr::null()));
    }
}
