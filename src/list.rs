//! [`RcuList`]: a linked list in the style of the kernel's `list_add_rcu()` /
//! `list_del_rcu()` / `list_replace_rcu()` / `list_for_each_entry_rcu()`, with no `unsafe` for
//! its user.
//!
//! Readers walk the list under a guard ([`RcuList::iter`]) with no lock and no store to shared
//! memory. Writers are serialised by a mutex the list owns: each writer method takes it for its
//! own duration, and [`RcuList::writer`] holds it across several operations (the kernel's "writers
//! hold the list's lock" pattern, with the lock inside the list so that it cannot be forgotten).
//! Or by a lock the caller provides: a list made with [`RcuList::with_writer_token`] is written
//! only through its [`ListWriterToken`], which the caller keeps behind a lock of its own (one
//! lock over several structures).
//! What a writer unlinks comes back as a [`Retired<ListNode<T>>`](Retired): dropping it frees the
//! node with `kfree_rcu` after a grace period; [`Retired::call_rcu`] and
//! [`Retired::synchronize`] are the other ways (the latter gives the node back, and
//! [`ListNode::into_value`] the value, once no reader can see it).
//!
//! ```
//! use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuList};
//!
//! static LIST: RcuList<u32> = RcuList::new();
//! LIST.push_back(2);
//! LIST.push_front(1);
//! LIST.push_back(3);
//! {
//!     let g = rcu_read_lock();
//!     assert_eq!(LIST.iter(&g).copied().collect::<Vec<_>>(), [1, 2, 3]);
//! }
//! let old = LIST.replace(|v| *v == 2, 20).unwrap(); // list_replace_rcu
//! assert_eq!(old.synchronize().into_value(), 2);
//! LIST.remove(|v| *v == 1); // list_del_rcu; the node is freed with kfree_rcu
//! let g = rcu_read_lock();
//! assert_eq!(LIST.iter(&g).copied().collect::<Vec<_>>(), [20, 3]);
//! # drop(g);
//! # LIST.retain(|_| false);
//! # kvfree_rcu_barrier();
//! ```
//!
//! A value seen while walking cannot outlive the guard:
//!
//! ```compile_fail,E0597
//! use rcu_kit::{rcu_read_lock, RcuList};
//! let list = RcuList::new();
//! list.push_back(1u32);
//! let first: &u32;
//! {
//!     let g = rcu_read_lock();
//!     first = list.iter(&g).next().unwrap();
//! }
//! println!("{first}");
//! ```
//!
//! and an unlinked node gives its value back only through a grace period (no `Box` before it):
//!
//! ```compile_fail,E0599
//! let list = rcu_kit::RcuList::new();
//! list.push_back(String::new());
//! let v: String = list.pop_front().unwrap().into_value();
//! ```
//!
//! # Implementation
//!
//! A singly linked list: `head` and each node's `next` are the crate's non-owning RCU links
//! (`link` module: readers load them as guard-bound `Shared` pointers, writers link boxes and
//! get what they unlink back as `Retired`); a node is a `Box<ListNode<T>>` turned into a raw
//! pointer when linked.
//!
//! Invariants (writers hold the writer mutex for every change):
//! 1. Every node reachable from `head` is owned by the list. A node leaves the list's ownership
//!    only when a writer unlinks it (one Release store to its predecessor's link), and its
//!    ownership then passes to the `Retired` returned for it, which frees it only after a grace
//!    period (`ptr` Invariant 2).
//! 2. An unlinked node's `next` is left as it was (the kernel's `list_del_rcu` leaves `next`
//!    intact): a reader standing on it finishes its walk through nodes that were linked after
//!    it. Dropping a `ListNode` never follows `next` (the link does not own).
//! 3. `tail` (writer state) is the last reachable node, or null for an empty list.
//! 4. A value is never changed, moved or dropped while the node is reachable or within a grace
//!    period of its unlink: `replace` links a new node; the value comes back only through
//!    `Retired::synchronize` (after the grace period).
//! 5. Writers are serialised by exactly one thing: the list's mutex (`token_id == 0`), or
//!    `&mut` access to the one [`ListWriterToken`] whose id the list holds (the caller's lock
//!    around the token provides it); the writer state then lives in the token. The list's own
//!    writer methods panic on a token list, and a token writes only the list with its id.
//!
//! A reader that reaches a node began its critical section before that node's unlink (after the
//! unlink no link leads to it, except from nodes unlinked earlier, which only such readers can
//! stand on), so the node's grace period waits for it.
//!
//! Re-entrancy: writer methods run the caller's predicates under the mutex. A predicate (or a
//! `ListWriter` holder) that calls a writer method of the same list on the same thread would
//! deadlock on the mutex; the list records the writer thread and panics instead. Readers may call
//! writer methods, so they may wait for the mutex inside their critical section: a `ListWriter`
//! holder that waited for a grace period could wait for such a reader forever. Each thread
//! counts the writers it holds, and [`Retired::synchronize`] panics while the count is not 0.
//! The list's own methods retire after the mutex is released (the returned handles drop in the
//! caller), so a value's destructor run by the batcher's inline reclaim may use the list; a
//! handle retired with `kfree_rcu` while a writer is held retires under a read guard of its own,
//! where the batcher neither runs destructors inline nor waits (`ptr` Invariant 2).
//!
//! ## Memory orderings
//! * Linking (push, replace) stores the new node with Release after initialising it (and its
//!   `next`); readers load every link with Acquire: pairs, so a reader never sees a node before
//!   its value (`rcu_assign_pointer` / `rcu_dereference`).
//! * Unlinking stores the successor with Release: the successor was published earlier, and the
//!   Release keeps readers that follow the new link ordered after it.
//! * Writers read links Relaxed: the mutex orders them after the previous writer.
//! * `len` is a Relaxed snapshot counter, published by nothing.

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

