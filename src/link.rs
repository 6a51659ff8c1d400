//! [`Link`]: the non-owning RCU pointer that chains the nodes of [`RcuList`](crate::RcuList) and
//! [`RcuHashMap`](crate::map::RcuHashMap).
//!
//! # Implementation
//!
//! An owning [`Atomic`](crate::Atomic) cannot be a chain link: an unlinked node must keep
//! pointing at its successor for the readers standing on it (the kernel's `list_del_rcu` leaves
//! `next` intact) without owning it, or freeing the unlinked node would free the rest of the
//! chain. A `Link<T>` is an `AtomicPtr<T>` that does not own its pointee; the structure that
//! holds the links owns the nodes. Readers get the same guard-bound [`Shared<'g, T>`] as from
//! `Atomic::load`, and writers get what they unlink as the same [`Retired<T>`].
//!
//! Invariants, upheld by the structure (every method that stores into a link or copies one is
//! `unsafe`, and links are crate-private):
//! 1. A non-null pointer in a link came from `Box::<T>::into_raw` and is a node of the
//!    structure: reachable from its root now, or unlinked — then owned by exactly one
//!    [`Retired`] (or by a table retired whole), freed only after a grace period that starts
//!    after the unlink.
//! 2. A reader reaches a node only through links loaded inside its read-side critical section,
//!    so it began that section before the node's unlink (after the unlink no link leads to the
//!    node except from nodes unlinked earlier, which only such readers stand on): the node's
//!    grace period waits for it. So a [`Shared<'g, T>`] made by [`Link::load`] under a guard
//!    borrowed for `'g` stays valid for `'g` (`ptr`'s Invariant 3).
//! 3. Only writers store into links, serialised by the structure's writer lock (for a list made
//!    with `RcuList::with_writer_token`, by `&mut` access to its token); a node they load with
//!    [`Link::load_by_writer`] stays alive until that same writer unlinks it.
//!
//! ## Memory orderings
//! * [`Link::load`] is Acquire: pairs with the Release store that linked the node
//!   ([`Link::publish`], [`Link::unlink`], [`Link::replace`]), so the node's fields (and its own `next`) are
//!   visible before the reader dereferences it (`rcu_dereference`). Without it a reader could
//!   see the pointer before the fields.
//! * [`Link::publish`] and [`Link::unlink`] are Release stores (`rcu_assign_pointer`): the
//!   node (or, for an unlink, the successor, published earlier) is ordered before the link.
//! * [`Link::load_by_writer`] is Relaxed: the writer lock (or whatever handed the token's `&mut`
//!   over) orders the writer after the previous writer's stores.

use core::fmt;
use core::ptr::{self, NonNull};

use rcu_core::RcuReadGuard;

use crate::primitive::sync::atomic::{AtomicPtr, Ordering};
use crate::ptr::{Retired, Shared};

/// A non-owning link between nodes of an RCU-protected linked structure (module docs).
pub(crate) struct Link<T> {
    ptr: AtomicPtr<T>,
}

