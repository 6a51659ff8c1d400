//! The two-argument form: objects that embed an [`RcuHead`] can always be retired, even when no
//! page can be had, by linking them through their own head (the kernel's "channel 3").
//!
//! # Implementation
//!
//! When the per-CPU block path refuses (no cached page: the two-argument form never maps pages on
//! the caller's path), the object's head records its free function and is pushed on a global
//! lock-free Treiber stack with one CAS — never blocking, never allocating. Outside a read-side
//! critical section the object is charged to the pending budget first (the caller waits when
//! it has no room: `lib.rs`); inside one it is charged to the budget when it has room and to the
//! overdraft otherwise, and goes on a second stack, so that the collector knows which count to
//! give its bytes back to (the free function returns them). The collector takes the whole stacks
//! with one swap each (no ABA: nodes are only ever popped all at once), stamps it with
//! a grace-period snapshot, waits, and frees every object through its head. A destructor that
//! panics there is contained per object (`drop_via_head`), as batch frees are
//! (`block::run_free`): the collector goes on with the rest of the list and returns every
//! object's charge.
//!
//! The head lives inside the object, so readers may still be reading the object's other fields
//! while the head is written: the head is never part of what readers inspect, which the
//! [`HasRcuHead`] contract requires.
//!
//! Memory orderings: the push CAS is Release (the head's `free` and the retire are visible to the
//! collector), the collector's swap Acquire; a `fence(SeqCst)` after the push pairs with the
//! worker's fence in its idle check.

use crate::primitive::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// A link embedded in objects retired with [`crate::kfree_rcu_head`]. Readers never look at it.
#[derive(Debug, Default)]
#[repr(C)]
pub struct RcuHead {
    next: AtomicPtr<RcuHead>,
    /// The `unsafe fn(*mut RcuHead)` that frees the containing object, as a pointer (so it keeps
    /// its provenance; never an integer); null when idle.
    free: AtomicPtr<()>,
}

