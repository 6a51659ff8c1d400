//! The model address space: `Mm`s with an RCU-protected copy-on-write VMA array, VMAs with
//! the per-VMA lock folded into a refcount, the reader side (`lock_vma_under_rcu`) and the
//! writer-side lock primitives. Mapper operations are in `mapper.rs`, the run in `model.rs`.
//!
//! # The per-VMA lock (after "reimplement per-vma lock as a refcount", 2025)
//!
//! `vm_refcnt` is 0 while a VMA is detached (free, or being set up), 1 once attached, plus one
//! per reader holding it read-locked, plus [`VMA_LOCK_OFFSET`] while a writer excludes readers.
//! `vm_lock_seq == mm.mm_lock_seq` means "write-locked in the current mmap write epoch"; the epoch
//! ends when the mmap writer bumps `mm_lock_seq`, which unlocks every VMA it locked at once.
//!
//! Readers (fault threads) never block on a VMA: any doubt falls back to the mm-wide lock.
//!
//! # Memory safety of the reader
//!
//! A reader dereferences a VMA pointer loaded from a VMA array inside a read-side critical
//! section. Whatever the mode, the memory is a valid [`Vma`] for as long as that section lasts:
//! in `typesafe` mode because the cache is `SLAB_TYPESAFE_BY_RCU` with a ctor (the object may be
//! a *different* VMA by then, which is what the revalidation is for), in `call-rcu` and
//! `kfree-rcu` modes because a VMA goes back to its cache only after a grace period that began
//! after it was unpublished. Once the reader holds a reference (`vm_refcnt` raised from a non-zero
//! value), the VMA cannot be detached or freed until the reference is dropped, so it stays valid
//! outside the critical section too. Every field a reader may look at is atomic, so even a
//! recycled VMA being re-initialised concurrently is read without a data race.
//!
//! # Memory orderings (each pair named at its site)
//! * `Mm::tree`: writer `swap(AcqRel)` publishes a fully built array ↔ reader `load(Acquire)`.
//! * `vm_refcnt`: attach `store(1, Release)` after full initialisation ↔ reader `inc_not_zero`
//!   `Acquire`; reader `put` `Release` ↔ writer's `Acquire` wait for readers to drain;
//!   `vma_start_write`'s final `fetch_sub(Release)` ↔ reader `inc` `Acquire` (the reader then sees
//!   the new `vm_lock_seq`).
//! * `mm_lock_seq`: `fetch_add(Release)` at mmap write lock and unlock ↔ reader `load(Acquire)`
//!   in the recheck (a reader that sees the epoch ended sees everything the writer did in it).
//! * Statistics and the fields guarded by the protocol above are `Relaxed`.

#![allow(dead_code)]

use core::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rcu_kit::{call_rcu, kfree_rcu_cache, rcu_read_lock, KmemCache, RcuReadGuard};

use crate::model::{FaultStats, MapStats, Mode};

/// The writer bit of `vm_refcnt` (the kernel's `VMA_LOCK_OFFSET`).
pub(crate) const VMA_LOCK_OFFSET: u32 = 0x4000_0000;
/// Readers may not raise `vm_refcnt` to this or beyond (a writer excludes them).
pub(crate) const VMA_REF_LIMIT: u32 = VMA_LOCK_OFFSET - 1;
/// `vm_lock_seq` of a VMA not write-locked in any epoch.
const SEQ_NONE: u64 = u64::MAX;
/// Model page size.
pub(crate) const PAGE: u64 = 4096;
/// Every mm's address space starts here (like processes forked from one parent, all mms share
/// one layout, which is what makes a VMA recycled into another mm dangerous).
pub(crate) const BASE: u64 = 0x7f00_0000_0000;
/// Pages of address space per target VMA.
pub(crate) const PAGES_PER_VMA: usize = 6;
/// Largest new mapping, in pages.
pub(crate) const MAX_MAP_PAGES: u64 = 8;
/// Walk retries after finding a detached VMA before falling back.
pub(crate) const DETACHED_RETRIES: u32 = 8;

