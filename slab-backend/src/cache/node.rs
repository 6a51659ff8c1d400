//! Per-node slab lists: partial, full and empty slabs of one cache on one memory node.
//!
//! # Implementation
//!
//! Three intrusive doubly-linked lists threaded through the slab headers, guarded by one
//! [`RawLock`] per node. A slab is on exactly the list its `inuse` count says
//! (`0` → empty, `nr` → full, else partial), re-filed after every change. Objects are taken from
//! partial slabs first (to let others drain), then from empty ones. At most [`MIN_EMPTY`] empty
//! slabs are kept for reuse; a slab that becomes empty beyond that is detached and handed back
//! for discarding *after* the lock is dropped (unmapping, dropping `T`s and `call_rcu` never run
//! under a node lock) — if the cache grants the discard: a typesafe cache refuses while too many
//! of its discards wait for a grace period ([`crate::typesafe`]), and the slab then stays on the
//! empty list, where the next allocation reuses it instead of mapping a new one.
//!
//! The node lock is a leaf: nothing else is locked while it is held. `Nolock` callers only
//! try-lock it and never detach slabs (they cannot unmap or queue RCU callbacks).
//!
//! The process has one node (NUMA topology is not probed); the node array of a cache is never
//! freed while the cache lives (seed: "stop freeing kmem_cache_node structures on node offline").
//!
//! Invariants:
//! 1. Every slab of the cache that is not detached is on exactly one list of exactly one node,
//!    matching its `inuse` (slab Invariant 3).
//! 2. Lists and slab links are only touched with the node lock held.
//!
//! ## Memory orderings
//! Everything is under the lock (Acquire/Release pairing inside [`RawLock`]); the counters are
//! read under the lock too.

use core::ptr::{self, NonNull};

use super::slab::{ListId, SlabHeader, SlabLayout};
use crate::lock::RawLock;
use crate::primitive::cell::UnsafeCell;
use crate::sheaf::Mode;

/// Empty slabs a node keeps for reuse before it starts giving them back.
pub(crate) const MIN_EMPTY: usize = 2;

#[derive(Debug)]
struct List {
    head: *mut SlabHeader,
    len: usize,
}

impl List {
    const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            len: 0,
        }
    }
}

#[derive(Debug)]
struct Lists {
    partial: List,
    full: List,
    empty: List,
}

impl Lists {
    fn list(&mut self, id: ListId) -> &mut List {
        match id {
            ListId::Partial => &mut self.partial,
            ListId::Full => &mut self.full,
            ListId::Empty => &mut self.empty,
            ListId::None => unreachable!("no list for ListId::None"),
        }
    }

    /// # Safety
    /// `s` is a live slab of this node's cache, on no list; node lock held.
    unsafe fn push(&mut self, s: *mut SlabHeader, id: ListId) {
        let l = self.list(id);
        // SAFETY: `s` and the list head are live slabs whose links we own under the lock.
        unsafe {
            (*s).prev = ptr::null_mut();
            (*s).next = l.head;
            if !l.head.is_null() {
                (*l.head).prev = s;
            }
            (*s).list = id;
        }
        l.head = s;
        l.len += 1;
    }

    /// # Safety
    /// `s` is on the list its `list` field names; node lock held.
    unsafe fn remove(&mut self, s: *mut SlabHeader) {
        // SAFETY: `s` is live and on a list (contract); its neighbours are live slabs of the same
        // list, all guarded by the node lock.
        unsafe {
            let id = (*s).list;
            let (prev, next) = ((*s).prev, (*s).next);
            let l = self.list(id);
            if prev.is_null() {
                l.head = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            l.len -= 1;
            (*s).prev = ptr::null_mut();
            (*s).next = ptr::null_mut();
            (*s).list = ListId::None;
        }
    }

    /// Moves `s` to the list matching its `inuse`.
    ///
    /// # Safety
    /// As for `remove`.
    unsafe fn refile(&mut self, s: *mut SlabHeader, nr: usize) {
        // SAFETY: forwarded contract.
        unsafe {
            let want = match (*s).inuse as usize {
                0 => ListId::Empty,
                n if n == nr => ListId::Full,
                _ => ListId::Partial,
            };
            if (*s).list != want {
                self.remove(s);
                self.push(s, want);
            }
        }
    }
}

/// Slabs detached from a node, chained through their `next` links, waiting to be discarded.
#[derive(Debug)]
pub(crate) struct Detached {
    head: *mut SlabHeader,
}

impl Detached {
    /// An empty chain.
    pub(crate) fn new() -> Self {
        Self {
            head: ptr::null_mut(),
        }
    }

    fn push(&mut self, s: *mut SlabHeader) {
        // SAFETY: `s` is a live slab just removed from every list; we own its links.
        unsafe { (*s).next = self.head };
        self.head = s;
    }
}

impl Iterator for Detached {
    type Item = NonNull<SlabHeader>;
    fn next(&mut self) -> Option<Self::Item> {
        let s = NonNull::new(self.head)?;
        // SAFETY: chained slabs are live and owned by this chain.
        unsafe {
            self.head = (*s.as_ptr()).next;
            (*s.as_ptr()).next = ptr::null_mut();
        }
        Some(s)
    }
}

/// Counts of one node's lists.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeCounts {
    pub(crate) partial: usize,
    pub(crate) full: usize,
    pub(crate) empty: usize,
    /// Objects not free in any slab bitmap (in users' hands or in sheaves).
    pub(crate) inuse: usize,
}

