//! State shared by the threads of one mode's run, and error accounting.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rcu_kit::rcu_core::CachePadded;
use rcu_kit::{KmemCache, RcuReadGuard};

use super::cli::{Mode, Opts};
use super::elem::Elem;

/// Kinds of errors; any of them fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrKind {
    /// A reader saw an age above 1: a grace period completed while it held the element.
    Age,
    /// A reader saw a destroyed element (dead identity or poisoned memory).
    Freed,
    /// A reader saw its element's identity slot taken by a newer identity.
    Recycled,
    /// Bad magic or integrity word: memory that is not (or no longer) an initialised element.
    Corrupt,
    /// `rcu_barrier` / `kvfree_rcu_barrier` returned before an earlier callback or free ran.
    Barrier,
}

impl ErrKind {
    const ALL: [ErrKind; 5] = [
        ErrKind::Age,
        ErrKind::Freed,
        ErrKind::Recycled,
        ErrKind::Corrupt,
        ErrKind::Barrier,
    ];

    /// Short name for reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrKind::Age => "age>1",
            ErrKind::Freed => "freed-under-reader",
            ErrKind::Recycled => "recycled-under-reader",
            ErrKind::Corrupt => "corrupt",
            ErrKind::Barrier => "barrier-early",
        }
    }
}

/// Error counters of a run.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    counts: [AtomicU64; 5],
    printed: AtomicU64,
}

/// Detailed error lines printed per run (the rest are only counted).
const PRINT_LIMIT: u64 = 12;

impl Errors {
    /// Counts an error; prints its details for the first few.
    pub(crate) fn report(&self, kind: ErrKind, detail: std::fmt::Arguments<'_>) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        if self.printed.fetch_add(1, Ordering::Relaxed) < PRINT_LIMIT {
            let t = std::thread::current();
            eprintln!(
                "rcutorture: ERROR {} in {}: {detail}",
                kind.name(),
                t.name().unwrap_or("?")
            );
        }
    }

    /// Total so far.
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// `(kind, count)` for every kind.
    pub(crate) fn by_kind(&self) -> Vec<(ErrKind, u64)> {
        ErrKind::ALL
            .iter()
            .map(|&k| (k, self.counts[k as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Everything the threads of one run share.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The mode under test.
    pub(crate) mode: Mode,
    /// The options.
    pub(crate) opts: Opts,
    /// Published elements; never null while readers run.
    pub(crate) cells: Box<[AtomicPtr<Elem>]>,
    /// The typesafe cache (typesafe mode).
    pub(crate) cache: Option<Arc<KmemCache<Elem>>>,
    /// Set to end the run.
    pub(crate) stop: AtomicBool,
    /// Read-side critical sections completed, per reader.
    pub(crate) reads: Box<[CachePadded<AtomicU64>]>,
    /// Updates, per writer.
    pub(crate) updates: Box<[CachePadded<AtomicU64>]>,
    /// Errors.
    pub(crate) errors: Errors,
    /// Typesafe readers that found their object reused for another identity (correctly caught).
    pub(crate) reuse_caught: AtomicU64,
    /// Element allocations that failed (no memory) and were retried.
    pub(crate) alloc_failures: AtomicU64,
    /// Times a writer found every identity in use and waited for retired ones to be freed.
    pub(crate) pool_waits: AtomicU64,
    /// Barrier checks done.
    pub(crate) barrier_checks: AtomicU64,
    /// Long reader stalls injected.
    pub(crate) stalls_injected: AtomicU64,
    /// Start of the run.
    pub(crate) start: Instant,
}

impl Ctx {
    /// Whether retired elements are destroyed before their grace period (broken build).
    #[inline]
    pub(crate) fn broken(&self) -> bool {
        super::cli::BROKEN_AVAILABLE && self.opts.broken
    }

    /// The element published in cell `c`, valid for the guard's lifetime.
    #[inline]
    pub(crate) fn load<'g>(&self, c: usize, _guard: &'g RcuReadGuard) -> &'g Elem {
        // Acquire pairs with the writers' AcqRel swap: the element's fields (and its identity's
        // table word) written before publication are visible.
        let p = self.cells[c].load(Ordering::Acquire);
        assert!(!p.is_null(), "cells are never empty while readers run");
        // SAFETY: `p` was published in a cell and we are inside a read-side critical section
        // (the guard lives for 'g). Boxed elements are freed only after a grace period that
        // began after they were unpublished (every mode, the broken build included: it destroys
        // early but frees after the grace period), so they stay allocated until the guard
        // drops; typesafe cache objects stay valid `Elem`s of the cache until then (the cache's
        // SLAB_TYPESAFE_BY_RCU guarantee). All fields are atomics, so concurrent updates are
        // not data races.
        unsafe { &*p }
    }

    /// Seconds since the start, for messages.
    pub(crate) fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