/// A VMA. Every field is atomic because a reader may look at a VMA that is being recycled.
#[derive(Debug)]
pub(crate) struct Vma {
    /// 0 = detached; 1 = attached; +1 per reader; +[`VMA_LOCK_OFFSET`] while a writer waits.
    pub(crate) vm_refcnt: AtomicU32,
    /// The mmap write epoch in which this VMA was write-locked, or [`SEQ_NONE`].
    pub(crate) vm_lock_seq: AtomicU64,
    /// The owning mm (an `Arc<Mm>` pointer), null in a never-used object.
    pub(crate) vm_mm: AtomicPtr<Mm>,
    pub(crate) vm_start: AtomicU64,
    pub(crate) vm_end: AtomicU64,
    pub(crate) vm_flags: AtomicU32,
    pub(crate) vm_pgoff: AtomicU64,
    /// Identity of this allocation (unique per alloc; the shadow page table records it).
    pub(crate) stamp: AtomicU64,
    /// Faults served through this VMA (the "touch").
    pub(crate) faults: AtomicU64,
}

/// The cache ctor: runs once per object when a slab is made, never on reuse. It puts the lock
/// state in its free form (detached, not write-locked); every free returns an object in it.
fn vma_ctor() -> Vma {
    Vma {
        vm_refcnt: AtomicU32::new(0),
        vm_lock_seq: AtomicU64::new(SEQ_NONE),
        vm_mm: AtomicPtr::new(core::ptr::null_mut()),
        vm_start: AtomicU64::new(0),
        vm_end: AtomicU64::new(0),
        vm_flags: AtomicU32::new(0),
        vm_pgoff: AtomicU64::new(0),
        stamp: AtomicU64::new(0),
        faults: AtomicU64::new(0),
    }
}

/// A VMA pointer that may sit in a VMA array (arrays travel to the kfree_rcu worker).
#[derive(Clone, Copy, Debug)]
pub(crate) struct VmaPtr(pub(crate) NonNull<Vma>);

// SAFETY: a `VmaPtr` is only an address; all access to the pointee goes through the atomic
// protocol described in the module docs, from any thread.
unsafe impl Send for VmaPtr {}
// SAFETY: as for Send: shared access is through atomics only.
unsafe impl Sync for VmaPtr {}

/// One slot of the VMA array: the range it was inserted with (like maple-tree pivots) and the
/// VMA. `stamp` is a diagnostic copy of the VMA's identity at insertion, used only to *count*
/// reuse, never to decide anything.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) vma: VmaPtr,
    pub(crate) stamp: u64,
}

/// The RCU-protected lookup structure: a sorted, non-overlapping, copy-on-write array.
#[derive(Debug, Default)]
pub(crate) struct VmaTree {
    pub(crate) entries: Vec<Entry>,
}

impl VmaTree {
    /// Index of the entry covering `addr`.
    fn find(&self, addr: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.start <= addr);
        (i > 0 && self.entries[i - 1].end > addr).then(|| i - 1)
    }
}

/// A model address space.
#[derive(Debug)]
pub(crate) struct Mm {
    /// The mmap_lock. Readers: fault fallbacks; writers: mappers.
    pub(crate) mmap_lock: RwLock<()>,
    /// Odd while an mmap writer holds `mmap_lock`.
    pub(crate) mm_lock_seq: AtomicU64,
    /// The current VMA array (never null). Replaced only under the mmap write lock.
    pub(crate) tree: AtomicPtr<VmaTree>,
    /// Shadow page table: for each page, the stamp of the VMA mapping it (0 = unmapped). Written
    /// only under the mmap write lock with the affected VMAs write-locked; it is the ground truth
    /// a fault checks its VMA against.
    pub(crate) pages: Box<[AtomicU64]>,
    /// Wake-ups of a writer waiting for readers ("rcuwait"), done by readers dropping a reference.
    pub(crate) writer_wakeups: AtomicU64,
}

impl Mm {
    pub(crate) fn new(npages: usize) -> Mm {
        Mm {
            mmap_lock: RwLock::new(()),
            mm_lock_seq: AtomicU64::new(0),
            tree: AtomicPtr::new(Box::into_raw(Box::default())),
            pages: (0..npages).map(|_| AtomicU64::new(0)).collect(),
            writer_wakeups: AtomicU64::new(0),
        }
    }

    pub(crate) fn npages(&self) -> u64 {
        self.pages.len() as u64
    }