impl RcuHead {
    /// A fresh head.
    #[cfg(not(rcu_loom))]
    pub const fn new() -> RcuHead {
        RcuHead {
            next: AtomicPtr::new(core::ptr::null_mut()),
            free: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
    /// A fresh head.
    #[cfg(rcu_loom)]
    pub fn new() -> RcuHead {
        RcuHead {
            next: AtomicPtr::new(core::ptr::null_mut()),
            free: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

/// Types with an embedded [`RcuHead`], retired with [`crate::kfree_rcu_head`].
/// Implement it with [`crate::impl_has_rcu_head!`].
///
/// # Safety
/// `RCU_HEAD_OFFSET` must be the byte offset of a field of type `RcuHead` itself (not a pointer
/// or reference to one) inside `Self`, aligned for `RcuHead`, and no reader may rely on that
/// field's contents: the retire path writes a whole `RcuHead` at that offset.
pub unsafe trait HasRcuHead: Send + Sized + 'static {
    /// Byte offset of the `RcuHead` field.
    const RCU_HEAD_OFFSET: usize;
}

/// Implements [`HasRcuHead`] for `$t` whose field `$field` is an [`RcuHead`].
///
/// ```
/// use kfree_batch::{impl_has_rcu_head, RcuHead};
/// struct Node { key: u64, head: RcuHead }
/// impl_has_rcu_head!(Node, head);
/// kfree_batch::kfree_rcu_head(Box::new(Node { key: 1, head: RcuHead::new() }));
/// kfree_batch::kvfree_rcu_barrier();
/// ```
///
/// The field must be an `RcuHead` itself, not something that dereferences to one (the head is
/// written in place, over the field's own bytes). Each of these is rejected at compile time:
///
/// ```compile_fail
/// use kfree_batch::{impl_has_rcu_head, RcuHead};
/// struct Node { key: u64, head: Box<RcuHead> }
/// impl_has_rcu_head!(Node, head);
/// ```
///
/// ```compile_fail
/// use kfree_batch::{impl_has_rcu_head, RcuHead};
/// struct Node { key: u64, head: std::sync::Arc<RcuHead> }
/// impl_has_rcu_head!(Node, head);
/// ```
///
/// ```compile_fail
/// use kfree_batch::{impl_has_rcu_head, RcuHead};
/// static HEAD: RcuHead = RcuHead::new();
/// struct Node { key: u64, head: &'static RcuHead }
/// impl_has_rcu_head!(Node, head);
/// ```
///
/// ```compile_fail
/// use kfree_batch::{impl_has_rcu_head, RcuHead};
/// #[repr(C, packed)]
/// struct Node { key: u8, head: RcuHead }
/// impl_has_rcu_head!(Node, head);
/// ```
#[macro_export]
macro_rules! impl_has_rcu_head {
    ($t:ty, $field:ident) => {
        const _: () = {
            // The field's type is `RcuHead` itself: `addr_of!` takes the field's place without
            // auto-deref, and raw pointers do not coerce, so a `Box<RcuHead>`, `Arc<RcuHead>`
            // or `&RcuHead` field is a type error here (a reference-returning closure would
            // accept them through deref coercion). Never called.
            #[allow(dead_code, unused_unsafe)]
            fn field_is_rcu_head(p: *const $t) -> *const $crate::RcuHead {
                // SAFETY: never called; `addr_of!` computes a field address without reading
                // or creating a reference.
                unsafe { ::core::ptr::addr_of!((*p).$field) }
            }
            let off = ::core::mem::offset_of!($t, $field);
            let head = ::core::mem::size_of::<$crate::RcuHead>();
            let align = ::core::mem::align_of::<$crate::RcuHead>();
            ::core::assert!(
                off + head <= ::core::mem::size_of::<$t>(),
                "impl_has_rcu_head!: the RcuHead field does not lie inside the type"
            );
            ::core::assert!(
                ::core::mem::align_of::<$t>() >= align && off % align == 0,
                "impl_has_rcu_head!: the RcuHead field is not aligned (packed type?)"
            );
        };
        // SAFETY: the offset is computed by `offset_of!` for a field checked above to be an
        // `RcuHead` lying inside `$t` and aligned for it.
        unsafe impl $crate::HasRcuHead for $t {
            const RCU_HEAD_OFFSET: usize = ::core::mem::offset_of!($t, $field);
        }
    };
}

/// Frees an object through its head and returns the bytes it was charged.
pub(crate) type HeadFree = unsafe fn(*mut RcuHead) -> usize;

/// Frees the `Box<T>` containing `head`; returns its heap footprint (what it was charged), also
/// when `T`'s destructor panics: the panic is contained and reported, as `block::run_free` does
/// for batches, so that it cannot unwind through the collector (which holds the busy lock) nor
/// cut the rest of the taken list off; the object's memory may then leak, nothing is freed
/// twice.
///
/// # Safety
/// `head` points into a live `Box<T>` at `T::RCU_HEAD_OFFSET`, retired and past its grace period.
pub(crate) unsafe fn drop_via_head<T: HasRcuHead>(head: *mut RcuHead) -> usize {
    // SAFETY: by the contract, the object starts RCU_HEAD_OFFSET bytes before the head.
    let obj = unsafe { head.cast::<u8>().sub(T::RCU_HEAD_OFFSET).cast::<T>() };
    #[cfg(not(rcu_loom))]
    {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the object is a live, retired `Box<T>` we own (the contract).
            drop(unsafe { Box::from_raw(obj) })
        }));
        if r.is_err() {
            // Written without allocating: frees run when memory is short.
            rcu_core::lowmem::report(format_args!(
                "kfree-batch: a destructor panicked while freeing a head-linked object; its \
                 memory may be leaked"
            ));
        }
    }
    #[cfg(rcu_loom)]
    // SAFETY: as above.
    drop(unsafe { Box::from_raw(obj) });
    crate::config::heap_footprint(core::mem::size_of::<T>(), core::mem::align_of::<T>())
}

/// Head-linked objects taken from the stack by a collector.
#[derive(Debug)]
pub(crate) struct TakenHeads {
    charged: *mut RcuHead,
    over: *mut RcuHead,
}

impl TakenHeads {
    /// Whether nothing was taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.charged.is_null() && self.over.is_null()
    }
}

/// What [`HeadStack::free_list`] freed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FreedHeads {
    /// Objects freed.
    pub(crate) objects: usize,
    /// Bytes they were charged to the pending budget.
    pub(crate) charged: usize,
    /// Bytes they were charged to the overdraft (retired inside a reader past the budget).
    pub(crate) over: usize,
}

/// The global stacks of head-linked objects: those charged to the pending budget and those held
/// past it inside read-side critical sections (the overdraft).
#[derive(Debug)]
pub(crate) struct HeadStack {
    top: AtomicPtr<RcuHead>,
    over: AtomicPtr<RcuHead>,
    /// Objects pushed and not freed yet, taken or not (statistics and the worker's idle check;
    /// recounted in a `fork()` child: `recount_after_fork`).
    pub(crate) len: AtomicUsize,
    /// Bytes charged to the pending budget for objects pushed on `top` and not freed yet (taken
    /// or not): a `fork()` child's budget recount adds them (`worker.rs`).
    pub(crate) charged: AtomicUsize,
}