use rcu_core::RcuReadGuard;

use crate::link::Link;
use crate::primitive::sync::atomic::{AtomicUsize, Ordering};
use crate::ptr::{Retired, Shared};
use crate::writer_lock::{HeldMark, WriterGuard, WriterLock};

/// A node of an [`RcuList`]: the value and the link readers follow. Handed out only inside a
/// [`Retired`], once unlinked.
///
/// ```
/// let list = rcu_kit::RcuList::new();
/// list.push_back(String::from("a"));
/// let node = list.pop_front().unwrap().synchronize(); // after a grace period
/// assert_eq!(node.value(), "a");
/// assert_eq!(node.into_value(), "a");
/// ```
pub struct ListNode<T> {
    value: T,
    next: Link<ListNode<T>>,
}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T> ListNode<T> {
    /// The value.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1u8);
    /// assert_eq!(*list.pop_front().unwrap().synchronize().value(), 1);
    /// ```
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The value, out of a node no reader can see any more (a `Box<ListNode>` is only had from
    /// [`Retired::synchronize`]).
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(vec![1u8]);
    /// let v: Vec<u8> = list.pop_front().unwrap().synchronize().into_value();
    /// assert_eq!(v, [1]);
    /// ```
    #[allow(clippy::boxed_local)] // the `Box` is what `Retired::synchronize` hands out
    pub fn into_value(self: Box<Self>) -> T {
        self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for ListNode<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListNode")
            .field("value", &self.value)
            .finish()
    }
}

/// Ids of writer tokens (Invariant 5); 0 is never used.
static NEXT_TOKEN_ID: AtomicUsize = AtomicUsize::new(1);

/// Writer-side state, under the list's mutex (or in its [`ListWriterToken`]).
struct WriterState<T> {
    /// Invariant 3.
    tail: *mut ListNode<T>,
    len: usize,
}

// SAFETY: `tail` points into the list, which the mutex's owner may change from any thread.
unsafe impl<T: Send> Send for WriterState<T> {}

/// A singly linked RCU list: lock-free readers, writers serialised by the list's own mutex (see
/// the [module docs](self)).
///
/// ```
/// use rcu_kit::{rcu_read_lock, RcuList};
/// let list = RcuList::new();
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let g = rcu_read_lock();
///         for v in list.iter(&g) {
///             assert!(*v < 100);
///         }
///     });
///     for i in 0..100 {
///         list.push_back(i);
///     }
/// });
/// assert_eq!(list.len(), 100);
/// ```
pub struct RcuList<T: Send + Sync + 'static> {
    head: Link<ListNode<T>>,
    writer: WriterLock<WriterState<T>>,
    /// 0 for a list whose writers take `writer`; else the id of its [`ListWriterToken`]
    /// (Invariant 5).
    token_id: usize,
    len: AtomicUsize,
    _owns: PhantomData<Box<ListNode<T>>>,
}

// SAFETY: the list owns its values (moved to other threads when retired: `T: Send`) and hands
// out `&T` to many threads (`T: Sync`); all shared mutation goes through atomics and the mutex.
unsafe impl<T: Send + Sync + 'static> Send for RcuList<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Sync for RcuList<T> {}

