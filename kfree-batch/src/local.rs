//! Per-thread front blocks: the `kfree_rcu` fast path without an atomic read-modify-write.
//!
//! # Implementation
//!
//! Each retiring thread owns a [`Front`]: up to [`FRONT_CHANS`] channels ([`FrontChan`], in
//! `chan.rs`: a free function and its context, with one open block, and the lock-free protocol
//! by which collectors take it) and a slice of the pending budget. A kind of object beyond those
//! takes the per-CPU path until one of the channels goes idle.
//!
//! A full block is detached by the owner and handed to its CPU slot — one lock CAS per ~505
//! objects, the swap out of the front made under it (`krc`, Invariant 6) — where ready-first
//! reclaim frees older blocks on the owner's thread. The blocks it takes are held until freed or
//! installed (`krc`, Invariant 5), and a block taken to recycle is installed before the
//! reclaimed blocks are freed: their destructors may retire into the same channel, and anything
//! opened there meanwhile would be overwritten.
//!
//! ## Recycling ready blocks in place, one object per retire
//!
//! Freeing a whole ready block at once overflows the allocator's thread cache (glibc's tcache
//! keeps 7 chunks per size): 498 of 505 frees then go to the arena's shared bins with an atomic
//! operation each, and the next 498 allocations come back through the arena's slow path. A
//! malloc-and-free loop costs about 19 ns per pair on a 2-vCPU x86-64 VM; 505 mallocs then 505 frees
//! cost about 48 ns per pair. So when a block of an `inline_free` channel (no drop glue: the free
//! is `dealloc` alone) fills up, the owner takes the oldest *ready* block of the same channel
//! from its CPU slot in the same locked hand-over and makes it the open block: every retire then
//! takes one ready object out of it and stores the new one in its slot, and frees the taken
//! object right after its read-side critical section. The freed chunk has the size of the
//! caller's next allocation of that type, which the thread cache hands straight back (one
//! recycled block per channel keeps every size class in balance when several types are retired).
//! A retire is then one slot read and written in one block — no second block, no budget charge
//! (the new object takes over the charge of the one it replaced), and no page changes hands:
//! once all its objects are new the block is full and handed over again.
//!
//! A channel runs dry when no ready block is waiting at hand-over: it then fills a fresh block,
//! whose allocations miss the thread cache and whose objects are later freed in bulk. Handed
//! blocks accumulate until the worker's grace-period cadence keeps them ready; if the channel
//! runs dry anyway with [`crate::krc::EXPEDITE_WAITING`] blocks waiting, the worker lags
//! (descheduled, or slower than this thread) and the owner runs the grace period itself without
//! waiting (`Domain::try_advance`: one heavy barrier; a reader in the way makes it fail, and
//! producers then leave grace periods to the worker for a moment). The worker steals open blocks
//! that sat for the drain delay (their thread stopped retiring); an exiting thread hands its own
//! over.
//!
//! ## Budget slices, and taking them back
//!
//! An appending put spends from the thread's *slice* of the pending budget ([`LOCAL_CHUNK`] at a
//! time), read and written with a plain load and store inside the put's read-side critical
//! section. A thread that stops retiring keeps its slice, so slices are taken back on demand
//! (`slice.rs` has the protocol and its orderings): when a reserve is refused, the retiring
//! thread ([`reclaim_reservations`]) takes back every CPU slot's reservation under the slot
//! locks and its own slice, and, outside a reader, claims every other thread's slice with one
//! ticket ([`claim_slices`]), waits for *one* grace period and swaps them to zero
//! ([`finish_claims`]). A barrier claims before its pass and takes after it, so the pass's grace
//! period usually covers the claims; the worker does it under memory pressure. While its slice
//! is claimed an owner's put refuses and takes the per-CPU path.
//!
//! Invariants (besides the channel's, `chan.rs`):
//! 1. The slice (the thread's unspent budget) is written by its owner — plain stores only inside
//!    a put's read-side critical section, read-modify-writes elsewhere — and swapped to zero by a
//!    reclaimer only after a grace period that began after its claim (`slice.rs`); it goes back
//!    to the budget at thread exit. In a `fork()` child the budget is recounted without the
//!    slices of the parent's other threads, which are emptied (`charges_after_fork`); their fronts
//!    stay owned, their open blocks are stolen.
//! 2. A front is owned by at most one thread (`owned`), and only its owner keys, opens, puts
//!    into and detaches its channels.
//!
//! Fronts are registered in a global lock-free list and never freed; an exiting thread hands its
//! block over, gives its budget back and releases the front for reuse.
//!
//! A thread's first retire registers it (a free front, else one allocated fallibly, and the exit
//! hook). With the heap exhausted that must not abort: the C library aborts the process when it
//! cannot allocate its record of a thread-local destructor, so registration first checks that
//! the thread can allocate a front and a little more (`rcu_core::lowmem::heap_headroom`, a
//! heuristic). Without the memory the object takes the per-CPU path and its fallbacks (park,
//! or wait for a grace period and free), and the thread's next retire tries to register again.
//!
//! A `fork()` child must clear the claims of reclaimers that did not survive the fork
//! ([`reset_claims_after_fork`]), or they would refuse their fronts' puts for good. The budget
//! recount then empties the slices of the threads that vanished and counts only the forking
//! thread's ([`charges_after_fork`]); when a destructor run by a free of ours forked, no recount
//! runs and the bytes stay in the slices, still counted, for the next reclaim to take back.

