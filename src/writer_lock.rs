//! The writer mutex of [`RcuList`](crate::RcuList) and [`RcuHashMap`](crate::map::RcuHashMap):
//! a `std::sync::Mutex` that knows which thread holds it, and a per-thread count of such locks.
//!
//! # Implementation
//!
//! 1. **Re-entrancy.** User code runs under a writer lock (a list predicate, a map key's `Eq` or
//!    `Clone`, a held `ListWriter`). If it calls back into the same structure's writer, a plain
//!    mutex deadlocks silently. [`WriterLock::lock`] compares `holder` with the calling thread's
//!    id first and panics with the structure's message instead.
//! 2. **Waiting under a writer lock.** A reader may wait for the writer lock inside its read-side
//!    critical section (it may call `push_back` or `insert`). A thread that holds a writer lock
//!    and waits for a grace period would wait for that reader forever. The per-thread count
//!    ([`holds_a_writer_lock`]) lets `Retired::synchronize` panic there and lets retiring run
//!    as inside a reader (no inline destructor, no wait).
//! 3. `holder` is written only by the thread that holds the mutex (its id on lock, 0 before the
//!    unlock) and compared only with the reader's own id, so a stale value can never equal it:
//!    Relaxed is enough. The guard is not `Send` (it holds a `MutexGuard`), so the count is
//!    decremented on the thread that incremented it.
//! 4. **A lock the caller provides.** A list made with
//!    [`RcuList::with_writer_token`](crate::RcuList::with_writer_token) has no mutex of its own
//!    in use: its writers are serialised by `&mut` access to its token, which the caller keeps
//!    behind a lock of its own. A writer made from the token counts as held for the thread
//!    ([`HeldMark`]) exactly like a locked one while it lives, so 2 holds for it too. The
//!    caller's lock itself is out of sight: holding it with no such writer alive counts for
//!    nothing, and not waiting under it is the caller's part (`ListWriterToken` docs).

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

use crate::primitive::sync::atomic::{AtomicUsize, Ordering};

std::thread_local!(
    /// How many writer locks (of any list or map) the calling thread holds.
    static WRITERS_HELD: core::cell::Cell<usize> = const { core::cell::Cell::new(0) }
);

/// Whether the calling thread holds the writer lock of some list or map (Implementation, 2).
pub(crate) fn holds_a_writer_lock() -> bool {
    WRITERS_HELD.with(|n| n.get() != 0)
}

/// Counts one writer as held by the calling thread while it lives (Implementation, 4); not
/// `Send`, so the count is decremented on the thread that incremented it.
pub(crate) struct HeldMark {
    _not_send: PhantomData<*const ()>,
}

impl HeldMark {
    pub(crate) fn new() -> Self {
        WRITERS_HELD.with(|n| n.set(n.get() + 1));
        HeldMark {
            _not_send: PhantomData,
        }
    }
}

impl Drop for HeldMark {
    fn drop(&mut self) {
        WRITERS_HELD.with(|n| n.set(n.get() - 1));
    }
}

/// A non-zero number unique to the calling thread while it lives.
fn thread_id() -> usize {
    std::thread_local!(static ID: u8 = const { 0 });
    ID.with(|b| b as *const u8 as usize)
}

/// A mutex over `S` that panics instead of deadlocking when its holder locks it again.
pub(crate) struct WriterLock<S> {
    state: Mutex<S>,
    /// The holder's `thread_id()`, 0 when none (Implementation, 3).
    holder: AtomicUsize,
}

impl<S> WriterLock<S> {
    pub(crate) const fn new(state: S) -> Self {
        WriterLock {
            state: Mutex::new(state),
            holder: AtomicUsize::new(0),
        }
    }

    /// Locks, counting the lock for the calling thread.
    ///
    /// # Panics
    /// With `reentered` when the calling thread already holds this lock.
    #[track_caller]
    pub(crate) fn lock(&self, reentered: &'static str) -> WriterGuard<'_, S> {
        let me = thread_id();
        // Relaxed: Implementation, 3.
        if self.holder.load(Ordering::Relaxed) == me {
            panic!("{reentered}");
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: Implementation, 3.
        self.holder.store(me, Ordering::Relaxed);
        WRITERS_HELD.with(|n| n.set(n.get() + 1));
        WriterGuard {
            holder: &self.holder,
            state,
        }
    }
}

/// The lock held; derefs to the state.
pub(crate) struct WriterGuard<'a, S> {
    holder: &'a AtomicUsize,
    state: MutexGuard<'a, S>,
}

impl<S> Drop for WriterGuard<'_, S> {
    fn drop(&mut self) {
        // Before the mutex guard (a field, dropped after this) unlocks. Relaxed: Implementation, 3.
        self.holder.store(0, Ordering::Relaxed);
        WRITERS_HELD.with(|n| n.set(n.get() - 1));
    }
}

impl<S> Deref for WriterGuard<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> DerefMut for WriterGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}