impl<T: Send + Sync + 'static> Default for RcuList<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + Sync + 'static> RcuList<T> {
    /// An empty list. `const`: usable in a `static`.
    ///
    /// ```
    /// static L: rcu_kit::RcuList<u8> = rcu_kit::RcuList::new();
    /// assert!(L.is_empty());
    /// ```
    pub const fn new() -> Self {
        RcuList {
            head: Link::null(),
            writer: WriterLock::new(WriterState {
                tail: ptr::null_mut(),
                len: 0,
            }),
            token_id: 0,
            len: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// An empty list whose writers are serialised by a lock the caller provides: the returned
    /// [`ListWriterToken`] is the only way to write to it, and `&mut` access to the token is what
    /// serialises writers. Keep the token behind your own lock (a `Mutex` over the state this
    /// list belongs to, say), and several structures change under one lock, as the kernel's
    /// callers do with `list_add_rcu()` under a lock of their own.
    ///
    /// The list's own writer methods ([`RcuList::push_back`], [`RcuList::writer`], …) panic on
    /// such a list: they would race with the token's writers.
    ///
    /// # Panics
    /// When the process has used up the token ids (`usize::MAX - 1` such lists): an id is never
    /// given to two lists.
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use rcu_kit::{rcu_read_lock, ListWriterToken, RcuList};
    ///
    /// // Two lists that change together, under one lock of ours.
    /// struct Writers {
    ///     pending: ListWriterToken<u32>,
    ///     done: ListWriterToken<u32>,
    /// }
    /// let (pending, pending_w) = RcuList::with_writer_token();
    /// let (done, done_w) = RcuList::with_writer_token();
    /// let lock = Mutex::new(Writers { pending: pending_w, done: done_w });
    ///
    /// lock.lock().unwrap().pending.writer(&pending).push_back(7);
    /// {
    ///     // Moves job 7 from one list to the other under our lock: no writer of either list
    ///     // sees one change without the other.
    ///     let mut w = lock.lock().unwrap();
    ///     let Writers { pending: p, done: d } = &mut *w;
    ///     let mut pw = p.writer(&pending);
    ///     if let Some(old) = pw.remove(|job| *job == 7) {
    ///         d.writer(&done).push_back(7);
    ///         // kfree_rcu while `pw` lives: it neither waits for a grace period nor runs
    ///         // destructors here, under our lock (see `ListWriterToken`).
    ///         drop(old);
    ///     }
    /// }
    /// let g = rcu_read_lock();
    /// assert_eq!(pending.iter(&g).count(), 0);
    /// assert_eq!(done.iter(&g).copied().collect::<Vec<_>>(), [7]);
    /// ```
    pub fn with_writer_token() -> (Self, ListWriterToken<T>) {
        // Relaxed: a unique number, publishing nothing. Never wraps: once the ids run out every
        // call panics, so no id (and no list) is ever served by two tokens (Invariant 5).
        let id = NEXT_TOKEN_ID
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .unwrap_or_else(|_| panic!("RcuList: writer token ids exhausted"));
        let mut list = Self::new();
        list.token_id = id;
        let token = ListWriterToken {
            list_id: id,
            state: WriterState {
                tail: ptr::null_mut(),
                len: 0,
            },
        };
        (list, token)
    }

    /// Takes the writer lock for several operations in a row (they appear to readers one by
    /// one, in order).
    ///
    /// # Panics
    /// When the calling thread already holds it (a predicate or a held `ListWriter` calling
    /// back into the list): that would deadlock.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// let mut w = list.writer();
    /// w.push_back(1);
    /// w.push_back(2);
    /// drop(w.pop_front());
    /// drop(w);
    /// assert_eq!(list.len(), 1);
    /// ```
    ///
    /// Also panics on a list made with [`RcuList::with_writer_token`]: its writers go through the
    /// token.
    #[track_caller]
    pub fn writer(&self) -> ListWriter<'_, T> {
        if self.token_id != 0 {
            panic!(
                "RcuList: a writer method of the list was called on a list made with \
                 with_writer_token: its writers are serialised by the caller's lock around its \
                 ListWriterToken, and this one would race with them; write through \
                 token.writer(&list)"
            );
        }
        let state = self.writer.lock(
            "RcuList: a writer method was called by the thread that already holds the list's \
             writer lock (from a predicate, or while a ListWriter is alive): it would deadlock",
        );
        ListWriter {
            list: self,
            state: Held::Lock(state),
        }
    }

    /// Walks the list under `guard`: the kernel's `list_for_each_entry_rcu()`. Nodes added or
    /// removed during the walk may or may not be seen; every value seen stays valid while
    /// `guard` lives.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back('a');
    /// let g = rcu_kit::rcu_read_lock();
    /// assert_eq!(list.iter(&g).next(), Some(&'a'));
    /// ```
    #[doc(alias = "list_for_each_entry_rcu")]
    pub fn iter<'g>(&'g self, guard: &'g RcuReadGuard) -> Iter<'g, T> {
        Iter {
            // Acquire (`Link::load`): pairs with the Release store that linked the first node.
            next: self.head.load(guard),
            guard,
        }
    }

    /// The number of values (a snapshot).
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_front(1);
    /// assert_eq!(list.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        // Relaxed: a snapshot counter.
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the list is empty (a snapshot).
    ///
    /// ```
    /// assert!(rcu_kit::RcuList::<u8>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `value` at the front: the kernel's `list_add_rcu()`.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_front(2);
    /// list.push_front(1);
    /// assert_eq!(list.iter(&rcu_kit::rcu_read_lock()).next(), Some(&1));
    /// ```
    #[doc(alias = "list_add_rcu")]
    #[track_caller]
    pub fn push_front(&self, value: T) {
        self.writer().push_front(value)
    }

    /// Adds `value` at the back: the kernel's `list_add_tail_rcu()`.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1);
    /// list.push_back(2);
    /// assert_eq!(list.iter(&rcu_kit::rcu_read_lock()).last(), Some(&2));
    /// ```
    #[doc(alias = "list_add_tail_rcu")]
    #[track_caller]
    pub fn push_back(&self, value: T) {
        self.writer().push_back(value)
    }

    /// Unlinks the first node (a stack's pop). Dropping the result frees it with `kfree_rcu`.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_front(1);
    /// assert!(list.pop_front().is_some());
    /// assert!(list.pop_front().is_none());
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    #[track_caller]
    pub fn pop_front(&self) -> Option<Retired<ListNode<T>>> {
        self.writer().pop_front()
    }

    /// Unlinks the first node whose value matches: the kernel's `list_del_rcu()`. Dropping the
    /// result frees it with `kfree_rcu`.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1);
    /// list.push_back(2);
    /// assert!(list.remove(|v| *v == 1).is_some());
    /// assert_eq!(list.len(), 1);
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    #[doc(alias = "list_del_rcu")]
    #[track_caller]
    pub fn remove<F: FnMut(&T) -> bool>(&self, pred: F) -> Option<Retired<ListNode<T>>> {
        self.writer().remove(pred)
    }

    /// Replaces the first node whose value matches with a new node holding `value`: the kernel's
    /// `list_replace_rcu()`. Readers see the old value or the new one, never neither. Returns the
    /// old node, or `value` back when nothing matched.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1);
    /// assert!(list.replace(|v| *v == 1, 10).is_ok());
    /// assert_eq!(list.replace(|v| *v == 1, 11).unwrap_err(), 11);
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    #[doc(alias = "list_replace_rcu")]
    #[track_caller]
    pub fn replace<F: FnMut(&T) -> bool>(
        &self,
        pred: F,
        value: T,
    ) -> Result<Retired<ListNode<T>>, T> {
        self.writer().replace(pred, value)
    }

    /// Unlinks every node whose value does not satisfy `keep`, and frees them with `kfree_rcu`
    /// (after releasing the writer lock). Returns how many were removed.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// for i in 0..10 {
    ///     list.push_back(i);
    /// }
    /// assert_eq!(list.retain(|v| v % 2 == 0), 5);
    /// rcu_kit::kvfree_rcu_barrier();
    /// ```
    #[track_caller]
    pub fn retain<F: FnMut(&T) -> bool>(&self, keep: F) -> usize {
        let removed = self.writer().retain(keep);
        let n = removed.len();
        drop(removed); // after the writer lock is released: `kfree_rcu` each
        n
    }
}

impl<T: Send + Sync + 'static> Drop for RcuList<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader can hold a reference into the list (they borrow it);
        // every reachable node is owned by the list (Invariant 1) and is freed here once.
        let mut next = unsafe { self.head.take_for_drop() };
        while let Some(mut node) = next {
            // SAFETY: as above: the rest of the chain.
            next = unsafe { node.next.take_for_drop() };
        }
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for RcuList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = rcu_core::rcu_read_lock();
        f.debug_list().entries(self.iter(&g)).finish()
    }
}