use core::cell::Cell;

use crate::batcher::Global;
use crate::chan::{stamp_stolen, FrontChan, Put};
use crate::krc::{Batch, Refused, Retired};
use crate::primitive::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use crate::slice::Slice;

/// Budget a thread reserves at a time for its front.
const LOCAL_CHUNK: usize = 16 << 10;

/// Channels one thread keeps open at once.
pub(crate) const FRONT_CHANS: usize = 4;

/// One thread's front: its channels and statistics.
#[derive(Debug)]
pub(crate) struct Front {
    chans: [FrontChan; FRONT_CHANS],
    /// The owner's unspent budget (Invariant 1; `slice.rs`).
    slice: Slice,
    /// Objects put through this front: each put queues one object, and a replacing put also
    /// frees one (owner load + store; statistics). One counter on the fast path.
    puts: AtomicU64,
    /// Puts that appended (the others replaced a ready object, which they freed).
    appended: AtomicU64,
    /// Whether a thread owns this front.
    owned: AtomicBool,
    /// Next registered front (written once before publication).
    next: AtomicPtr<Front>,
}

/// Registered fronts (Release push, Acquire walk; never freed).
static FRONTS: AtomicPtr<Front> = AtomicPtr::new(core::ptr::null_mut());

crate::primitive::rcu_thread_local! {
    static MINE: Cell<*const Front> = const { Cell::new(core::ptr::null()) };
    static EXIT: ExitHook = const { ExitHook };
}

fn fronts() -> impl Iterator<Item = &'static Front> {
    // Acquire pairs with the Release push in `register`.
    let mut p = FRONTS.load(Ordering::Acquire);
    core::iter::from_fn(move || {
        // SAFETY: registered fronts are never freed.
        let f = unsafe { p.as_ref()? };
        p = f.next.load(Ordering::Acquire);
        Some(f)
    })
}

