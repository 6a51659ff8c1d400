//! Park slots and the spill: where a headless retire goes when no batching memory can be had.
//!
//! Outside a read-side critical section a thread parks objects in its own slots and, when they
//! are all taken, waits for *one* grace period that frees every one of them, so that memory
//! exhaustion costs one grace period per [`PARK_SLOTS`] objects instead of one per object
//! (the kernel's "try harder before falling back"). Inside a read-side critical section a thread
//! can neither wait (it would wait for itself) nor free early: it parks, and past its slots it
//! *spills* into memory from the system allocator.
//!
//! # Implementation
//!
//! **Arrays.** Each thread that retires objects gets, at its first `kfree_rcu`, an array of
//! [`PARK_SLOTS`] slots mapped from the page layer *before* any pressure (pre-reserved; a mapping
//! failure there is reported as "no slots", never an abort). The array is memory the batcher
//! already holds when pressure comes: two pages per thread, counted by the page layer like every
//! page. Arrays are registered in a global lock-free list and never freed; a thread that exits
//! gives its array back for reuse, and anything still parked in it is finished by the worker.
//! The give-back is a thread-local destructor, whose registration makes the C library allocate
//! (and abort the process if it cannot): a thread that adopts an array with no heap to spare
//! (`rcu_core::lowmem::heap_headroom`) does not register it and keeps the array for good, as a
//! thread adopting one during thread-local teardown does; the worker still sweeps it.
//! An object parked outside a reader is charged to the pending budget (its bytes, in the slot's
//! `bytes`), so the pending cap bounds it like a batched one; inside a reader it is charged to
//! the budget when it has room and to the *overdraft* otherwise (`config.rs`, Invariant 3: the
//! object must be held somewhere, and `stats().overdraft_bytes` shows it). The slot (or spill
//! node) keeps the encoded charge, and whoever frees the object returns it to the count it
//! came from.
//!
//! **Slots.** The owner fills a slot with the object, its free function and context, `snap`
//! (the retirer's own `get_state()`, taken after its unpublish) and the bytes charged.
//! Whoever frees a parked object — a collector (the worker or `kvfree_rcu_barrier`, serialised
//! by the worker's busy lock), or the owner itself ([`drain_own`]) — first claims the slot with a
//! CAS and checks `snap` again after the claim (`park_slot.rs`, the protocol and its orderings).
//!
//! **Owner drain.** When every slot is taken outside a reader, the owner waits for the newest
//! `snap` among its slots (one grace period, shared with the worker's) and frees every slot whose
//! state completed — all of them, since all were stamped before the wait. Destructors run there;
//! one that retires again may park but does not drain recursively (it waits for its own grace
//! period instead), and one that calls `kvfree_rcu_barrier` panics (`in_own_sweep`): the barrier
//! waits for claimed slots. For the same reason the drain is a no-barrier scope of rcu-core
//! (`rcu_barrier` there panics, `may_block` is false): a barrier in a `call_rcu` callback may be
//! waiting for those slots.
//!
//! **Spill.** Inside a reader with every slot taken, the object goes into a node allocated from
//! the system allocator (a failed allocation aborts like any Rust allocation), stamped like a
//! slot and pushed on a global lock-free stack (Release CAS). Only collectors take nodes: one
//! Acquire swap takes the whole stack; nodes whose state completed are freed with their objects,
//! the rest are pushed back. The first spill of the process is reported through rcu-core's stall
//! hook (`StallKind::RetireSpilled`). A node keeps its object's charge, returned when the collector
//! frees it. Spilled objects count in `PARKED_NOW`, so the worker's idle
//! check sees them and its pass — which waits for the newest parked state, i.e. for the end of
//! the retiring section — frees them after the guard drops.
//!
//! **fork().** A freer records each slot it claims in a thread-local list (`MY_CLAIMS`, nodes on
//! its stack) from before the claim until after the slot's final store. The child handler
//! always empties the slots claimed by other threads — they do not exist in the child, and
//! collectors would wait for their claims forever; their objects, which the parent frees, leak
//! in the child — and leaves the forking thread's own claims (a destructor its free runs forked:
//! it finishes that free in the child and counts it). Unless the forking thread runs a
//! collector itself, the child recounts ([`recount_after_fork`]): `PARKED_NOW` and each array's
//! count become the objects in slots (claimed by the forking thread included) and on the spill
//! stack; spill nodes a vanished collector had taken off the stack are out of reach in the
//! child and leak there, uncounted (else the child's worker would see work it can never do).
//! A forking collector decrements the counts for what it goes on freeing, and no other
//! collector had taken anything (they are serialised). When the forking thread runs no free of
//! ours, the budget recount adds the charges of the objects in slots and on the spill stack.
//!
//! Invariants:
//! 1. Exactly one freer claims a parked object (`park_slot.rs`, Invariant 1).
//! 2. A parked or spilled object is freed only once its `snap` has completed (for a slot,
//!    checked after the claim: `park_slot.rs`, Invariant 2).
//! 3. Collectors wait for slots claimed by an owner's drain, so `kvfree_rcu_barrier` returns only
//!    after every object parked before it is freed.
//! 4. Spill nodes are freed only by the collector, which is the only one taking them.