/// One node of one cache.
#[derive(Debug)]
pub(crate) struct Node {
    lock: RawLock,
    lists: UnsafeCell<Lists>,
}

// SAFETY: the slab pointers in the lists are only dereferenced with the node lock held
// (Invariant 2); slabs are plain mapped memory that any thread may touch under that lock.
unsafe impl Send for Node {}
// SAFETY: as for Send: every shared access to `lists` goes through the node lock.
unsafe impl Sync for Node {}

/// The node lock, held.
pub(crate) struct NodeGuard<'a> {
    node: &'a Node,
}

impl Node {
    pub(crate) fn new() -> Self {
        Self {
            lock: RawLock::new(),
            lists: UnsafeCell::new(Lists {
                partial: List::new(),
                full: List::new(),
                empty: List::new(),
            }),
        }
    }

    /// Locks the node (`Normal`) or tries to (`Nolock`).
    pub(crate) fn lock(&self, mode: Mode) -> Option<NodeGuard<'_>> {
        match mode {
            Mode::Normal => self.lock.lock(),
            Mode::Nolock => {
                if !self.lock.try_lock() {
                    return None;
                }
            }
        }
        Some(NodeGuard { node: self })
    }

    /// `fork()` prepare handler: takes the node lock (a leaf: its holders never wait).
    pub(crate) fn fork_lock(&self) {
        self.lock.lock();
    }

    /// `fork()` parent and child handlers: releases the lock `fork_lock` took.
    pub(crate) fn fork_unlock(&self) {
        self.lock.unlock();
    }
}

impl Drop for NodeGuard<'_> {
    fn drop(&mut self) {
        self.node.lock.unlock();
    }
}

impl NodeGuard<'_> {
    fn with<R>(&mut self, f: impl FnOnce(&mut Lists) -> R) -> R {
        // SAFETY: the node lock is held (Invariant 2) and `&mut self` prevents reentry.
        self.node.lists.with_mut(|l| f(unsafe { &mut *l }))
    }

    /// Takes free objects from partial, then empty slabs, offering each to `put` until it
    /// returns `false`; returns how many were taken.
    pub(crate) fn take(&mut self, l: &SlabLayout, mut put: impl FnMut(*mut u8) -> bool) -> usize {
        self.with(|lists| {
            let mut total = 0;
            loop {
                let s = if !lists.partial.head.is_null() {
                    lists.partial.head
                } else if !lists.empty.head.is_null() {
                    lists.empty.head
                } else {
                    return total;
                };
                let mut stopped = false;
                // SAFETY: `s` is on one of our lists (Invariant 1) and we hold the lock.
                let n = unsafe {
                    (*s).take(l, |o| {
                        let ok = put(o);
                        stopped |= !ok;
                        ok
                    })
                };
                // SAFETY: as above.
                unsafe { lists.refile(s, l.nr) };
                total += n;
                if stopped {
                    return total;
                }
            }
        })
    }

    /// Files a slab whose objects are all free (fresh, or detached and then kept).
    pub(crate) fn add_slab(&mut self, s: NonNull<SlabHeader>) {
        // SAFETY: a new slab is on no list; we hold the lock.
        self.with(|lists| unsafe { lists.push(s.as_ptr(), ListId::Empty) });
    }

    /// Returns object `idx` to slab `s`. If that makes one empty slab too many (and `detach` is
    /// allowed, and `reserve` grants a discard), the slab is moved to `out` for discarding after
    /// the lock is dropped; otherwise an empty slab stays on the empty list, for reuse.
    pub(crate) fn put(
        &mut self,
        l: &SlabLayout,
        s: *mut SlabHeader,
        idx: usize,
        detach: bool,
        reserve: &mut dyn FnMut() -> bool,
        out: &mut Detached,
    ) {
        self.with(|lists| {
            // SAFETY: `s` is a slab of this cache holding an in-use object, so it is on one of
            // our lists (Invariant 1); we hold the lock.
            unsafe {
                (*s).put(l, idx);
                lists.refile(s, l.nr);
                if detach && (*s).inuse == 0 && lists.empty.len > MIN_EMPTY && reserve() {
                    lists.remove(s);
                    out.push(s);
                }
            }
        })
    }

    /// Detaches empty slabs while `reserve` grants a discard for each (`shrink`, destroy).
    pub(crate) fn detach_empty(&mut self, reserve: &mut dyn FnMut() -> bool, out: &mut Detached) {
        self.with(|lists| {
            while !lists.empty.head.is_null() && reserve() {
                let s = lists.empty.head;
                // SAFETY: `s` heads our empty list; we hold the lock.
                unsafe { lists.remove(s) };
                out.push(s);
            }
        })
    }

    /// The list lengths and the objects in use.
    pub(crate) fn counts(&mut self) -> NodeCounts {
        self.with(|lists| {
            let mut inuse = 0;
            for head in [lists.partial.head, lists.full.head] {
                let mut s = head;
                while !s.is_null() {
                    // SAFETY: list members are live slabs; we hold the lock.
                    unsafe {
                        inuse += (*s).inuse as usize;
                        s = (*s).next;
                    }
                }
            }
            NodeCounts {
                partial: lists.partial.len,
                full: lists.full.len,
                empty: lists.empty.len,
                inuse,
            }
        })
    }
}