impl HeadStack {
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new() -> Self {
        HeadStack {
            top: AtomicPtr::new(core::ptr::null_mut()),
            over: AtomicPtr::new(core::ptr::null_mut()),
            len: AtomicUsize::new(0),
            charged: AtomicUsize::new(0),
        }
    }
    #[cfg(rcu_loom)]
    pub(crate) fn new() -> Self {
        HeadStack {
            top: AtomicPtr::new(core::ptr::null_mut()),
            over: AtomicPtr::new(core::ptr::null_mut()),
            len: AtomicUsize::new(0),
            charged: AtomicUsize::new(0),
        }
    }

    /// Pushes `head` (of an object freed by `free`, charged `bytes`), on the overdraft stack if
    /// `overdraft`. Lock-free; never blocks or allocates.
    ///
    /// # Safety
    /// `head` belongs to a retired object that nothing else will free; `free(head)` frees it and
    /// returns the bytes it was charged (`bytes`).
    pub(crate) unsafe fn push(
        &self,
        head: *mut RcuHead,
        free: HeadFree,
        overdraft: bool,
        bytes: usize,
    ) {
        if !overdraft {
            // Relaxed: a counter read only by the fork child handler, which runs alone.
            self.charged.fetch_add(bytes, Ordering::Relaxed);
        }
        // SAFETY: the caller owns the retired object and therefore its head.
        let h = unsafe { &*head };
        h.free.store(free as *mut (), Ordering::Relaxed);
        let stack = if overdraft { &self.over } else { &self.top };
        let mut top = stack.load(Ordering::Relaxed);
        loop {
            h.next.store(top, Ordering::Relaxed);
            // Release publishes `free`/`next` to the collector's Acquire swap.
            match stack.compare_exchange_weak(top, head, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(t) => top = t,
            }
        }
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes every pushed head (the caller then owns them).
    pub(crate) fn take_all(&self) -> TakenHeads {
        // Acquire pairs with the Release of every push.
        TakenHeads {
            charged: self.top.swap(core::ptr::null_mut(), Ordering::Acquire),
            over: self.over.swap(core::ptr::null_mut(), Ordering::Acquire),
        }
    }

    /// The `fork()` child handler's recount, when the forking thread runs no collection pass
    /// (the child runs alone; no allocation): sets `len` to the objects on the stacks (only
    /// passes take objects off them, and they are serialised, so a forking pass's own taken
    /// objects are left counted: it decrements them). Those a
    /// vanished collector had taken are out of the child's reach (they leak there): counted,
    /// they would keep the child's worker passing forever. Their charge stays in `charged` (an
    /// over-count of the child's budget, never an under-count: their sizes are not recorded).
    pub(crate) fn recount_after_fork(&self) {
        let mut n = 0;
        for stack in [&self.top, &self.over] {
            // Relaxed: the child runs alone (fork copied the parent's memory as it was).
            let mut p = stack.load(Ordering::Relaxed);
            // SAFETY: nodes on a stack are retired objects that only a collector frees after
            // taking them off, and the child's only thread is not running one.
            while let Some(h) = unsafe { p.as_ref() } {
                n += 1;
                p = h.next.load(Ordering::Relaxed);
            }
        }
        self.len.store(n, Ordering::Relaxed);
    }

    /// Frees lists returned by `take_all`; returns how many objects were freed and the bytes
    /// they were charged (the caller returns them to the budget and the overdraft).
    ///
    /// # Safety
    /// The lists came from `take_all` and a grace period passed since they were taken.
    pub(crate) unsafe fn free_list(&self, taken: TakenHeads) -> FreedHeads {
        let mut out = FreedHeads::default();
        for (mut list, over) in [(taken.charged, false), (taken.over, true)] {
            while !list.is_null() {
                // SAFETY: nodes of a taken list are retired objects we own; read `next` and
                // `free` before freeing the object that contains them.
                let (next, f) = unsafe {
                    let h = &*list;
                    (
                        h.next.load(Ordering::Relaxed),
                        h.free.load(Ordering::Relaxed),
                    )
                };
                // SAFETY: `f` was stored from a `HeadFree` in `push`, as a pointer: transmuting
                // it back (same size) keeps the function pointer's provenance.
                let f: HeadFree = unsafe { core::mem::transmute::<*mut (), HeadFree>(f) };
                // SAFETY: the grace period passed (caller's contract).
                let bytes = unsafe { f(list) };
                if over {
                    out.over += bytes;
                } else {
                    out.charged += bytes;
                }
                list = next;
                out.objects += 1;
            }
        }
        self.len.fetch_sub(out.objects, Ordering::Relaxed);
        // Relaxed: as in `push`.
        self.charged.fetch_sub(out.charged, Ordering::Relaxed);
        out
    }
}
