//! Process-wide state every part of the engine shares: the domain, the callback lists, the count
//! of invoked callbacks, and the per-thread marks the misuse checks read (callback thread,
//! no-barrier scope). Nothing here starts a thread or installs a handler; the modules above use
//! it (`super` module docs, "Modules").

use core::cell::Cell;
use core::marker::PhantomData;
use std::sync::OnceLock;

use crate::callback::CbList;
use crate::gp::Domain;
use crate::primitive::rcu_thread_local;
use crate::primitive::sync::atomic::AtomicU64;
use crate::util::CachePadded;

/// The global domain.
pub(super) static DOMAIN: Domain = Domain::new_const();
/// Per-CPU callback lists (allocated once, never freed: lock-free paths reach them).
pub(super) static LISTS: OnceLock<Box<[CachePadded<CbList>]>> = OnceLock::new();
/// Callbacks invoked (statistics; queued counts live in the lists).
pub(super) static INVOKED: AtomicU64 = AtomicU64::new(0);

rcu_thread_local! {
    /// Set while the worker runs callbacks (misuse check for `rcu_barrier` in a callback).
    pub(super) static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

rcu_thread_local! {
    /// Why `rcu_barrier` may not wait on this thread now (the innermost [`NoBarrierScope`]), or
    /// `None` outside every such scope.
    static NO_BARRIER: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// A scope of the calling thread in which no `call_rcu` callback may be waited for: see
/// [`enter_no_barrier`]. Ends when dropped (also by an unwind); not `Send`.
#[must_use = "the scope ends when the value is dropped"]
#[derive(Debug)]
pub struct NoBarrierScope {
    prev: Option<&'static str>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NoBarrierScope {
    fn drop(&mut self) {
        NO_BARRIER.with(|c| c.set(self.prev));
    }
}

/// Declares that, until the returned scope is dropped, the calling thread runs code that a
/// `call_rcu` callback may be waiting for (a layer above holds a lock, or runs a free, that a
/// callback may need). `rcu_barrier` would wait for that callback, and the callback for the caller:
/// so inside the scope [`may_block`](crate::may_block) returns false (code that would call
/// `rcu_barrier` defers the work to another thread) and [`rcu_barrier`](crate::rcu_barrier) panics,
/// with `why` in its message (written to follow "called", e.g. "from a destructor run by X"). Grace
/// periods may still be waited for: `synchronize_rcu` waits for readers, never for callbacks.
/// Scopes nest; lock-free, no allocation.
pub fn enter_no_barrier(why: &'static str) -> NoBarrierScope {
    NoBarrierScope {
        prev: NO_BARRIER.with(|c| c.replace(Some(why))),
        _not_send: PhantomData,
    }
}

/// The reason given to the innermost [`enter_no_barrier`] scope of the calling thread, if any.
pub fn no_barrier_reason() -> Option<&'static str> {
    NO_BARRIER.with(Cell::get)
}

/// Marks the calling thread as one that runs callbacks (`rcu_barrier` from it panics). Callback
/// threads are started by the worker's passes, which run only after `init` (`super` module docs,
/// "Modules").
pub(super) fn mark_callback_thread() {
    IN_CALLBACK.with(|c| c.set(true));
}

/// The callback lists, allocated on first use; `None` if there is no memory for them (the
/// allocation is fallible: `call_rcu` then takes its no-memory fallback instead of aborting).
pub(super) fn try_lists() -> Option<&'static [CachePadded<CbList>]> {
    if let Some(l) = LISTS.get() {
        return Some(l);
    }
    let n = crate::cpu::possible_cpus();
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.extend((0..n).map(|_| CachePadded::new(CbList::new())));
    // `into_boxed_slice` does not reallocate: the capacity is the length.
    Some(LISTS.get_or_init(|| v.into_boxed_slice()))
}