impl<T> Link<T> {
    /// A null link (the end of a chain). `const`: usable in a `static` list.
    pub(crate) const fn null() -> Self {
        Link {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A link pointing where `other` points now, for a node not yet published (its `next`).
    /// Relaxed: the caller is a writer (Invariant 3), and the node is published later with
    /// Release.
    ///
    /// # Safety
    /// The caller holds the writer lock of `other`'s structure, and the new link becomes the
    /// `next` of a node it publishes in that structure (or is dropped unused) before it lets
    /// the lock go: a copied link loaded once its pointee is freed would hand out a dangling
    /// [`Shared`] from the safe [`Link::load`].
    pub(crate) unsafe fn copy_by_writer(other: &Link<T>) -> Self {
        Link {
            ptr: AtomicPtr::new(other.ptr.load(Ordering::Relaxed)),
        }
    }

    /// The pointee, valid while `guard` and `self` are borrowed: `rcu_dereference()`.
    #[inline]
    pub(crate) fn load<'g>(&'g self, _guard: &'g RcuReadGuard) -> Shared<'g, T> {
        // Acquire: pairs with the Release of `publish`/`unlink`/`replace` (module docs).
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: loaded from this link just now under `_guard`, borrowed for `'g`; Invariants
        // 1 and 2 keep the pointee alive for `'g`.
        unsafe { Shared::from_link(p) }
    }

    /// The pointee for the writer holding the structure's writer lock (Invariant 3).
    ///
    /// # Safety
    /// The caller holds the writer lock of the structure this link belongs to, and uses the
    /// reference only while it holds it and before it unlinks that node.
    #[inline]
    pub(crate) unsafe fn load_by_writer<'w>(&self) -> Option<&'w T> {
        // Relaxed: the writer lock orders us after the previous writer (module docs).
        let p = self.ptr.load(Ordering::Relaxed);
        // SAFETY: Invariant 1 (a live node of the structure, or null) and the caller's contract
        // (alive until this writer unlinks it).
        unsafe { p.as_ref() }
    }

    /// Links a new node here (`rcu_assign_pointer`), replacing what the link pointed at (which
    /// the caller made the node's successor, or retires: see [`Link::replace`]); returns the node's address.
    ///
    /// # Safety
    /// The caller holds the structure's writer lock, and whatever this link pointed at stays
    /// reachable or is handed to a [`Retired`] by the caller (Invariant 1).
    #[inline]
    pub(crate) unsafe fn publish(&self, node: Box<T>) -> NonNull<T> {
        let p = Box::into_raw(node);
        // Release: publishes the node's fields (pairs with readers' Acquire `load`).
        self.ptr.store(p, Ordering::Release);
        // SAFETY: from `Box::into_raw`, never null.
        unsafe { NonNull::new_unchecked(p) }
    }

    /// Takes the pointee out, for a structure dropping its nodes, and leaves the link null.
    ///
    /// # Safety
    /// No reader can reach the node any more (the structure is being dropped, or a grace period
    /// has passed since it was unpublished), and the structure owns it: it is reachable from the
    /// structure's root through links, not an unlinked node's stale `next`.
    pub(crate) unsafe fn take_for_drop(&mut self) -> Option<Box<T>> {
        let p = core::mem::replace(self.ptr.get_mut(), ptr::null_mut());
        // SAFETY: `&mut self`: no writer; the caller's contract: no reader, and owned by the
        // structure; Invariant 1: from `Box::into_raw`; taken out once (the link is now null).
        NonNull::new(p).map(|p| unsafe { Box::from_raw(p.as_ptr()) })
    }
}

impl<T: Send + 'static> Link<T> {
    /// Unlinks `node`, which this link points at, by pointing the link at `node`'s successor
    /// (`next`, read by the caller from `node`); returns `node` to be retired (Invariant 1).
    ///
    /// # Safety
    /// The caller holds the structure's writer lock; this link points at `node` (checked in
    /// debug builds), `next` is `node`'s successor link, and `node` is owned by the structure
    /// (not by a table the caller retires whole).
    #[inline]
    pub(crate) unsafe fn unlink(&self, node: &T, next: &Link<T>) -> Retired<T> {
        // Relaxed: the writer's own earlier store or one ordered by the writer lock.
        let p = self.ptr.load(Ordering::Relaxed);
        debug_assert!(ptr::eq(p, node));
        // Release: the successor was published earlier; this keeps readers that follow the new
        // link ordered after that publication (pairs with their Acquire `load`).
        self.ptr
            .store(next.ptr.load(Ordering::Relaxed), Ordering::Release);
        // SAFETY: `p` is `node`, linked here (a node of the structure, from `Box::into_raw`,
        // non-null, Invariant 1; the pointer keeps the box's provenance), now unreachable for
        // new readers; its ownership passes to the handle once (the caller's contract).
        unsafe { Retired::from_unpublished(NonNull::new_unchecked(p)) }
    }

    /// Replaces `old`, which this link points at, by `new` (whose `next` the caller set to
    /// `old`'s successor): `list_replace_rcu`. Returns the new node's address and `old`, to be retired.
    ///
    /// # Safety
    /// As [`Link::unlink`], with `new.next` already pointing at `old`'s successor.
    #[inline]
    pub(crate) unsafe fn replace(&self, old: &T, new: Box<T>) -> (NonNull<T>, Retired<T>) {
        // Relaxed: as in `unlink`.
        let p = self.ptr.load(Ordering::Relaxed);
        debug_assert!(ptr::eq(p, old));
        // SAFETY: forwarded; `old` is handed to a `Retired` right below.
        let new = unsafe { self.publish(new) };
        // SAFETY: as in `unlink`: `p` is `old`, linked here until the store above and now
        // unreachable for new readers.
        (new, unsafe {
            Retired::from_unpublished(NonNull::new_unchecked(p))
        })
    }
}

impl<T> fmt::Debug for Link<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: an address for display.
        f.debug_tuple("Link")
            .field(&self.ptr.load(Ordering::Relaxed))
            .finish()
    }
}