/// The writer lock of an [`RcuList`], from [`RcuList::writer`]: the list's writer methods, for
/// several operations under one lock.
///
/// Drop the [`Retired`] handles it returns after the writer (or keep them): retiring with
/// `kfree_rcu` (or by dropping them) while the lock is held is allowed (it then neither runs
/// destructors inline nor waits), and [`Retired::synchronize`] panics while any
/// `ListWriter` is held on the thread (a reader waiting for this lock would hold its grace period
/// back forever): drop the writer first.
///
/// ```
/// let list = rcu_kit::RcuList::new();
/// let mut w = list.writer();
/// w.push_front(1);
/// let old = w.replace(|v| *v == 1, 2).unwrap();
/// drop(w);
/// drop(old);
/// rcu_kit::kvfree_rcu_barrier();
/// ```
pub struct ListWriter<'a, T: Send + Sync + 'static> {
    list: &'a RcuList<T>,
    state: Held<'a, T>,
}

/// What serialises a [`ListWriter`]: the list's own mutex, or `&mut` access to its token (with
/// the thread's writer count raised, as the mutex does).
enum Held<'a, T> {
    Lock(WriterGuard<'a, WriterState<T>>),
    Token(&'a mut WriterState<T>, HeldMark),
}

impl<T> Deref for Held<'_, T> {
    type Target = WriterState<T>;
    fn deref(&self) -> &WriterState<T> {
        match self {
            Held::Lock(g) => g,
            Held::Token(s, _) => s,
        }
    }
}

impl<T> DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut WriterState<T> {
        match self {
            Held::Lock(g) => g,
            Held::Token(s, _) => s,
        }
    }
}