use core::alloc::Layout;
use core::ptr::NonNull;

use rcu_core::GpSeq;

use crate::block::{FreeFn, PAGE_SIZE};
use crate::park_slot::ParkSlot;
use crate::primitive::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Pages per park array.
const ARRAY_PAGES: usize = 2;
/// Park slots per thread: headless objects a thread holds per grace period when no batching
/// memory can be had (outside a reader, it waits for one grace period each time they are all
/// taken; inside one, it spills past them).
pub const PARK_SLOTS: usize = (ARRAY_PAGES * PAGE_SIZE - 3 * core::mem::size_of::<usize>())
    / core::mem::size_of::<ParkSlot>();

/// A thread's park slots (exactly `ARRAY_PAGES` pages).
#[repr(C)]
struct ParkArray {
    next: AtomicPtr<ParkArray>,
    owned: AtomicBool,
    parked: AtomicUsize,
    slots: [ParkSlot; PARK_SLOTS],
}

const _: () = assert!(core::mem::size_of::<ParkArray>() <= ARRAY_PAGES * PAGE_SIZE);

/// Registered arrays (Release push, Acquire walk; never freed).
static ARRAYS: AtomicPtr<ParkArray> = AtomicPtr::new(core::ptr::null_mut());
/// Objects parked or spilled right now, over all threads.
pub(crate) static PARKED_NOW: AtomicUsize = AtomicUsize::new(0);
/// Objects ever parked in slots.
pub(crate) static PARKED_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Grace periods owners waited for to drain their full arrays.
static PARK_WAITS: AtomicU64 = AtomicU64::new(0);

crate::primitive::rcu_thread_local! {
    static MINE: core::cell::Cell<*const ParkArray> = const { core::cell::Cell::new(core::ptr::null()) };
    static RELEASE: Release = const { Release };
    /// Set while this thread frees its own parked objects (`drain_own`).
    static OWN_SWEEP: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    /// The slots this thread has claimed and is freeing (`sweep_array`), newest first: the
    /// `fork()` child handler leaves those claims, which this thread finishes in the child.
    static MY_CLAIMS: core::cell::Cell<*const MyClaim> = const { core::cell::Cell::new(core::ptr::null()) };
}

/// Gives the thread's array back at exit.
struct Release;
impl Drop for Release {
    fn drop(&mut self) {
        let a = MINE.with(|m| m.replace(core::ptr::null()));
        if !a.is_null() {
            // SAFETY: arrays are never freed.
            // Release: the next owner sees our last slot writes.
            unsafe { (*a).owned.store(false, Ordering::Release) };
        }
    }
}