    /// The VMA array, for the length of `guard`.
    pub(crate) fn tree<'g>(&'g self, _guard: &'g RcuReadGuard) -> &'g VmaTree {
        // Acquire pairs with the AcqRel swap in `publish`: the array's contents are visible.
        let p = self.tree.load(Ordering::Acquire);
        // SAFETY: never null; an array is retired with kfree_rcu only after being unpublished,
        // so it outlives every read-side critical section (such as `_guard`'s) that loaded it.
        unsafe { &*p }
    }

    pub(crate) fn mmap_read_lock(&self) -> MmapReadGuard<'_> {
        MmapReadGuard {
            mm: self,
            _lock: self.mmap_lock.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    pub(crate) fn mmap_write_lock(&self) -> MmapWriteGuard<'_> {
        let lock = self.mmap_lock.write().unwrap_or_else(|e| e.into_inner());
        // Release pairs with readers' Acquire loads in `vma_start_read`: the epoch is now odd.
        let seq = self.mm_lock_seq.fetch_add(1, Ordering::Release) + 1;
        debug_assert!(seq % 2 == 1);
        MmapWriteGuard {
            mm: self,
            seq,
            _lock: lock,
        }
    }

    /// Called by a reader dropping a reference while a writer waits for readers.
    fn wake_writer(&self) {
        self.writer_wakeups.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Mm {
    fn drop(&mut self) {
        let p = *self.tree.get_mut();
        // SAFETY: `&mut self`: no reader or writer can reach this mm any more; the array came
        // from Box::into_raw and is dropped once.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// mmap_read_lock held.
pub(crate) struct MmapReadGuard<'a> {
    mm: &'a Mm,
    _lock: RwLockReadGuard<'a, ()>,
}

impl MmapReadGuard<'_> {
    /// The VMA array; stable while the read lock is held.
    pub(crate) fn tree(&self) -> &VmaTree {
        let p = self.mm.tree.load(Ordering::Acquire);
        // SAFETY: arrays are replaced (and then retired) only under the mmap write lock, which
        // cannot be held while we hold the read lock: the current array outlives `self`.
        unsafe { &*p }
    }
}

/// mmap_write_lock held; dropping it ends the epoch and unlocks every VMA locked in it.
pub(crate) struct MmapWriteGuard<'a> {
    pub(crate) mm: &'a Mm,
    pub(crate) seq: u64,
    pub(crate) _lock: RwLockWriteGuard<'a, ()>,
}

impl Drop for MmapWriteGuard<'_> {
    fn drop(&mut self) {
        // Release pairs with the readers' Acquire load of mm_lock_seq: a reader that sees the
        // epoch ended sees every change made in it. Runs before `_lock` is released.
        self.mm.mm_lock_seq.fetch_add(1, Ordering::Release);
    }
}

/// Where VMAs come from and go to.
#[derive(Debug)]
pub(crate) struct VmaAlloc {
    pub(crate) mode: Mode,
    pub(crate) cache: Arc<KmemCache<Vma>>,
}

/// A `NonNull<Vma>` moved into a `call_rcu` callback.
struct SendVma(NonNull<Vma>);
// SAFETY: the callback is the only user of the pointer (the VMA is unreachable by then).
unsafe impl Send for SendVma {}

impl VmaAlloc {
    pub(crate) fn new(mode: Mode) -> VmaAlloc {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "vm_area_struct-{}-{}",
            mode.name(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cache = KmemCache::<Vma>::builder(&name)
            .typesafe_by_rcu(mode == Mode::Typesafe)
            .hwcache_align(true)
            .ctor(vma_ctor)
            .build()
            .expect("create the VMA cache");
        VmaAlloc {
            mode,
            cache: Arc::new(cache),
        }
    }

    /// `vm_area_free` of a detached VMA.
    ///
    /// # Safety
    /// `p` came from this cache, is detached (`vm_refcnt == 0`), unreachable from every VMA
    /// array published from now on, and freed once.
    pub(crate) unsafe fn free(&self, p: NonNull<Vma>, st: &mut MapStats) {
        st.freed += 1;
        match self.mode {
            // SAFETY: caller's contract; the object is in its ctor state (detached), which is
            // all a typesafe cache needs: readers may still look at it and will revalidate.
            Mode::Typesafe => unsafe { self.cache.free(p) },
            Mode::CallRcu => {
                st.vma_call_rcu += 1;
                let cache = Arc::clone(&self.cache);
                let p = SendVma(p);
                call_rcu(move || {
                    let p = p;
                    // SAFETY: a grace period has passed since the VMA was unpublished, so no
                    // reader can still reach it; it came from `cache` and is freed once.
                    unsafe { cache.free(p.0) };
                });
            }
            Mode::KfreeRcu => {
                st.kfree_rcu += 1;
                // SAFETY: caller's contract (from this cache, unreachable for new readers,
                // retired once).
                unsafe { kfree_rcu_cache(&self.cache, p) };
            }
        }
    }
}

pub(crate) static NEXT_STAMP: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------------------------
// Reader side
// ---------------------------------------------------------------------------------------------

/// Why `vma_start_read` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartRead {
    Seq,
    Detached,
    WrongMm,
}