/// The right to write to one [`RcuList`] made with [`RcuList::with_writer_token`]: writers are
/// serialised by `&mut` access to it, so keep it behind a lock of your own (see there).
///
/// Dropping the token leaves its list readable and dropped normally, but no longer writable.
/// As with [`ListWriter`], [`Retired::synchronize`] panics while a writer made from a token is
/// alive on the thread; waiting for a grace period while holding *your* lock, though, is yours
/// to avoid if readers may wait for that lock. Retiring is such a wait: drop (or
/// [`Retired::kfree_rcu`]) the handles a token's writer returns while that [`ListWriter`] is
/// still alive, where `kfree_rcu` neither waits nor runs other objects' destructors inline, or
/// after releasing your lock, not in between: there `kfree_rcu` may wait for a grace period
/// (when the batcher's pending cap is reached) or run destructors (which may take your lock)
/// under your lock.
///
/// ```
/// let (list, mut token) = rcu_kit::RcuList::with_writer_token();
/// token.writer(&list).push_back("a");
/// assert_eq!(list.len(), 1);
/// ```
pub struct ListWriterToken<T: Send + Sync + 'static> {
    list_id: usize,
    state: WriterState<T>,
}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + Sync + 'static> ListWriterToken<T> {
    /// A writer for `list`, serialised by this `&mut` borrow (so by the caller's lock around
    /// the token).
    ///
    /// # Panics
    /// When `list` is not the list this token was made with.
    ///
    /// ```
    /// let (list, mut token) = rcu_kit::RcuList::with_writer_token();
    /// let mut w = token.writer(&list);
    /// w.push_back(1);
    /// w.push_front(0);
    /// drop(w);
    /// let g = rcu_kit::rcu_read_lock();
    /// assert_eq!(list.iter(&g).copied().collect::<Vec<_>>(), [0, 1]);
    /// ```
    #[track_caller]
    pub fn writer<'a>(&'a mut self, list: &'a RcuList<T>) -> ListWriter<'a, T> {
        assert!(
            list.token_id == self.list_id,
            "ListWriterToken::writer: this token belongs to another RcuList (writing this one \
             with it would race with that list's own writers)"
        );
        ListWriter {
            list,
            state: Held::Token(&mut self.state, HeldMark::new()),
        }
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for ListWriterToken<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListWriterToken")
            .field("len", &self.state.len)
            .finish()
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for ListWriter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListWriter")
            .field("len", &self.state.len)
            .finish()
    }
}

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<T: Send + Sync + 'static> ListWriter<'_, T> {
    fn new_node(value: T, next: Link<ListNode<T>>) -> Box<ListNode<T>> {
        Box::new(ListNode { value, next })
    }

    fn set_len(&mut self, len: usize) {
        self.state.len = len;
        // Relaxed: a snapshot counter.
        self.list.len.store(len, Ordering::Relaxed);
    }

    /// The link that points at `prev`'s successor: `head` for null, else `prev.next`.
    fn link_after(&self, prev: *mut ListNode<T>) -> &Link<ListNode<T>> {
        if prev.is_null() {
            &self.list.head
        } else {
            // SAFETY: `prev` is a node reachable now (the caller found it under the writer lock),
            // so it is alive: only writers unlink, and we are the writer.
            unsafe { &(*prev).next }
        }
    }

    /// [`RcuList::push_front`] under this lock.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.writer().push_front(1);
    /// assert_eq!(list.len(), 1);
    /// ```
    pub fn push_front(&mut self, value: T) {
        let head = &self.list.head;
        // SAFETY: writer lock held; only compared with null.
        let was_empty = unsafe { head.load_by_writer() }.is_none();
        // SAFETY: writer lock held; the copy is the `next` of the node published below.
        let node = Self::new_node(value, unsafe { Link::copy_by_writer(head) });
        // SAFETY: writer lock held; the old first node is the new node's successor, still
        // reachable. Release publishes the node's value and link (`Link` docs).
        let node = unsafe { head.publish(node) };
        if was_empty {
            self.state.tail = node.as_ptr();
        }
        let len = self.state.len + 1;
        self.set_len(len);
    }

    /// [`RcuList::push_back`] under this lock.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.writer().push_back(1);
    /// assert_eq!(list.len(), 1);
    /// ```
    pub fn push_back(&mut self, value: T) {
        let node = Self::new_node(value, Link::null());
        let tail = self.state.tail;
        // SAFETY: writer lock held; the link after the tail is null (Invariant 3): nothing is
        // overwritten. Release: as in `push_front`.
        let node = unsafe { self.link_after(tail).publish(node) };
        self.state.tail = node.as_ptr();
        let len = self.state.len + 1;
        self.set_len(len);
    }

    /// [`RcuList::pop_front`] under this lock.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1);
    /// assert!(list.writer().pop_front().is_some());
    /// ```
    pub fn pop_front(&mut self) -> Option<Retired<ListNode<T>>> {
        self.remove(|_| true)
    }

    /// Finds the first node matching `pred`: `(predecessor or null, node)`.
    fn find<F: FnMut(&T) -> bool>(
        &self,
        mut pred: F,
    ) -> Option<(*mut ListNode<T>, NonNull<ListNode<T>>)> {
        let mut prev: *mut ListNode<T> = ptr::null_mut();
        loop {
            // SAFETY: writer lock held; the node is used before this writer unlinks it.
            let node = unsafe { self.link_after(prev).load_by_writer() }?;
            if pred(&node.value) {
                return Some((prev, NonNull::from(node)));
            }
            prev = ptr::from_ref(node).cast_mut();
        }
    }

    /// Unlinks `node` (successor of `prev`) and hands it over.
    fn unlink(
        &mut self,
        prev: *mut ListNode<T>,
        node: NonNull<ListNode<T>>,
    ) -> Retired<ListNode<T>> {
        // SAFETY: reachable under the writer lock, hence alive.
        let node_ref = unsafe { node.as_ref() };
        // SAFETY: writer lock held; the link after `prev` points at `node` (found so), owned by
        // the list (Invariant 1); `node.next` is its successor and stays (Invariant 2). Release:
        // memory-orderings note on unlinking.
        let old = unsafe { self.link_after(prev).unlink(node_ref, &node_ref.next) };
        if self.state.tail == node.as_ptr() {
            self.state.tail = prev;
        }
        let len = self.state.len - 1;
        self.set_len(len);
        old
    }

    /// [`RcuList::remove`] under this lock.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1);
    /// assert!(list.writer().remove(|v| *v == 1).is_some());
    /// ```
    pub fn remove<F: FnMut(&T) -> bool>(&mut self, pred: F) -> Option<Retired<ListNode<T>>> {
        let (prev, node) = self.find(pred)?;
        Some(self.unlink(prev, node))
    }

    /// [`RcuList::replace`] under this lock.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1);
    /// assert!(list.writer().replace(|v| *v == 1, 2).is_ok());
    /// ```
    pub fn replace<F: FnMut(&T) -> bool>(
        &mut self,
        pred: F,
        value: T,
    ) -> Result<Retired<ListNode<T>>, T> {
        let Some((prev, node)) = self.find(pred) else {
            return Err(value);
        };
        // SAFETY: reachable under the writer lock, hence alive.
        let node_ref = unsafe { node.as_ref() };
        // SAFETY: writer lock held; the copy is the `next` of the node published below.
        let new = Self::new_node(value, unsafe { Link::copy_by_writer(&node_ref.next) });
        // SAFETY: as in `unlink`, with `new.next` set to the successor. Release publishes the
        // new node (as in `push_front`); readers see the old node or the new one, both leading
        // to the successor.
        let (new, old) = unsafe { self.link_after(prev).replace(node_ref, new) };
        if self.state.tail == node.as_ptr() {
            self.state.tail = new.as_ptr();
        }
        Ok(old)
    }

    /// Unlinks every node whose value does not satisfy `keep`; returns them.
    ///
    /// ```
    /// let list = rcu_kit::RcuList::new();
    /// list.push_back(1);
    /// let removed = list.writer().retain(|_| false);
    /// assert_eq!(removed.len(), 1);
    /// ```
    pub fn retain<F: FnMut(&T) -> bool>(&mut self, mut keep: F) -> Vec<Retired<ListNode<T>>> {
        let mut out = Vec::new();
        let mut prev: *mut ListNode<T> = ptr::null_mut();
        loop {
            // SAFETY: writer lock held; the node is used before this writer unlinks it.
            let Some(node) = (unsafe { self.link_after(prev).load_by_writer() }) else {
                return out;
            };
            if keep(&node.value) {
                prev = ptr::from_ref(node).cast_mut();
            } else {
                out.push(self.unlink(prev, NonNull::from(node)));
            }
        }
    }
}