fn arrays() -> impl Iterator<Item = &'static ParkArray> {
    // Acquire pairs with the Release push in `reserve`.
    let mut p = ARRAYS.load(Ordering::Acquire);
    core::iter::from_fn(move || {
        // SAFETY: registered arrays are never freed.
        let a = unsafe { p.as_ref()? };
        p = a.next.load(Ordering::Acquire);
        Some(a)
    })
}

/// The `fork()` child handler, always (no allocation): empties the slots that threads which do
/// not exist in the child had claimed to free (their objects leak in the child;
/// [`ParkSlot::release_claim_after_fork`]), and keeps the counts of parked objects in step. A
/// slot the forking thread itself claimed (a destructor that its free runs forked) is left: that
/// thread goes on in the child, finishes the free, empties the slot and counts it.
pub(crate) fn release_vanished_claims_after_fork() {
    for a in arrays() {
        for slot in a.slots.iter() {
            if !claimed_by_me(slot) && slot.release_claim_after_fork() {
                // Relaxed: the child runs alone.
                a.parked.fetch_sub(1, Ordering::Relaxed);
                PARKED_NOW.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The `fork()` child handler's recount (no allocation; after
/// [`release_vanished_claims_after_fork`]; the forking thread runs no collector): returns the
/// bytes charged to the budget (not the overdraft's) for the objects parked in slots and not
/// claimed, and on the spill stack, which the child frees and uncharges. With `set_counts`,
/// also sets the counts of parked objects (each array's and `PARKED_NOW`) to those objects and
/// the ones in slots the forking thread claimed (it decrements them when it finishes). Spill
/// nodes a vanished collector had taken off the stack are out of the child's reach (they leak
/// there, never uncharged): counted in neither, or the child's worker would see work it can
/// never do.
pub(crate) fn recount_after_fork(set_counts: bool) -> usize {
    let (mut bytes, mut now) = (0, 0);
    for a in arrays() {
        let mut parked = 0;
        for slot in a.slots.iter() {
            let (b, full) = slot.charge_after_fork();
            // A charge to the overdraft is not in the budget (config.rs, Invariant 3).
            if !crate::config::is_overdraft(b) {
                bytes += b;
            }
            parked += usize::from(full);
        }
        if set_counts {
            // Relaxed: the child runs alone.
            a.parked.store(parked, Ordering::Relaxed);
        }
        now += parked;
    }
    let mut p = SPILL.load(Ordering::Relaxed);
    // SAFETY: nodes on the stack are freed only by a collector, and the child's only thread is
    // not running one (the caller runs this only outside a collection pass).
    while let Some(n) = unsafe { p.as_ref() } {
        if !crate::config::is_overdraft(n.charge) {
            bytes += n.charge;
        }
        now += 1;
        p = n.next;
    }
    if set_counts {
        PARKED_NOW.store(now, Ordering::Relaxed);
    }
    bytes
}

/// A slot this thread has claimed to free, linked to the one claimed before it (a destructor
/// that a free runs may retire and drain its own array: claims nest). Lives on the freer's stack
/// for the duration of the claim; [`MY_CLAIMS`] points to the newest.
struct MyClaim {
    slot: *const ParkSlot,
    prev: *const MyClaim,
}

/// Pops a [`MyClaim`] when the free ends, also by unwinding.
struct PopClaim(*const MyClaim);
impl Drop for PopClaim {
    fn drop(&mut self) {
        MY_CLAIMS.with(|c| c.set(self.0));
    }
}

/// Whether the calling thread has claimed `slot` (is inside its `free_if_done`).
fn claimed_by_me(slot: &ParkSlot) -> bool {
    let mut p = MY_CLAIMS.with(|c| c.get());
    // SAFETY: the list's nodes live on this thread's stack, each until its `PopClaim` unlinks it.
    while let Some(c) = unsafe { p.as_ref() } {
        if core::ptr::eq(c.slot, slot) {
            return true;
        }
        p = c.prev;
    }
    false
}

/// Makes sure the calling thread has park slots (call before any pressure). Returns whether it
/// has them.
#[inline]
pub(crate) fn reserve() -> bool {
    if !MINE.with(|m| m.get()).is_null() {
        return true;
    }
    reserve_slow()
}

#[cold]
#[inline(never)]
fn reserve_slow() -> bool {
    // Reuse an array given back by an exited thread.
    for a in arrays() {
        if !a.owned.load(Ordering::Relaxed)
            && a.owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return adopt(a);
        }
    }
    // The `park` fault point refuses like the page layer would ("no slots").
    if crate::block::inject(rcu_core::fault::Point::Park, ARRAY_PAGES * PAGE_SIZE) {
        return false;
    }
    let Some(page) = slab_backend::page::try_alloc_pages(ARRAY_PAGES) else {
        return false;
    };
    let a = page.as_ptr().cast::<ParkArray>();
    // SAFETY: fresh zeroed pages (mmap) are a valid ParkArray: null pointers, zero integers,
    // `false`; we set `owned` before publishing.
    unsafe { (*a).owned.store(true, Ordering::Relaxed) };
    let mut head = ARRAYS.load(Ordering::Relaxed);
    loop {
        // SAFETY: not yet published; ours.
        unsafe { (*a).next.store(head, Ordering::Relaxed) };
        // Release publishes the initialised array to collectors.
        match ARRAYS.compare_exchange_weak(head, a, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    // SAFETY: published arrays are never freed.
    adopt(unsafe { &*a })
}

fn adopt(a: &'static ParkArray) -> bool {
    MINE.with(|m| m.set(a));
    // Registers the destructor; fails only during thread-local teardown (the array then stays
    // owned by this thread for good, which is harmless). The C library aborts the process if it
    // cannot allocate its record of the destructor, so with no heap to spare (a heuristic:
    // `rcu_core::lowmem`) it is not touched at all, and the array stays owned the same way.
    if rcu_core::lowmem::heap_headroom(RELEASE_HEADROOM) {
        let _ = RELEASE.try_with(|_| ());
    }
    true
}

/// Heap the calling thread must be able to allocate before it touches `RELEASE` (whose first
/// touch makes the C library allocate its record of the destructor).
const RELEASE_HEADROOM: usize = 1024;

/// Parks `obj` (its encoded charge `bytes`: `Budget::charge_in_reader`) in the calling thread's
/// slots.
/// Returns `false` if every slot is taken or the thread has no slots.
pub(crate) fn park(obj: *mut u8, free: FreeFn, ctx: *const (), snap: GpSeq, bytes: usize) -> bool {
    let a = MINE.with(|m| m.get());
    // SAFETY: arrays are never freed.
    let Some(a) = (unsafe { a.as_ref() }) else {
        return false;
    };
    for s in a.slots.iter() {
        if s.fill(obj, free, ctx, snap, bytes) {
            a.parked.fetch_add(1, Ordering::Relaxed);
            PARKED_NOW.fetch_add(1, Ordering::Relaxed);
            PARKED_TOTAL.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// Whether the calling thread is freeing its own parked objects (a destructor running inside
/// [`drain_own`]).
pub(crate) fn in_own_sweep() -> bool {
    OWN_SWEEP.with(|c| c.get())
}

/// Clears `OWN_SWEEP` when the drain ends, also by unwinding.
struct OwnSweep;
impl Drop for OwnSweep {
    fn drop(&mut self) {
        OWN_SWEEP.with(|c| c.set(false));
    }
}

/// Outside a read-side critical section, with every slot of the calling thread taken: waits for
/// one grace period covering all of them and frees them (module docs, "Owner drain"). Returns
/// whether a slot is free afterwards. Not re-entrant (see [`in_own_sweep`]).
pub(crate) fn drain_own(dom: &rcu_core::raw::Domain) -> bool {
    debug_assert!(!rcu_core::rcu_read_lock_held() && !in_own_sweep());
    let a = MINE.with(|m| m.get());
    // SAFETY: arrays are never freed.
    let Some(a) = (unsafe { a.as_ref() }) else {
        return false;
    };
    if let Some(s) = newest_of(a) {
        if !dom.poll(s) {
            dom.wait_for(s, false);
            PARK_WAITS.fetch_add(1, Ordering::Relaxed);
        }
    }
    OWN_SWEEP.with(|c| c.set(true));
    let _clear = OwnSweep;
    // Collectors (a barrier, perhaps in a `call_rcu` callback) wait for the slots claimed here:
    // no destructor below may wait for callbacks (`batcher::freeing` has the argument).
    let _scope = rcu_core::raw::enter_no_barrier(crate::batcher::NO_BARRIER_WHY);
    let n = sweep_array(a, dom, false);
    // Counted here: a collector pass counts only what it frees itself.
    crate::batcher::FREED.fetch_add(n as u64, Ordering::Relaxed);
    a.slots.iter().any(ParkSlot::is_empty)
}

/// The newest snapshot among `a`'s parked objects.
fn newest_of(a: &ParkArray) -> Option<GpSeq> {
    a.slots
        .iter()
        .filter_map(ParkSlot::parked_snap)
        .reduce(|n, s| crate::krc::newer(Some(n), s))
}

/// The newest snapshot among parked and spilled objects, if any (collector only: spill nodes
/// are freed only by the collector, Invariant 4).
pub(crate) fn newest_snap() -> Option<GpSeq> {
    if PARKED_NOW.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut newest: Option<GpSeq> = None;
    for a in arrays() {
        if a.parked.load(Ordering::Relaxed) == 0 {
            continue;
        }
        if let Some(s) = newest_of(a) {
            newest = Some(crate::krc::newer(newest, s));
        }
    }
    // Acquire pairs with the Release push in `spill`: the nodes' fields are visible.
    let mut p = SPILL.load(Ordering::Acquire);
    // SAFETY: nodes on the stack are freed only by the collector, which is the caller.
    while let Some(n) = unsafe { p.as_ref() } {
        newest = Some(crate::krc::newer(newest, GpSeq::from_raw(n.snap)));
        p = n.next;
    }
    newest
}

/// Frees every parked and spilled object whose grace period is over (collector only), waiting
/// for slots an owner is freeing (Invariant 3). Returns how many it freed.
pub(crate) fn sweep(dom: &rcu_core::raw::Domain) -> usize {
    if PARKED_NOW.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let mut n = 0;
    for a in arrays() {
        if a.parked.load(Ordering::Relaxed) == 0 {
            continue;
        }
        n += sweep_array(a, dom, true);
    }
    n + sweep_spill(dom)
}

/// Frees the objects of `a` whose grace period is over (Invariants 1 and 2); with
/// `wait_claimed`, first waits for slots another freer claimed. Returns how many it freed.
fn sweep_array(a: &ParkArray, dom: &rcu_core::raw::Domain, wait_claimed: bool) -> usize {
    let mut n = 0;
    for s in a.slots.iter() {
        // Recorded before the claim and dropped after the slot's final store: a fork from a
        // destructor `free_if_done` runs sees this claim as the forking thread's own.
        let claim = MyClaim {
            slot: s,
            prev: MY_CLAIMS.with(|c| c.get()),
        };
        MY_CLAIMS.with(|c| c.set(&claim));
        let pop = PopClaim(claim.prev);
        // SAFETY: every object parked in a slot was retired before its state was taken (`park`'s
        // callers), and its channel's free function frees it.
        let freed = unsafe { s.free_if_done(dom, wait_claimed) };
        drop(pop);
        if let Some(charge) = freed {
            // To the budget or the overdraft, as it was charged.
            crate::batcher::uncharge(charge);
            a.parked.fetch_sub(1, Ordering::Relaxed);
            PARKED_NOW.fetch_sub(1, Ordering::Relaxed);
            n += 1;
        }
    }
    n
}

/// Grace periods owners waited for to drain their full arrays (statistics).
pub(crate) fn park_waits() -> u64 {
    PARK_WAITS.load(Ordering::Relaxed)
}

// --- Spill -----------------------------------------------------------------------------------

/// One spilled object (immutable once pushed, except `next` while the collector owns it).
struct SpillNode {
    next: *mut SpillNode,
    obj: *mut u8,
    free: FreeFn,
    ctx: *const (),
    snap: u64,
    /// The object's encoded charge (`Budget::charge_in_reader`).
    charge: usize,
}

const NODE: Layout = Layout::new::<SpillNode>();

/// Spilled objects (Release push, Acquire swap by the collector).
static SPILL: AtomicPtr<SpillNode> = AtomicPtr::new(core::ptr::null_mut());
/// Objects ever spilled.
static SPILLED_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Bytes of spill nodes now, and the most seen.
static SPILL_BYTES: AtomicUsize = AtomicUsize::new(0);
static SPILL_PEAK: AtomicUsize = AtomicUsize::new(0);
/// Whether the first spill was reported.
static SPILL_REPORTED: AtomicBool = AtomicBool::new(false);

/// Inside a read-side critical section, with every park slot taken and no batching memory: keeps
/// `obj` (`snap` taken after its unpublish) in a node from the system
/// allocator until a collector frees it after its grace period (module docs, "Spill"). Aborts
/// only if the system allocator itself fails, like any Rust allocation.
pub(crate) fn spill(obj: *mut u8, free: FreeFn, ctx: *const (), snap: GpSeq, charge: usize) {
    // SAFETY: `NODE` has a non-zero size.
    let p = unsafe { std::alloc::alloc(NODE) }.cast::<SpillNode>();
    if p.is_null() {
        std::alloc::handle_alloc_error(NODE);
    }
    let mut head = SPILL.load(Ordering::Relaxed);
    // SAFETY: a fresh allocation of `NODE`, ours until published.
    unsafe {
        p.write(SpillNode {
            next: head,
            obj,
            free,
            ctx,
            snap: snap.raw(),
            charge,
        })
    };
    loop {
        // Release publishes the node's fields to the collector's Acquire swap or walk.
        match SPILL.compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => {
                head = h;
                // SAFETY: not yet published; ours.
                unsafe { (*p).next = h };
            }
        }
    }
    PARKED_NOW.fetch_add(1, Ordering::Relaxed);
    SPILLED_TOTAL.fetch_add(1, Ordering::Relaxed);
    let now = SPILL_BYTES.fetch_add(NODE.size(), Ordering::Relaxed) + NODE.size();
    SPILL_PEAK.fetch_max(now, Ordering::Relaxed);
    if !SPILL_REPORTED.load(Ordering::Relaxed) && !SPILL_REPORTED.swap(true, Ordering::Relaxed) {
        report_spill();
    }
}

#[cold]
#[inline(never)]
fn report_spill() {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    // The kernel's copy of the thread name: no allocation (memory is short here).
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into `buf`.
    unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    rcu_core::report_stall(&rcu_core::StallReport {
        kind: rcu_core::StallKind::RetireSpilled,
        thread_name: rcu_core::ThreadName::new(core::str::from_utf8(&buf[..end]).unwrap_or("")),
        tid,
        duration: std::time::Duration::ZERO,
        gp: rcu_core::raw::global_domain().current(),
        nesting: 0,
    });
}

/// Frees the spilled objects whose grace period is over and their nodes; pushes the others back
/// (collector only, Invariant 4). Returns how many it freed.
fn sweep_spill(dom: &rcu_core::raw::Domain) -> usize {
    // Acquire pairs with the Release push in `spill`.
    let mut p = SPILL.swap(core::ptr::null_mut(), Ordering::Acquire);
    let (mut keep, mut keep_tail): (*mut SpillNode, *mut SpillNode) =
        (core::ptr::null_mut(), core::ptr::null_mut());
    let mut n = 0;
    while let Some(node) = NonNull::new(p) {
        let node = node.as_ptr();
        // SAFETY: taken from the stack: ours (Invariant 4).
        let (next, obj, free, ctx, snap, charge) = unsafe {
            (
                (*node).next,
                (*node).obj,
                (*node).free,
                (*node).ctx,
                (*node).snap,
                (*node).charge,
            )
        };
        p = next;
        if dom.poll(GpSeq::from_raw(snap)) {
            // SAFETY: retired, spilled after its unpublish, its grace period is over, freed once.
            unsafe { crate::block::run_free(free, ctx, &[obj]) };
            // SAFETY: allocated in `spill` with `NODE`; nothing refers to it any more.
            unsafe { std::alloc::dealloc(node.cast(), NODE) };
            crate::batcher::uncharge(charge);
            SPILL_BYTES.fetch_sub(NODE.size(), Ordering::Relaxed);
            PARKED_NOW.fetch_sub(1, Ordering::Relaxed);
            n += 1;
        } else {
            // SAFETY: ours.
            unsafe { (*node).next = keep };
            if keep.is_null() {
                keep_tail = node;
            }
            keep = node;
        }
    }
    if !keep.is_null() {
        let mut head = SPILL.load(Ordering::Relaxed);
        loop {
            // SAFETY: the kept chain is ours until pushed back.
            unsafe { (*keep_tail).next = head };
            // Release: the chain's links, as in `spill`.
            match SPILL.compare_exchange_weak(head, keep, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
    }
    n
}

/// Objects ever spilled, spill bytes now, and the most seen (statistics).
pub(crate) fn spill_stats() -> (u64, u64, u64) {
    (
        SPILLED_TOTAL.load(Ordering::Relaxed),
        SPILL_BYTES.load(Ordering::Relaxed) as u64,
        SPILL_PEAK.load(Ordering::Relaxed) as u64,
    )
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::{Duration, Instant};

    const N: usize = 20_000;
    static FREES: [AtomicU32; N + 1] = [const { AtomicU32::new(0) }; N + 1];
    static SNAPS: [AtomicU64; N + 1] = [const { AtomicU64::new(0) }; N + 1];
    static EARLY: AtomicU32 = AtomicU32::new(0);

    /// Objects are ids carried in the pointer (never dereferenced).
    unsafe fn count_free(_ctx: *const (), objs: &[*mut u8]) {
        let dom = rcu_core::raw::global_domain();
        for &p in objs {
            let id = p as usize;
            if !dom.poll(GpSeq::from_raw(SNAPS[id].load(Ordering::Relaxed))) {
                EARLY.fetch_add(1, Ordering::Relaxed);
            }
            FREES[id].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The owner parks and drains its full array while a collector sweeps the same array: every
    /// object is freed exactly once, never before its state completed (the claim protocol,
    /// Invariants 1-3). Bounded in count and time.
    #[test]
    fn owner_drain_and_collector_free_each_object_once() {
        let dom = rcu_core::raw::global_domain();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let collector = {
            let done = done.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                while !done.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(60) {
                    sweep(dom);
                    std::thread::yield_now();
                }
            })
        };
        let owner = std::thread::spawn(move || {
            assert!(reserve(), "no park array");
            let t = Instant::now();
            for (id, snap_of) in SNAPS.iter().enumerate().skip(1) {
                assert!(t.elapsed() < Duration::from_secs(60), "owner stuck");
                // Not a real pointer: an id the free function counts.
                let obj = id as *mut u8;
                loop {
                    let snap = dom.get_state();
                    snap_of.store(snap.raw(), Ordering::Relaxed);
                    if park(obj, count_free, core::ptr::null(), snap, 0) {
                        break;
                    }
                    if !drain_own(dom) {
                        std::thread::yield_now();
                    }
                }
            }
        });
        owner.join().unwrap();
        done.store(true, Ordering::Release);
        collector.join().unwrap();
        dom.synchronize(false);
        sweep(dom);
        assert_eq!(
            EARLY.load(Ordering::Relaxed),
            0,
            "freed before its grace period"
        );
        for (id, f) in FREES.iter().enumerate().skip(1) {
            assert_eq!(
                f.load(Ordering::Relaxed),
                1,
                "object {id} freed a wrong number of times"
            );
        }
        assert!(park_waits() > 0);
    }
}
