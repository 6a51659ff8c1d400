//! Mapper operations of the VMA-reuse model: mmap, munmap, split, merge, mprotect and
//! exit_mmap, all under the mmap write lock, with the VMA write-lock protocol of `mm.rs`.

#![allow(dead_code)]

use core::ptr::NonNull;
use std::sync::atomic::Ordering;

use rcu_kit::kfree_rcu_raw_charged;

use crate::mm::{
    vma_mark_attached, vma_mark_detached, vma_start_write, Entry, Mm, MmapWriteGuard, Vma,
    VmaAlloc, VmaPtr, VmaTree, BASE, MAX_MAP_PAGES, NEXT_STAMP, PAGE,
};
use crate::model::{MapStats, Rng};

/// A mapper thread's state.
pub(crate) struct Mapper<'a> {
    pub(crate) alloc: &'a VmaAlloc,
    pub(crate) rng: Rng,
    pub(crate) target_vmas: usize,
    pub(crate) st: MapStats,
    /// The range of the VMA this mapper freed last (a hint for its next mmap).
    pub(crate) last_freed: Option<(u64, u64)>,
}

impl Mapper<'_> {
    /// `vm_area_alloc` + initialisation for `mm`, write-locked in the current epoch, detached.
    /// Copies fields from `from` (like `vm_area_dup`) but never its refcount or lock state.
    fn vma_alloc(
        &mut self,
        w: &MmapWriteGuard<'_>,
        start: u64,
        end: u64,
        from: Option<&Vma>,
    ) -> Option<NonNull<Vma>> {
        let Some(p) = self.alloc.cache.alloc() else {
            self.st.alloc_failures += 1;
            return None;
        };
        self.st.allocated += 1;
        // SAFETY: a ctor cache hands out valid Vmas; this one is ours (detached) until attached.
        let vma = unsafe { p.as_ref() };
        debug_assert_eq!(
            vma.vm_refcnt.load(Ordering::Relaxed),
            0,
            "a VMA came back from the cache attached"
        );
        let (flags, pgoff) = from.map_or((0, 0), |f| {
            (
                f.vm_flags.load(Ordering::Relaxed),
                f.vm_pgoff.load(Ordering::Relaxed),
            )
        });
        // Every Mm lives in an `Arc` (run_mode), so this is an `Arc::as_ptr` (see `mmgrab`).
        vma.vm_mm
            .store(core::ptr::from_ref(w.mm).cast_mut(), Ordering::Relaxed);
        vma.vm_start.store(start, Ordering::Relaxed);
        vma.vm_end.store(end, Ordering::Relaxed);
        vma.vm_flags.store(flags, Ordering::Relaxed);
        vma.vm_pgoff.store(pgoff, Ordering::Relaxed);
        vma.faults.store(0, Ordering::Relaxed);
        vma.stamp.store(
            NEXT_STAMP.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        // New VMAs are write-locked before insertion (readers that find them before the epoch
        // ends fall back).
        vma.vm_lock_seq.store(w.seq, Ordering::Relaxed);
        Some(p)
    }

    /// Sets the shadow page table for `[start, end)` to `stamp`.
    fn set_pages(mm: &Mm, start: u64, end: u64, stamp: u64) {
        for a in (start..end).step_by(PAGE as usize) {
            mm.pages[((a - BASE) / PAGE) as usize].store(stamp, Ordering::Relaxed);
        }
    }

    /// Publishes a new VMA array and retires the old one with kfree_rcu, charging its entry
    /// buffer too: that buffer (not the 24-byte `VmaTree`) is the memory a slow grace period
    /// leaves waiting, and only what is charged counts against the kfree_rcu pending cap.
    fn publish(&mut self, mm: &Mm, entries: Vec<Entry>) {
        let new = Box::into_raw(Box::new(VmaTree { entries }));
        // AcqRel: Release publishes the new array (pairs with readers' Acquire load); Acquire
        // takes over the old one.
        let old = mm.tree.swap(new, Ordering::AcqRel);
        // SAFETY: only mmap writers replace the array and we are the one (write lock held); the
        // old array is still alive (not retired yet).
        let owned = unsafe { &*old }.entries.capacity() * core::mem::size_of::<Entry>();
        // Plus the allocator's chunk header and rounding (glibc: 8 bytes, 16-byte granules).
        let owned = if owned == 0 { 0 } else { owned + 16 };
        // SAFETY: `old` came from Box::into_raw, is now unpublished and retired once; readers
        // that loaded it are inside critical sections, which kfree_rcu waits for, and no `Box`
        // of it is made while they may hold it.
        unsafe { kfree_rcu_raw_charged(old, owned) };
        self.st.kfree_rcu += 1;
    }

    /// The current array's entries (we hold the write lock: nobody else replaces it).
    pub(crate) fn entries(w: &MmapWriteGuard<'_>) -> Vec<Entry> {
        let p = w.mm.tree.load(Ordering::Acquire);
        // SAFETY: only mmap writers replace the array and we are the one; it stays alive.
        unsafe { &*p }.entries.clone()
    }

    /// Detaches (already unpublished) `p` and frees it.
    fn detach_and_free(&mut self, w: &MmapWriteGuard<'_>, p: NonNull<Vma>) {
        // SAFETY: in the array until just now and attached: alive; we hold the write lock.
        let vma = unsafe { p.as_ref() };
        vma_mark_detached(w, vma);
        // SAFETY: from our cache, detached, unpublished (the new array is out; old arrays only
        // reach readers that revalidate or, in the RCU modes, are waited for), freed once.
        unsafe { self.alloc.free(p, &mut self.st) };
    }

    /// One random operation on `w.mm`.
    pub(crate) fn op(&mut self, w: &MmapWriteGuard<'_>) {
        let entries = Self::entries(w);
        let n = entries.len();
        let r = self.rng.below(100);
        // mmap when the next mapping should reuse the VMA object just freed (in whichever mm),
        // or when the mm is short of VMAs.
        let reuse_next = self.last_freed.is_some() && self.rng.below(2) == 0;
        let op = if reuse_next || n < 2 || n < self.target_vmas / 2 {
            0 // mmap
        } else if n > self.target_vmas * 3 / 2 {
            35 // munmap
        } else {
            r
        };
        match op {
            0..=29 => self.mmap(w, entries),
            30..=54 => {
                let i = self.rng.below(n as u64) as usize;
                self.munmap(w, entries, i)
            }
            55..=69 => {
                let i = self.rng.below(n as u64) as usize;
                self.split(w, entries, i)
            }
            70..=84 => {
                let i = self.rng.below(n as u64) as usize;
                self.merge(w, entries, i)
            }
            _ => {
                let i = self.rng.below(n as u64) as usize;
                self.mprotect(w, &entries[i])
            }
        }
    }

    /// mmap: a new VMA in the first gap at or above a hint (the kernel's unmapped-area search).
    /// The hint is often the range this mapper unmapped last, maybe in another mm: processes
    /// running the same program map the same things at the same addresses, and the VMA object
    /// they get is the one just freed (per-CPU sheaves are LIFO) — the recycling that makes the
    /// `vm_mm` check necessary. Otherwise the hint is the bottom, or a random address.
    pub(crate) fn mmap(&mut self, w: &MmapWriteGuard<'_>, mut entries: Vec<Entry>) {
        let mm = w.mm;
        let top = BASE + mm.npages() * PAGE;
        let (hint, len) = match self.last_freed.take() {
            Some((start, end)) if self.rng.below(4) != 0 => (start, end - start),
            _ => (
                if self.rng.below(4) == 0 {
                    BASE + self.rng.below(mm.npages()) * PAGE
                } else {
                    BASE
                },
                (1 + self.rng.below(MAX_MAP_PAGES)) * PAGE,
            ),
        };
        // First gap at or above `hint`, else from the bottom.
        let gap = |from: u64| -> Option<(usize, u64, u64)> {
            let mut prev_end = BASE;
            for (i, e) in entries.iter().enumerate() {
                let gs = prev_end.max(from);
                if gs < e.start {
                    return Some((i, gs, e.start));
                }
                prev_end = e.end;
            }
            let gs = prev_end.max(from);
            (gs < top).then_some((entries.len(), gs, top))
        };
        let Some((i, gs, ge)) = gap(hint).or_else(|| gap(BASE)) else {
            return; // address space full
        };
        let end = (gs + len).min(ge);
        let Some(p) = self.vma_alloc(w, gs, end, None) else {
            return;
        };
        // SAFETY: ours, detached.
        let vma = unsafe { p.as_ref() };
        let stamp = vma.stamp.load(Ordering::Relaxed);
        Self::set_pages(mm, gs, end, stamp);
        vma_mark_attached(vma);
        entries.insert(
            i,
            Entry {
                start: gs,
                end,
                vma: VmaPtr(p),
                stamp,
            },
        );
        self.publish(mm, entries);
    }

    fn munmap(&mut self, w: &MmapWriteGuard<'_>, mut entries: Vec<Entry>, i: usize) {
        let e = entries.remove(i);
        self.last_freed = Some((e.start, e.end));
        // SAFETY: in the current array: attached and alive under the write lock.
        let vma = unsafe { e.vma.0.as_ref() };
        vma_start_write(w, vma);
        Self::set_pages(w.mm, e.start, e.end, 0);
        self.publish(w.mm, entries);
        self.detach_and_free(w, e.vma.0);
    }

    /// Split at a page boundary (mprotect of the tail): the tail becomes a new VMA, copied from
    /// the head without its lock state.
    fn split(&mut self, w: &MmapWriteGuard<'_>, mut entries: Vec<Entry>, i: usize) {
        let e = entries[i];
        let pages = (e.end - e.start) / PAGE;
        if pages < 2 {
            return self.mprotect(w, &e);
        }
        let at = e.start + (1 + self.rng.below(pages - 1)) * PAGE;
        // SAFETY: attached and alive under the write lock.
        let vma = unsafe { e.vma.0.as_ref() };
        vma_start_write(w, vma);
        let Some(p) = self.vma_alloc(w, at, e.end, Some(vma)) else {
            return;
        };
        // SAFETY: ours, detached.
        let tail = unsafe { p.as_ref() };
        tail.vm_pgoff
            .fetch_add((at - e.start) / PAGE, Ordering::Relaxed);
        tail.vm_flags.fetch_xor(1, Ordering::Relaxed);
        let stamp = tail.stamp.load(Ordering::Relaxed);
        vma.vm_end.store(at, Ordering::Relaxed);
        Self::set_pages(w.mm, at, e.end, stamp);
        vma_mark_attached(tail);
        entries[i].end = at;
        entries.insert(
            i + 1,
            Entry {
                start: at,
                end: e.end,
                vma: VmaPtr(p),
                stamp,
            },
        );
        self.publish(w.mm, entries);
    }

    /// Merge with the next VMA if adjacent: the first grows, the second is freed.
    fn merge(&mut self, w: &MmapWriteGuard<'_>, mut entries: Vec<Entry>, i: usize) {
        if i + 1 >= entries.len() || entries[i].end != entries[i + 1].start {
            let e = entries[i];
            return self.mprotect(w, &e);
        }
        let (a, b) = (entries[i], entries[i + 1]);
        self.last_freed = Some((b.start, b.end));
        // SAFETY: both attached and alive under the write lock.
        let (va, vb) = unsafe { (a.vma.0.as_ref(), b.vma.0.as_ref()) };
        vma_start_write(w, va);
        vma_start_write(w, vb);
        va.vm_end.store(b.end, Ordering::Relaxed);
        Self::set_pages(w.mm, b.start, b.end, a.stamp);
        entries[i].end = b.end;
        entries.remove(i + 1);
        self.publish(w.mm, entries);
        self.detach_and_free(w, b.vma.0);
    }

    /// mprotect of a whole VMA: write-lock it and change its flags.
    fn mprotect(&mut self, w: &MmapWriteGuard<'_>, e: &Entry) {
        // SAFETY: attached and alive under the write lock.
        let vma = unsafe { e.vma.0.as_ref() };
        vma_start_write(w, vma);
        vma.vm_flags.fetch_xor(2, Ordering::Relaxed);
    }

    /// exit_mmap: detach and free every VMA of `mm`.
    pub(crate) fn exit_mmap(&mut self, mm: &Mm) {
        let w = mm.mmap_write_lock();
        let entries = Self::entries(&w);
        for e in &entries {
            // SAFETY: attached and alive under the write lock.
            vma_start_write(&w, unsafe { e.vma.0.as_ref() });
            Self::set_pages(mm, e.start, e.end, 0);
        }
        self.publish(mm, Vec::new());
        for e in entries {
            self.detach_and_free(&w, e.vma.0);
        }
    }
}