/// Pins an mm through the `vm_mm` of a VMA (the kernel's `mmgrab`).
///
/// # Safety
/// `p` is the `vm_mm` of an attached VMA on which the caller holds a reference: an mm is torn
/// down only after all its VMAs were detached (each detach waits for references to drain), and
/// every `vm_mm` points into an `Arc<Mm>` the run keeps until then.
unsafe fn mmgrab(p: *const Mm) -> Arc<Mm> {
    // SAFETY: see the function contract: the Arc allocation is alive.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

/// Drops a reader reference. `mm` must be an mm the caller knows to be alive and be the VMA's
/// owner: the last touch of a writer's mm happens *after* our reference is gone, so the mm must
/// be pinned independently of the VMA (the 2025 UAF fix).
fn vma_refcount_put(vma: &Vma, mm: &Mm) {
    // Release pairs with the writer's Acquire wait: our reads of the VMA happen before its
    // changes.
    let old = vma.vm_refcnt.fetch_sub(1, Ordering::Release);
    let now = old - 1;
    if now & VMA_LOCK_OFFSET != 0 && now <= VMA_LOCK_OFFSET + 1 {
        // A writer excludes readers and we were the last one: wake it. The VMA may already be
        // freed and reused, so only `mm` (pinned by the caller) is touched.
        mm.wake_writer();
    }
}

/// `vma_start_read`: the reader half of the per-VMA lock, called inside a read-side critical
/// section on a VMA found by the walk. `Ok` holds a read reference.
fn vma_start_read(
    mm: &Arc<Mm>,
    vma: &Vma,
    skip_mm_check: bool,
    _guard: &RcuReadGuard,
) -> Result<(), StartRead> {
    // Cheap pre-check: write-locked in the current epoch, no point taking a reference. (Acquire
    // as in the recheck; here it is only an optimisation.)
    let mm_seq = mm.mm_lock_seq.load(Ordering::Acquire);
    if vma.vm_lock_seq.load(Ordering::Relaxed) == mm_seq {
        return Err(StartRead::Seq);
    }
    // Limited inc_not_zero. Acquire pairs with the attach Release store (the VMA's fields are
    // initialised) and with vma_start_write's Release fetch_sub (we see its vm_lock_seq).
    let mut old = vma.vm_refcnt.load(Ordering::Relaxed);
    loop {
        if old == 0 {
            return Err(StartRead::Detached);
        }
        if old >= VMA_REF_LIMIT {
            return Err(StartRead::Seq);
        }
        match vma.vm_refcnt.compare_exchange_weak(
            old,
            old + 1,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => break,
            Err(now) => old = now,
        }
    }
    // Identity first: the object may have been freed and reallocated into another mm since the
    // walk found it. Stable now: vm_mm changes only while detached, and we hold a reference.
    let owner = vma.vm_mm.load(Ordering::Relaxed);
    if !skip_mm_check && !core::ptr::eq(owner, Arc::as_ptr(mm)) {
        assert!(!owner.is_null(), "an attached VMA without an mm");
        // Dropping our reference may wake a writer of *that* mm, and once the reference is gone
        // nothing keeps that mm alive. Pin it first (mmgrab), put, then unpin (mmdrop).
        // SAFETY: `owner` is the vm_mm of an attached VMA on which we hold a reference.
        let other = unsafe { mmgrab(owner) };
        vma_refcount_put(vma, &other);
        drop(other);
        return Err(StartRead::WrongMm);
    }
    // Recheck the lock: Acquire pairs with mmap_write_lock/unlock's Release fetch_add.
    if vma.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq.load(Ordering::Acquire) {
        vma_refcount_put(vma, mm);
        return Err(StartRead::Seq);
    }
    Ok(())
}

/// Counts a VMA object that changed identity (was freed and reallocated) between the walk and
/// the revalidation.
fn note_reuse(mode: Mode, rejected: bool, st: &mut FaultStats) {
    if mode != Mode::Typesafe {
        // Reused while a reader that found it is still in its critical section: only a
        // typesafe cache may do that.
        st.rcu_errors += 1;
    } else if rejected {
        st.reuse_caught += 1;
    } else {
        st.reuse_accepted += 1;
    }
}

/// `lock_vma_under_rcu(mm, addr)`: `Some` holds the VMA read-locked; `None` means fall back to
/// the mm-wide lock (the reason is counted in `st`).
fn lock_vma_under_rcu(
    mm: &Arc<Mm>,
    addr: u64,
    mode: Mode,
    skip_mm_check: bool,
    st: &mut FaultStats,
) -> Option<NonNull<Vma>> {
    let mut retries = 0;
    loop {
        let guard = rcu_read_lock();
        let tree = mm.tree(&guard);
        let Some(i) = tree.find(addr) else {
            st.fallbacks.unmapped += 1;
            return None;
        };
        let e = tree.entries[i];
        // SAFETY: found under `guard`: a valid Vma until the critical section ends (module docs,
        // "Memory safety of the reader"), maybe a recycled one; after that, only while we hold
        // a reference.
        let vma = unsafe { e.vma.0.as_ref() };
        let res = vma_start_read(mm, vma, skip_mm_check, &guard);
        // Still inside the critical section: did the object change identity since the walk?
        // (Diagnostics only: the entry's stamp is not something the kernel has.)
        let reused = vma.stamp.load(Ordering::Relaxed) != e.stamp;
        drop(guard);
        match res {
            Ok(()) => {
                // Range check after the walk, holding the reference (fields are stable).
                let (s, end) = (
                    vma.vm_start.load(Ordering::Relaxed),
                    vma.vm_end.load(Ordering::Relaxed),
                );
                if (s..end).contains(&addr) {
                    if reused {
                        note_reuse(mode, false, st);
                    }
                    return Some(e.vma.0);
                }
                vma_refcount_put(vma, mm);
                st.fallbacks.range += 1;
            }
            Err(StartRead::Seq) => st.fallbacks.seq += 1,
            Err(StartRead::WrongMm) => st.fallbacks.wrong_mm += 1,
            Err(StartRead::Detached) => {
                // Unlinked (maybe freed) under us: walk again, the array has moved on.
                st.detached_retries += 1;
                retries += 1;
                if retries < DETACHED_RETRIES {
                    if reused {
                        note_reuse(mode, true, st);
                    }
                    continue;
                }
                st.fallbacks.detached += 1;
            }
        }
        if reused {
            note_reuse(mode, true, st);
        }
        return None;
    }
}

/// The "touch": checks that `vma` really maps `addr` in `mm` against the shadow page table and
/// counts the fault on the VMA. The caller holds `vma` read-locked or the mmap read lock.
fn touch(mm: &Mm, vma: &Vma, addr: u64, st: &mut FaultStats) {
    let page = ((addr - BASE) / PAGE) as usize;
    // Relaxed: the entry for a page inside a read-locked VMA changes only after a writer
    // write-locks that VMA, which waits for us; we got here through Acquire operations that
    // order the writer's last change before our load (module docs).
    let truth = mm.pages[page].load(Ordering::Relaxed);
    let ok = core::ptr::eq(vma.vm_mm.load(Ordering::Relaxed), mm)
        && vma.vm_start.load(Ordering::Relaxed) <= addr
        && addr < vma.vm_end.load(Ordering::Relaxed)
        && truth != 0
        && truth == vma.stamp.load(Ordering::Relaxed);
    if !ok {
        st.wrong_vma += 1;
    }
    vma.faults.fetch_add(1, Ordering::Relaxed);
}

/// One page fault at `addr` in `mm`.
pub(crate) fn handle_fault(
    mm: &Arc<Mm>,
    addr: u64,
    mode: Mode,
    skip_mm_check: bool,
    st: &mut FaultStats,
) {
    st.faults += 1;
    match lock_vma_under_rcu(mm, addr, mode, skip_mm_check, st) {
        Some(p) => {
            // SAFETY: we hold a read reference: the VMA cannot be detached or freed.
            let vma = unsafe { p.as_ref() };
            st.vma_locked += 1;
            touch(mm, vma, addr, st);
            // vma_end_read. `mm` is the owner unless the test-only switch skipped the check; it
            // is alive either way (we hold its Arc).
            vma_refcount_put(vma, mm);
        }
        None => {
            let lock = mm.mmap_read_lock();
            let tree = lock.tree();
            match tree.find(addr) {
                Some(i) => {
                    // SAFETY: VMAs in the current array are freed only after being unpublished
                    // under the mmap write lock, which we exclude.
                    let vma = unsafe { tree.entries[i].vma.0.as_ref() };
                    touch(mm, vma, addr, st);
                }
                None => st.segv += 1,
            }
            drop(lock);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer side (all under the mmap write lock)
// ---------------------------------------------------------------------------------------------

/// Waits until `vm_refcnt` reads `target` (readers drained).
fn wait_refcnt(vma: &Vma, target: u32) {
    let mut spins = 0u32;
    // Acquire pairs with the readers' Release put: their reads happen before our changes.
    while vma.vm_refcnt.load(Ordering::Acquire) != target {
        spins += 1;
        if spins < 64 {
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// `vma_start_write`: excludes readers, waits for the current ones, marks the VMA write-locked
/// in this epoch. The VMA is attached.
pub(crate) fn vma_start_write(w: &MmapWriteGuard<'_>, vma: &Vma) {
    if vma.vm_lock_seq.load(Ordering::Relaxed) == w.seq {
        return; // already write-locked in this epoch
    }
    // Acquire: see the readers' puts below.
    let old = vma.vm_refcnt.fetch_add(VMA_LOCK_OFFSET, Ordering::Acquire);
    debug_assert!(
        (1..VMA_LOCK_OFFSET).contains(&old),
        "vma_start_write: refcnt {old:#x}"
    );
    wait_refcnt(vma, VMA_LOCK_OFFSET + 1);
    vma.vm_lock_seq.store(w.seq, Ordering::Relaxed);
    // Release pairs with reader inc's Acquire: whoever gets in next sees vm_lock_seq.
    vma.vm_refcnt.fetch_sub(VMA_LOCK_OFFSET, Ordering::Release);
}

/// `vma_mark_detached`: drops the attach reference and waits out transient readers (who took
/// a reference after `vma_start_write` and will fail their recheck). The VMA is write-locked.
pub(crate) fn vma_mark_detached(w: &MmapWriteGuard<'_>, vma: &Vma) {
    debug_assert_eq!(vma.vm_lock_seq.load(Ordering::Relaxed), w.seq);
    // AcqRel: Acquire for the readers' puts seen here; Release for our earlier accesses.
    let old = vma.vm_refcnt.fetch_sub(1, Ordering::AcqRel);
    if old != 1 {
        vma.vm_refcnt.fetch_add(VMA_LOCK_OFFSET, Ordering::Acquire);
        wait_refcnt(vma, VMA_LOCK_OFFSET);
        // Release: our accesses stay before the VMA's next life (readers cannot get in at 0;
        // the cache hand-off orders the rest).
        vma.vm_refcnt.fetch_sub(VMA_LOCK_OFFSET, Ordering::Release);
    }
    debug_assert_eq!(vma.vm_refcnt.load(Ordering::Relaxed), 0);
}

/// `vma_mark_attached`: publishes a fully initialised VMA to readers.
pub(crate) fn vma_mark_attached(vma: &Vma) {
    debug_assert_eq!(vma.vm_refcnt.load(Ordering::Relaxed), 0);
    // `refcount_set_release`: pairs with the readers' Acquire inc_not_zero.
    vma.vm_refcnt.store(1, Ordering::Release);
}