/// Iterator over an [`RcuList`], from [`RcuList::iter`].
///
/// ```
/// let list = rcu_kit::RcuList::new();
/// list.push_back(1);
/// list.push_back(2);
/// let g = rcu_kit::rcu_read_lock();
/// assert_eq!(list.iter(&g).sum::<i32>(), 3);
/// ```
pub struct Iter<'g, T> {
    next: Shared<'g, ListNode<T>>,
    guard: &'g RcuReadGuard,
}

impl<'g, T> Iterator for Iter<'g, T> {
    type Item = &'g T;

    fn next(&mut self) -> Option<&'g T> {
        // `next` was loaded under the guard borrowed for `'g` from a link reachable from the
        // list (or from a node unlinked after this walk began): the node is freed only after a
        // grace period that this critical section holds back (module docs).
        let node = self.next.as_ref()?;
        // Acquire (`Link::load`): pairs with the Release store that linked the successor.
        self.next = node.next.load(self.guard);
        Some(&node.value)
    }
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const LIVE: u64 = 0x11FE_11FE_11FE_11FE;

    /// A value that checks itself: a canary, and a payload whose words must all be equal.
    struct Checked {
        canary: u64,
        words: [u64; 4],
        drops: Arc<AtomicUsize>,
    }
    impl Checked {
        fn new(v: u64, drops: &Arc<AtomicUsize>) -> Self {
            Checked {
                canary: LIVE,
                words: [v; 4],
                drops: drops.clone(),
            }
        }
        fn check(&self) -> u64 {
            assert_eq!(self.canary, LIVE, "a reader saw a freed value");
            assert!(
                self.words.iter().all(|w| *w == self.words[0]),
                "a reader saw a torn value {:?}",
                self.words
            );
            self.words[0]
        }
    }
    impl Drop for Checked {
        fn drop(&mut self) {
            self.canary = 0xDEAD;
            self.words = [0, 1, 2, 3];
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Writers serialised only by the caller's mutex around the token: two writer threads
    /// push and pop, readers walk; every value seen is intact, and the writer state in the token
    /// (tail, len) stays consistent with the list.
    #[test]
    fn a_token_list_under_the_callers_lock() {
        let drops = Arc::new(AtomicUsize::new(0));
        let made = AtomicUsize::new(0);
        let (list, token) = RcuList::<Checked>::with_writer_token();
        let lock = std::sync::Mutex::new((token, 0u64));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(3);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu_core::rcu_read_lock();
                    for v in list.iter(&g) {
                        v.check();
                    }
                }
            });
            let writers: Vec<_> = (0..2u64)
                .map(|t| {
                    let (list, lock, drops, made) = (&list, &lock, &drops, &made);
                    s.spawn(move || {
                        for i in 0..20_000u64 {
                            if Instant::now() > deadline {
                                break;
                            }
                            let mut held = lock.lock().unwrap();
                            let (token, pushed) = &mut *held;
                            let mut w = token.writer(list);
                            if i % 3 == 2 {
                                drop(w.pop_front());
                            } else {
                                w.push_back(Checked::new(t << 32 | i, drops));
                                made.fetch_add(1, Ordering::SeqCst);
                                *pushed += 1;
                            }
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        let (mut token, _) = lock.into_inner().unwrap();
        let g = rcu_core::rcu_read_lock();
        let walked = list.iter(&g).count();
        drop(g);
        assert_eq!(walked, list.len(), "len matches the list");
        // The token's tail is the real tail: a push_back lands last.
        token
            .writer(&list)
            .push_back(Checked::new(u64::MAX, &drops));
        made.fetch_add(1, Ordering::SeqCst);
        let g = rcu_core::rcu_read_lock();
        assert_eq!(list.iter(&g).last().map(Checked::check), Some(u64::MAX));
        drop(g);
        drop(list);
        kfree_batch::kvfree_rcu_barrier();
        assert_eq!(drops.load(Ordering::SeqCst), made.load(Ordering::SeqCst));
    }

    fn panic_message(r: std::thread::Result<()>) -> String {
        test_support::panic_text(&*r.expect_err("expected a panic"))
    }

    /// On a token list the list's own writer methods would race with the token's writers, and a
    /// token must not write another list.
    #[test]
    fn token_misuse_panics_with_a_message() {
        let (list, mut token) = RcuList::with_writer_token();
        token.writer(&list).push_back(1u32);
        let msg = panic_message(std::panic::catch_unwind(|| list.push_back(2)));
        assert!(msg.contains("made with with_writer_token"), "{msg}");
        let (other, _other_token) = RcuList::<u32>::with_writer_token();
        let msg = panic_message(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || {
                token.writer(&other).push_back(3);
            },
        )));
        assert!(msg.contains("belongs to another RcuList"), "{msg}");
        let own = RcuList::<u32>::new();
        let msg = panic_message(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || {
                token.writer(&own).push_back(4);
            },
        )));
        assert!(msg.contains("belongs to another RcuList"), "{msg}");
        // Waiting for a grace period under a token writer panics as under the list's mutex.
        let msg = panic_message(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || {
                let mut w = token.writer(&list);
                let old = w.pop_front().unwrap();
                drop(old.synchronize());
            },
        )));
        assert!(msg.contains("writer lock"), "{msg}");
        assert!(!crate::writer_lock::holds_a_writer_lock(), "count restored");
        let g = rcu_core::rcu_read_lock();
        assert_eq!(list.iter(&g).count(), 0);
        assert!(other.is_empty() && own.is_empty());
        drop(g);
        kfree_batch::kvfree_rcu_barrier();
    }

    /// A token id is never handed out twice, even once the ids run out: two tokens with one id
    /// would each write the other's list, unserialised, with the wrong tail.
    #[test]
    fn token_ids_are_never_reused_after_they_run_out() {
        if test_support::child_case().as_deref() == Some("token-ids-run-out") {
            let (first, mut first_token) = RcuList::<u32>::with_writer_token();
            // Relaxed: this child process makes no other token.
            NEXT_TOKEN_ID.store(usize::MAX - 1, Ordering::Relaxed);
            let mut made = Vec::new();
            for _ in 0..4 {
                match std::panic::catch_unwind(RcuList::<u32>::with_writer_token) {
                    Ok(pair) => made.push(pair),
                    Err(e) => {
                        let msg = panic_message(Err(e));
                        assert!(msg.contains("ids exhausted"), "{msg}");
                    }
                }
            }
            for (list, _) in &made {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    first_token.writer(list).push_back(1);
                }));
                assert!(
                    r.is_err(),
                    "the first list's token writes a list made after the token ids ran out"
                );
            }
            assert!(first.is_empty());
            return;
        }
        if test_support::child_case().is_some() {
            return;
        }
        let out = test_support::run_child(
            "list::tests::token_ids_are_never_reused_after_they_run_out",
            "token-ids-run-out",
            &[],
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", test_support::stderr(&out));
    }

    #[test]
    fn order_tail_and_len_stay_consistent() {
        let l = RcuList::new();
        l.push_back(2);
        l.push_front(1);
        l.push_back(3);
        let collect = |l: &RcuList<i32>| {
            let g = rcu_core::rcu_read_lock();
            l.iter(&g).copied().collect::<Vec<_>>()
        };
        assert_eq!(collect(&l), [1, 2, 3]);
        drop(l.remove(|v| *v == 3)); // the tail
        l.push_back(4);
        assert_eq!(collect(&l), [1, 2, 4]);
        drop(l.replace(|v| *v == 4, 5)); // the tail again
        l.push_back(6);
        assert_eq!(collect(&l), [1, 2, 5, 6]);
        assert_eq!(l.retain(|v| *v > 2), 2);
        assert_eq!(collect(&l), [5, 6]);
        assert_eq!(l.retain(|_| false), 2);
        assert!(l.is_empty() && l.pop_front().is_none());
        l.push_back(7);
        assert_eq!(collect(&l), [7]);
        assert_eq!(format!("{l:?}"), "[7]");
        kfree_batch::kvfree_rcu_barrier();
    }

    /// Handles dropped while a `ListWriter` is held retire without running destructors inline:
    /// a destructor that uses the list would otherwise meet the re-entrancy panic inside the
    /// batcher, which leaks the rest of its batch.
    #[test]
    fn retiring_under_a_list_writer_runs_no_destructor_that_reenters_it() {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        static DROPPED: AtomicUsize = AtomicUsize::new(0);
        static LIST: RcuList<Reenters> = RcuList::new();
        static CELL: crate::RcuCell<Reenters> = crate::RcuCell::empty();
        struct Reenters(u32);
        impl Reenters {
            fn new(v: u32) -> Self {
                MADE.fetch_add(1, Ordering::SeqCst);
                Reenters(v)
            }
        }
        impl Drop for Reenters {
            fn drop(&mut self) {
                DROPPED.fetch_add(1, Ordering::SeqCst);
                if self.0 % 2 == 1 {
                    LIST.push_back(Reenters::new(0)); // uses the list from a destructor
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for round in 0..400u32 {
            if Instant::now() > deadline {
                break;
            }
            // Outside the writer: values that re-enter, batched for later frees.
            for i in 0..50 {
                CELL.replace(Some(Box::new(Reenters::new(round * 100 + i * 2 + 1))));
            }
            let mut w = LIST.writer();
            for i in 0..50 {
                w.push_back(Reenters::new(round * 50 + i));
            }
            while let Some(old) = w.pop_front() {
                drop(old); // kfree_rcu under the writer lock (allowed)
            }
            // RcuCell's `update` retires with kfree_rcu too (through `RetireByKfree`).
            for _ in 0..10 {
                CELL.update(|_| Some(Box::new(Reenters::new(2))));
            }
            drop(w);
            if round % 20 == 0 {
                rcu_core::synchronize_rcu(); // earlier blocks become ready for inline frees
            }
        }
        for _ in 0..4 {
            LIST.retain(|_| false);
            kfree_batch::kvfree_rcu_barrier();
        }
        CELL.take();
        LIST.retain(|_| false);
        kfree_batch::kvfree_rcu_barrier();
        assert_eq!(
            DROPPED.load(Ordering::SeqCst) + LIST.len(),
            MADE.load(Ordering::SeqCst),
            "every value is dropped once (none leaked with a batch)"
        );
    }

    /// A reader may call a writer method (it waits for the writer lock inside its critical
    /// section); a `ListWriter` holder that waits for a grace period would then wait for that
    /// reader, which waits for the holder.
    #[test]
    fn synchronize_under_a_list_writer_panics_instead_of_deadlocking() {
        if test_support::child_case().as_deref() == Some("sync-under-writer") {
            let list = RcuList::new();
            list.push_back(1u32);
            let in_reader = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                let mut w = list.writer();
                s.spawn(|| {
                    let _g = rcu_core::rcu_read_lock();
                    in_reader.wait();
                    list.push_back(2); // waits for `w` inside the critical section
                });
                in_reader.wait();
                let old = w.pop_front().unwrap();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    old.synchronize().into_value()
                }));
                drop(w);
                let msg =
                    test_support::panic_text(&*r.expect_err("synchronize under a ListWriter"));
                assert!(
                    msg.contains("holds an RcuList or RcuHashMap writer lock"),
                    "{msg}"
                );
            });
            assert_eq!(list.len(), 1);
            kfree_batch::kvfree_rcu_barrier();
            return;
        }
        if test_support::child_case().is_some() {
            return;
        }
        let out = test_support::run_child(
            "list::tests::synchronize_under_a_list_writer_panics_instead_of_deadlocking",
            "sync-under-writer",
            &[],
            std::time::Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", test_support::stderr(&out));
    }

    /// The same wait through an `RcuCell` retire strategy that waits (`RetireBySync`).
    #[test]
    fn a_waiting_retire_strategy_under_a_list_writer_panics_instead_of_deadlocking() {
        if test_support::child_case().as_deref() == Some("sync-strategy-under-writer") {
            let list = RcuList::new();
            let cell = crate::RcuCell::new(Some(Box::new(1u32)));
            let in_reader = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                let w = list.writer();
                s.spawn(|| {
                    let _g = rcu_core::rcu_read_lock();
                    in_reader.wait();
                    list.push_back(2u32); // waits for `w` inside the critical section
                });
                in_reader.wait();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    cell.replace_with(Some(Box::new(2)), rcu_core::RetireBySync)
                }));
                drop(w);
                assert!(r.is_err(), "a waiting strategy under a ListWriter panics");
            });
            assert_eq!(list.len(), 1);
            return;
        }
        if test_support::child_case().is_some() {
            return;
        }
        let out = test_support::run_child(
            "list::tests::a_waiting_retire_strategy_under_a_list_writer_panics_instead_of_deadlocking",
            "sync-strategy-under-writer",
            &[],
            std::time::Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", test_support::stderr(&out));
    }

    #[test]
    fn a_predicate_calling_back_into_the_list_panics_instead_of_deadlocking() {
        let l = RcuList::new();
        l.push_back(1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            l.remove(|_| {
                l.push_back(2);
                true
            })
        }));
        let msg = test_support::panic_text(&*r.expect_err("re-entrant writer"));
        assert!(
            msg.contains("already holds the list's writer lock"),
            "{msg}"
        );
        // The list stays usable.
        l.push_back(3);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn readers_never_see_freed_or_torn_values_and_every_node_is_freed() {
        let drops = Arc::new(AtomicUsize::new(0));
        let made = AtomicUsize::new(0);
        let list = RcuList::new();
        for i in 0..64 {
            list.push_back(Checked::new(i, &drops));
            made.fetch_add(1, Ordering::Relaxed);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut walks = 0;
                    while walks < 20_000 && Instant::now() < deadline {
                        let g = rcu_core::rcu_read_lock();
                        let seen: Vec<(&Checked, u64)> =
                            list.iter(&g).map(|v| (v, v.check())).collect();
                        // Values seen under a guard stay as they were while it is held, even
                        // when writers unlink them meanwhile.
                        std::thread::yield_now();
                        for (v, was) in seen {
                            assert_eq!(v.check(), was, "a value changed under a reader's guard");
                        }
                        walks += 1;
                    }
                });
            }
            for t in 0..2u64 {
                let (list, drops, made) = (&list, &drops, &made);
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        if Instant::now() > deadline {
                            break;
                        }
                        let v = 1000 + i * 2 + t;
                        if matches!(i % 5, 0 | 1 | 3) {
                            made.fetch_add(1, Ordering::Relaxed);
                        }
                        match i % 5 {
                            0 => list.push_front(Checked::new(v, drops)),
                            1 => list.push_back(Checked::new(v, drops)),
                            2 => drop(list.pop_front()),
                            3 => {
                                match list.replace(|x| x.words[0] % 3 == 0, Checked::new(v, drops))
                                {
                                    Ok(old) => old.call_rcu(),
                                    Err(v) => drop(v),
                                }
                            }
                            _ => {
                                if let Some(old) = list.remove(|x| x.words[0] % 2 == t) {
                                    old.kfree_rcu();
                                }
                            }
                        }
                    }
                });
            }
        });
        let left = list.len();
        drop(list);
        rcu_core::rcu_barrier();
        kfree_batch::kvfree_rcu_barrier();
        assert!(left <= made.load(Ordering::Relaxed));
        assert_eq!(
            drops.load(Ordering::SeqCst),
            made.load(Ordering::Relaxed),
            "every value made was dropped exactly once"
        );
    }
}