/// The fast path of a retire: puts `r` into the calling thread's open block of its channel
/// (replacing a ready object, which it frees, or appending within the thread's budget slice).
/// Returns `false`, having done nothing, when a slow path must run first ([`try_retire`]).
#[inline(always)]
pub(crate) fn put_fast(r: &Retired) -> bool {
    let f = MINE.with(|m| m.get());
    // SAFETY: fronts are never freed.
    let Some(f) = (unsafe { f.as_ref() }) else {
        return false;
    };
    let key = r.free as usize;
    let Some(c) = f.chans.iter().find(|c| c.is(key, r.ctx)) else {
        return false;
    };
    let g = rcu_core::rcu_read_lock();
    // The slice's load and store both inside `g`'s section: a reclaimer waits for it before it
    // takes the slice (Invariant 1; `slice.rs`). Only an appending put spends from it.
    let left = f.slice.left();
    // SAFETY: we own the front (Invariant 2) and hold `g` across the call.
    let put = unsafe { c.put(r.obj, r.size, left >= r.size) };
    if let Put::Appended { .. } = put {
        f.slice.spend(left, r.size);
    }
    if let Put::Replaced { freed, .. } = put {
        debug_assert!(
            r.inline_free,
            "kfree-batch: a replacing put on a dropping channel"
        );
        // Freed before `g` drops: a `kvfree_rcu_barrier` that stole this block waits for our
        // section, so the free happens-before the barrier returns (`krc`, "What a barrier
        // covers").
        // SAFETY: `freed` left its block inside our section and its grace period is over
        // (the channel's Invariant 3); an `inline_free` channel's context encodes the layout
        // its objects were allocated with, and its free is `dealloc` alone (no user code, so
        // nothing that could block or retire inside the section).
        unsafe { std::alloc::dealloc(freed, crate::block::decode_layout(r.ctx)) };
    }
    drop(g);
    match put {
        Put::Replaced { full, .. } => {
            bump(&f.puts);
            if full {
                hand_over_full(c);
            }
            true
        }
        Put::Appended { full } => {
            bump(&f.appended);
            bump(&f.puts);
            if full {
                hand_over_full(c);
            }
            true
        }
        Put::NoBlock | Put::NoBudget => false,
    }
}

/// Statistics, owner-only writers: load + store, Relaxed (no RMW on the fast path).
#[inline(always)]
fn bump(n: &AtomicU64) {
    n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Retires `r` through the calling thread's front, running the slow paths the fast one
/// ([`put_fast`]) needs first. Returns the object back if it must take the per-CPU path (no
/// budget slice, no page for a new block, thread-local teardown).
pub(crate) fn try_retire(b: &'static Global, r: Retired, may_alloc: bool) -> Result<(), Retired> {
    if put_fast(&r) {
        return Ok(());
    }
    let f = MINE.with(|m| m.get());
    // SAFETY: fronts are never freed.
    let Some(f) = (unsafe { f.as_ref() }) else {
        return register_and_retry(b, r, may_alloc);
    };
    let key = r.free as usize;
    let Some(ci) = (0..FRONT_CHANS).find(|&i| f.chans[i].is(key, r.ctx)) else {
        return claim_chan_and_retry(b, f, r, may_alloc);
    };
    // With a block the put failed for want of budget (only we store a block into the slot, so
    // one seen now was there during the put).
    if f.chans[ci].has_blocks() {
        refill_and_retry(b, f, r, may_alloc)
    } else {
        open_and_retry(b, f, ci, r, may_alloc)
    }
}

/// The open block of `c` is full: detach it, hand it to this CPU's slot, and recycle the slot's
/// oldest ready block of the same channel as the next open block. The recycled block is installed
/// before the reclaimed blocks are freed: their destructors may retire into `c` (opening a block
/// there if it had none), and nothing may run between taking a block to recycle and installing it.
#[cold]
#[inline(never)]
fn hand_over_full(c: &FrontChan) {
    let b = crate::batcher::created();
    let may_reclaim = !rcu_core::rcu_read_lock_held();
    let cpu = rcu_core::cpu::current_cpu();
    let Some(mut added) = c.hand_over(b, cpu, may_reclaim, true) else {
        return; // a collector took it; it will free it after a grace period
    };
    crate::batcher::kick();
    let next = added.take_recycle();
    let expedite = added.expedite.take();
    // Nothing ready although many blocks wait: the worker lags (descheduled, or its cadence
    // is too slow for this thread). Run the grace period here rather than fill a fresh block,
    // whose allocations would miss the allocator's thread cache and whose objects would later
    // be freed in bulk.
    let next = next.or_else(|| expedite.and_then(|s| b.expedite_ready_of(cpu, c.key(), s)));
    if let Some(d) = next {
        let res = c.install(b, d, crate::batcher::now_ms());
        crate::batcher::count_freed(&res);
        if res.blocks == 0 {
            // The worker steals it after the drain delay if we stop retiring (pairs with its
            // fence).
            crate::batcher::kick_after_publish();
        }
    }
    crate::batcher::free_reclaimed(b, &mut added);
}

/// Gives channel `c` up: hands its open block over (recycled or not, every object in it is
/// live). Owner only.
fn release_chan(b: &'static Global, c: &FrontChan, may_reclaim: bool) {
    if let Some(mut added) = c.hand_over(b, rcu_core::cpu::current_cpu(), may_reclaim, false) {
        crate::batcher::free_reclaimed(b, &mut added);
        crate::batcher::kick();
    }
}

/// Hands the calling thread's open blocks over to its CPU slot (outside any read-side critical
/// section: ready blocks reclaimed on the way are freed here), so that a collection pass takes
/// them. The channels stay keyed; the next retire opens a block again.
pub(crate) fn hand_over_own(b: &'static Global) {
    // SAFETY: fronts are never freed.
    if let Some(f) = unsafe { mine().as_ref() } {
        for c in f.chans.iter() {
            release_chan(b, c, true);
        }
    }
}

/// No channel of the front is `r`'s: take an unused one, or one that holds no block (its blocks
/// were handed over or collected after the drain delay: the thread stopped retiring that kind).
/// With every channel busy the object takes the per-CPU path: evicting a busy channel would hand
/// over a block holding a few objects each time a thread rotates through more kinds than it has
/// channels.
#[cold]
#[inline(never)]
fn claim_chan_and_retry(
    b: &'static Global,
    f: &Front,
    r: Retired,
    may_alloc: bool,
) -> Result<(), Retired> {
    let Some(c) = f.chans.iter().find(|c| c.is_idle()) else {
        return Err(r);
    };
    c.set_key(r.free, r.ctx);
    try_retire(b, r, may_alloc)
}

#[cold]
#[inline(never)]
fn open_and_retry(
    b: &'static Global,
    f: &Front,
    ci: usize,
    r: Retired,
    may_alloc: bool,
) -> Result<(), Retired> {
    let c = &f.chans[ci];
    match c.open(
        b,
        rcu_core::cpu::current_cpu(),
        r.free,
        r.inline_free,
        may_alloc,
        crate::batcher::now_ms(),
    ) {
        Ok(()) => {
            // The worker drains it after the delay if we stop; the fence orders the block's
            // publication before our check of the worker's idle flag (pairs with its fence).
            crate::batcher::kick_after_publish();
            try_retire(b, r, may_alloc)
        }
        Err(Refused::Cap | Refused::NoPage) => Err(r),
    }
}

#[cold]
#[inline(never)]
fn refill_and_retry(
    b: &'static Global,
    f: &Front,
    r: Retired,
    may_alloc: bool,
) -> Result<(), Retired> {
    // A reclaimer holds the slice for a grace period: the per-CPU path meanwhile (a refill would
    // be taken back, and the fast path would refuse again).
    if f.slice.is_claimed() {
        return Err(r);
    }
    match b.budget.reserve(r.size, LOCAL_CHUNK.max(r.size), b.cap) {
        Some(got) => {
            f.slice.add(got);
            try_retire(b, r, may_alloc)
        }
        None => Err(r),
    }
}

/// Reclaimers' tickets (unique per claim round; 0 means unclaimed).
static TICKETS: AtomicU64 = AtomicU64::new(1);

/// Slices claimed by one reclaimer, to take after a grace period ([`finish_claims`]).
#[derive(Debug)]
pub(crate) struct Claims {
    ticket: u64,
    /// The grace period to wait for (a snapshot taken after the claims), if any were claimed.
    snap: Option<rcu_core::GpSeq>,
}

/// The calling thread's front, if it has one (null during thread-local teardown).
fn mine() -> *const Front {
    MINE.try_with(|m| m.get()).unwrap_or(core::ptr::null())
}

/// Claims the unspent slices of every other thread (`slice.rs`). The caller finishes with
/// [`finish_claims`] (it must: a claimed slice refuses its owner's fast path until then).
pub(crate) fn claim_slices(b: &Global) -> Claims {
    let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
    let me = mine();
    let mut n = 0;
    for f in fronts() {
        if !core::ptr::eq(f, me) && f.slice.claim(ticket) {
            n += 1;
        }
    }
    Claims {
        ticket,
        // Taken after the claims (their SeqCst CAS precedes its read-modify-write).
        snap: (n != 0).then(|| b.dom.get_state()),
    }
}

/// Waits for the grace period of `c`'s claims (outside any read-side critical section) and
/// gives the claimed slices' bytes back to the budget. Returns them (the caller counts the
/// round).
pub(crate) fn finish_claims(b: &Global, c: Claims) -> usize {
    let Some(s) = c.snap else { return 0 };
    if !b.dom.poll(s) {
        b.dom.wait_for(s, false);
    }
    let got: usize = fronts().map(|f| f.slice.take_claimed(c.ticket)).sum();
    b.budget.release(got);
    got
}

/// A reserve was refused: gives unspent reservations back to the budget — every CPU slot's
/// (under its lock), the caller's own slice, and, if `may_wait` (outside any read-side critical
/// section), the other threads' slices after one grace period for all of them. Returns the
/// bytes given back.
pub(crate) fn reclaim_reservations(b: &Global, may_wait: bool) -> usize {
    let mut got = b.reclaim_slot_reserves();
    // SAFETY: fronts are never freed.
    if let Some(f) = unsafe { mine().as_ref() } {
        // Our own fast path is not running (we are on a slow path), so no grace period.
        let own = f.slice.take_own();
        b.budget.release(own);
        got += own;
    }
    if may_wait {
        got += finish_claims(b, claim_slices(b));
    }
    if got != 0 {
        b.budget.count_reclaim();
    }
    got
}

/// In a `fork()` child: forgets the slice claims of reclaimers that did not survive the fork
/// (their owners' fast paths would refuse for good). Only the forking thread runs in the child,
/// and it is inside no claim round (rounds run on retire and barrier paths, not across fork;
/// a barrier whose pass ran a destructor that forked finds its claims gone and leaves the bytes
/// in the slices, still counted).
pub(crate) fn reset_claims_after_fork() {
    for f in fronts() {
        f.slice.reset_after_fork();
    }
}

#[cold]
#[inline(never)]
fn register_and_retry(b: &'static Global, r: Retired, may_alloc: bool) -> Result<(), Retired> {
    // Registering the exit hook's destructor aborts if the C library cannot allocate its record
    // of it: with no heap to spare (a heuristic: `rcu_core::lowmem`) the object takes the
    // per-CPU path, and a later retire tries again.
    if !rcu_core::lowmem::heap_headroom(REGISTER_HEADROOM) {
        return Err(r);
    }
    // Registration runs the exit hook's constructor; during thread-local teardown this fails and
    // the thread uses the per-CPU path for good.
    if EXIT.try_with(|_| ()).is_err() {
        return Err(r);
    }
    // No memory for a front: the per-CPU path, and a later retire tries again.
    let Some(f) = claim_or_register() else {
        return Err(r);
    };
    MINE.with(|m| m.set(f));
    // Pre-reserve park slots before any pressure: a headless retire that finds no memory parks
    // there (the fallback paths reserve again if this failed).
    crate::park::reserve();
    try_retire(b, r, may_alloc)
}

/// Heap a thread's registration must be able to allocate first: its front, and the C
/// library's record of the exit hook's destructor.
const REGISTER_HEADROOM: usize = core::mem::size_of::<Front>() + 1024;

/// Claims a free front or registers a new one (allocated fallibly); `None` if there is no
/// memory for one.
fn claim_or_register() -> Option<&'static Front> {
    for f in fronts() {
        // Acquire pairs with the Release store of `owned = false` in the previous owner's exit
        // hook: its last stores to the front are visible.
        if !f.owned.load(Ordering::Relaxed)
            && f.owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(f);
        }
    }
    let layout = std::alloc::Layout::new::<Front>();
    // The `heap` fault point refuses like the allocator would.
    if crate::block::inject(rcu_core::fault::Point::Heap, layout.size()) {
        return None;
    }
    // SAFETY: `Front` is not zero-sized.
    let f = unsafe { std::alloc::alloc(layout) }.cast::<Front>();
    if f.is_null() {
        return None;
    }
    // SAFETY: a fresh allocation with `Front`'s layout, not yet published (fronts are never
    // freed, so nothing frees it with another layout).
    unsafe {
        f.write(Front {
            chans: core::array::from_fn(|_| FrontChan::new()),
            slice: Slice::new(),
            puts: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            owned: AtomicBool::new(true),
            next: AtomicPtr::new(core::ptr::null_mut()),
        })
    };
    let mut head = FRONTS.load(Ordering::Relaxed);
    loop {
        // SAFETY: not yet published; ours.
        unsafe { (*f).next.store(head, Ordering::Relaxed) };
        // Release publishes the initialised front.
        match FRONTS.compare_exchange_weak(head, f, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    // SAFETY: published fronts are never freed.
    Some(unsafe { &*f })
}

/// Hands the exiting thread's blocks over and gives its budget back.
struct ExitHook;
impl Drop for ExitHook {
    fn drop(&mut self) {
        let f = MINE.with(|m| m.replace(core::ptr::null()));
        // SAFETY: fronts are never freed.
        let Some(f) = (unsafe { f.as_ref() }) else {
            return;
        };
        if let Some(b) = crate::batcher::batcher_if_started() {
            for c in f.chans.iter() {
                // The owner detaches its own block (a collector may have swapped it out already:
                // then null comes back, the channel's Invariant 1). No reclaim: thread teardown.
                release_chan(b, c, false);
                // The block is detached; the next owner starts unkeyed.
                c.clear_key();
            }
            // An RMW: a reclaimer that claimed the slice takes nothing after this (`slice.rs`).
            b.budget.release(f.slice.take_own());
        }
        // Release: the next owner sees our last stores.
        f.owned.store(false, Ordering::Release);
    }
}

/// Collector side: swaps out the open blocks of channels opened (or recycled) at least `delay_ms`
/// ago (all of them when `flush_all`) into `out`, stamping them after the swaps. Returns whether
/// younger blocks remain. The stolen blocks carry their stamp into `out`: a caller that frees a
/// block only once its state is done (`Batcher::free_ready`, then a wait for the newest one
/// left) waits for the puts in flight and, one grace period later, for the readers of the put
/// objects (`chan.rs`, Invariant 5).
pub(crate) fn steal(
    b: &Global,
    out: &mut Batch,
    flush_all: bool,
    now_ms: u64,
    delay_ms: u64,
) -> bool {
    let mut stolen = Batch::new();
    let mut open_left = false;
    for c in fronts().flat_map(|f| f.chans.iter()) {
        open_left |= c.steal(&mut stolen, flush_all, now_ms, delay_ms);
    }
    stamp_stolen(b, stolen, out, now_ms);
    open_left
}

/// In a `fork()` child (one thread): the budget bytes the fronts hold — every front's open
/// blocks, the parent's other threads' included (collectors steal and free those), and the
/// forking thread's own slice. The other threads' slices are gone with their threads.
///
/// Also empties the other threads' slices (not counted here: a later reclaim must not give
/// their bytes back a second time).
pub(crate) fn charges_after_fork() -> usize {
    // A `const` thread-local without destructor: no registration, no allocation.
    let mine = MINE.with(|m| m.get());
    let mut bytes = 0;
    for f in fronts() {
        // SAFETY: the child runs one thread.
        bytes += f
            .chans
            .iter()
            .map(|c| unsafe { c.charge_after_fork() })
            .sum::<usize>();
        let left = f.slice.take_own();
        if core::ptr::eq(f, mine) {
            // The forking thread keeps its slice: put the bytes back and count them.
            f.slice.add(left);
            bytes += left;
        }
    }
    bytes
}

/// Whether any front holds an open block (the worker's idle check, after its fence).
pub(crate) fn any_open() -> bool {
    fronts()
        .flat_map(|f| f.chans.iter())
        .any(FrontChan::has_blocks)
}

/// Objects freed from recycled blocks by their fronts' owners (statistics; a thread retiring
/// meanwhile may make it one off for a moment: its two counters are read one after the other).
pub(crate) fn freed_inline() -> u64 {
    fronts()
        .map(|f| {
            let appended = f.appended.load(Ordering::Relaxed);
            f.puts.load(Ordering::Relaxed).saturating_sub(appended)
        })
        .sum()
}

/// Objects put through fronts (statistics).
pub(crate) fn queued() -> u64 {
    fronts().map(|f| f.puts.load(Ordering::Relaxed)).sum()
}
