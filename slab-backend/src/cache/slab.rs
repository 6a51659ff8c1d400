//! Slabs: runs of pages carved into equal objects, with their bookkeeping out of line.
//!
//! # Implementation
//!
//! A slab is 1–16 pages mapped by the page layer at an address aligned to [`SLAB_ALIGN`]
//! (64 KiB), so the slab of any object is found by masking its address:
//! `header = obj & !(SLAB_ALIGN - 1)`. That is how `kfree` finds the cache of a pointer.
//!
//! ```text
//! base (64 KiB aligned)
//! | SlabHeader | free bitmap (1 bit/object) | debug states (1 byte/object, debug caches) | pad | obj 0 | obj 1 | ...
//! ```
//!
//! The free-list is a bitmap in the header (bit set = object free in this slab), so nothing is
//! ever written into a free object: a `SLAB_TYPESAFE_BY_RCU` reader may look at a freed object
//! and still sees a valid `T` (the kernel's "free pointer outside the object").
//!
//! Invariants:
//! 1. `magic == SLAB_MAGIC ^ base` for every live slab, and `cache` points to the owning
//!    `RawCache`, which outlives the slab (destroy discards slabs or leaks the cache).
//! 2. The bitmap, `inuse`, `list` and the `prev`/`next` links are only touched under the owning
//!    node's lock, or by the single owner of a slab detached from every list.
//! 3. `inuse + popcount(bitmap) == nr_objects`.
//! 4. With a ctor, every object holds a valid `T` from slab creation until [`discard_now`]. A
//!    ctor that panics leaves no slab: the objects it made are dropped and the run unmapped
//!    before the unwind leaves [`SlabHeader::create`].
//!
//! ## Memory orderings
//! Slab memory is published to other threads only through locks (node lock, slot lock) or the
//! user's own synchronisation. The debug state bytes use `AcqRel` swaps so that a double free
//! racing with itself is detected by exactly one of the two callers.

use core::ptr::NonNull;

use super::RawCache;
use crate::page::{self, PAGE_SIZE};
use crate::primitive::sync::atomic::{AtomicU8, Ordering};

/// Alignment of every slab base (and the largest slab size).
pub(crate) const SLAB_ALIGN: usize = 64 * 1024;
/// Largest slab, in pages.
pub(crate) const MAX_SLAB_PAGES: usize = SLAB_ALIGN / PAGE_SIZE;
const SLAB_MAGIC: usize = 0x5142_5f72_6375_6b69; // "ikucr_BQ"-ish: any odd constant works

/// Debug state of an object: not in a user's hands (in a slab or a sheaf).
pub(crate) const OBJ_FREE: u8 = 0;
/// Debug state of an object: handed out to a user.
pub(crate) const OBJ_ALLOCATED: u8 = 1;

/// Which node list a slab is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListId {
    /// On no list (being built, detached, or waiting for a grace period).
    None,
    /// Some objects free, some in use.
    Partial,
    /// No object free.
    Full,
    /// Every object free.
    Empty,
}

/// The header at the base of every slab.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct SlabHeader {
    /// `SLAB_MAGIC ^ base` (Invariant 1).
    magic: usize,
    /// The owning cache (Invariant 1).
    pub(crate) cache: *const RawCache,
    /// The owning cache's thread-cache id (`cache.tc_id`, next to `cache` so that `kfree` finds
    /// the thread cache with one load less).
    pub(crate) tc_id: usize,
    /// Node list links (Invariant 2).
    pub(crate) prev: *mut SlabHeader,
    pub(crate) next: *mut SlabHeader,
    /// Objects not free in the bitmap (Invariant 2 and 3).
    pub(crate) inuse: u32,
    /// The list the slab is on (Invariant 2).
    pub(crate) list: ListId,
}

/// Geometry shared by all slabs of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlabLayout {
    /// Requested object size.
    pub(crate) size: usize,
    /// Distance between objects (size rounded up to `align`).
    pub(crate) stride: usize,
    /// Object alignment.
    pub(crate) align: usize,
    /// Pages per slab.
    pub(crate) pages: usize,
    /// Objects per slab.
    pub(crate) nr: usize,
    /// Offset of the free bitmap.
    bitmap_off: usize,
    /// Offset of the debug state bytes (`0` if the cache has no debug states).
    state_off: usize,
    /// Offset of object 0.
    pub(crate) objs_off: usize,
}

impl SlabLayout {
    /// The geometry for objects of `size` bytes aligned to `align`, or `None` if not even one
    /// object fits a [`SLAB_ALIGN`] slab. Picks the smallest slab (1, 2, 4, 8, 16 pages) that holds
    /// at least 8 objects and wastes at most 1/8 of its bytes, else 16 pages.
    pub(crate) fn new(size: usize, align: usize, debug: bool) -> Option<Self> {
        let align = align.max(8);
        if !align.is_power_of_two() || align > PAGE_SIZE {
            return None;
        }
        let stride = size.max(8).checked_add(align - 1)? & !(align - 1);
        let mut best = None;
        let mut pages = 1;
        while pages <= MAX_SLAB_PAGES {
            if let Some(l) = Self::fit(size, stride, align, pages, debug) {
                let bytes = pages * PAGE_SIZE;
                let waste = bytes - l.nr * stride;
                best = Some(l);
                if l.nr >= 8 && waste * 8 <= bytes {
                    break;
                }
            }
            pages *= 2;
        }
        best
    }

    fn fit(size: usize, stride: usize, align: usize, pages: usize, debug: bool) -> Option<Self> {
        let bytes = pages * PAGE_SIZE;
        let hdr = core::mem::size_of::<SlabHeader>();
        let mut nr = bytes / stride;
        while nr > 0 {
            let bitmap_off = hdr;
            let words = nr.div_ceil(64);
            let state_off = bitmap_off + words * 8;
            let meta_end = state_off + if debug { nr } else { 0 };
            let objs_off = (meta_end + align - 1) & !(align - 1);
            if objs_off + nr * stride <= bytes {
                return Some(Self {
                    size,
                    stride,
                    align,
                    pages,
                    nr,
                    bitmap_off,
                    state_off: if debug { state_off } else { 0 },
                    objs_off,
                });
            }
            nr -= 1;
        }
        None
    }

    fn words(&self) -> usize {
        self.nr.div_ceil(64)
    }
}

/// The slab header of `obj` (no check that it is one).
#[inline]
pub(crate) fn header_of(obj: *const u8) -> *mut SlabHeader {
    ((obj as usize) & !(SLAB_ALIGN - 1)) as *mut SlabHeader
}

/// Whether `obj` lies in a live slab: its slab base is mapped and carries the magic. Uses a
/// `mincore` system call; async-signal-safe. Used by the debug checks only.
pub(crate) fn is_slab_object(obj: *const u8) -> bool {
    let h = header_of(obj);
    if obj.is_null() || !page::is_mapped(h as *const u8) {
        return false;
    }
    // Under the sanitizer, a poisoned word is not the header of a live slab (headers are never
    // poisoned while their slab lives); reading it would be reported.
    if crate::sanitize::is_poisoned(h as *const u8, core::mem::size_of::<usize>()) {
        return false;
    }
    // SAFETY: the page at `h` is mapped (checked just above; slabs are only unmapped after every
    // object is free, so a caller holding a live object keeps it mapped), and reading a usize at
    // a page base is in bounds. A non-slab page yields an arbitrary value, compared below.
    let magic = unsafe { core::ptr::read_volatile(h as *const usize) };
    magic == SLAB_MAGIC ^ (h as usize)
}

/// A slab whose ctor loop is running: dropped only by an unwind out of a ctor, it drops the
/// `made` objects constructed so far and unmaps the run (Invariant 4 never held for it).
struct Unmade<'a> {
    cache: &'a RawCache,
    base: NonNull<u8>,
    made: usize,
}

impl Drop for Unmade<'_> {
    fn drop(&mut self) {
        let l = &self.cache.layout;
        if let Some(drop_obj) = self.cache.drop_obj {
            for i in 0..self.made {
                // SAFETY: objects `0..made` were written by the ctor and were never handed out
                // (the slab is on no list): each is a valid `T` that nobody else can reach.
                unsafe { drop_obj(self.base.as_ptr().add(l.objs_off + i * l.stride)) };
            }
        }
        // SAFETY: the run came from `alloc_pages_for` with `l.pages` pages in `create`, and no
        // list or thread knows of it.
        unsafe { page::free_pages(self.base, l.pages) };
    }
}

impl SlabHeader {
    /// Maps and initialises a new slab for `cache`; runs the ctor over every object (if the
    /// ctor panics, the objects it made are dropped and the run unmapped before the unwind goes
    /// on).
    /// `reclaim` allows the page layer to run shrinkers.
    pub(crate) fn create(cache: &RawCache, reclaim: bool) -> Option<NonNull<SlabHeader>> {
        let l = &cache.layout;
        let base = page::alloc_pages_for(l.pages, SLAB_ALIGN, reclaim, Some(&cache.name))?;
        let h = base.as_ptr().cast::<SlabHeader>();
        // SAFETY: `base` is a fresh, zeroed, writable run of `l.pages` pages aligned to
        // SLAB_ALIGN; the layout puts the header, bitmap, states and objects inside it.
        unsafe {
            h.write(SlabHeader {
                magic: SLAB_MAGIC ^ (h as usize),
                cache,
                tc_id: cache.tc_id,
                prev: core::ptr::null_mut(),
                next: core::ptr::null_mut(),
                inuse: 0,
                list: ListId::None,
            });
            let bm = base.as_ptr().add(l.bitmap_off).cast::<u64>();
            for w in 0..l.words() {
                let bits = (l.nr - w * 64).min(64);
                let v = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                bm.add(w).write(v);
            }
            // Debug states start at OBJ_FREE (0): the run is zeroed.
            if let Some(ctor) = &cache.ctor {
                // A ctor (user code) may panic: the unwind drops the objects made so far and
                // unmaps the run, which nothing else knows of yet.
                let mut made = Unmade {
                    cache,
                    base,
                    made: 0,
                };
                for i in 0..l.nr {
                    ctor(base.as_ptr().add(l.objs_off + i * l.stride));
                    made.made = i + 1;
                }
                core::mem::forget(made);
            }
        }
        cache.slabs_created.fetch_add(1, Ordering::Relaxed);
        NonNull::new(h)
    }

    fn base(&self) -> *mut u8 {
        self as *const Self as *mut u8
    }

    /// # Safety
    /// Invariant 2: the caller holds the node lock or owns the detached slab.
    unsafe fn bitmap(&mut self, l: &SlabLayout) -> &mut [u64] {
        // SAFETY: the bitmap lies inside the slab at `bitmap_off` (layout), the caller has
        // exclusive access (contract), and `&mut self` ties the borrow to the header.
        unsafe { core::slice::from_raw_parts_mut(self.base().add(l.bitmap_off).cast(), l.words()) }
    }

    /// Pointer to object `i`.
    pub(crate) fn object(&self, l: &SlabLayout, i: usize) -> *mut u8 {
        debug_assert!(i < l.nr);
        // SAFETY: `i < nr`, so the object lies inside the slab (layout).
        unsafe { self.base().add(l.objs_off + i * l.stride) }
    }

    /// Index of `obj` in this slab, or `None` if it is not the start of an object here.
    pub(crate) fn index_of(&self, l: &SlabLayout, obj: *const u8) -> Option<usize> {
        let off = (obj as usize).checked_sub(self.base() as usize + l.objs_off)?;
        if off % l.stride != 0 || off / l.stride >= l.nr {
            return None;
        }
        Some(off / l.stride)
    }

    /// Takes free objects, offering each to `put` until it returns `false` (that object stays
    /// free); returns how many were taken.
    ///
    /// # Safety
    /// Invariant 2.
    pub(crate) unsafe fn take(
        &mut self,
        l: &SlabLayout,
        mut put: impl FnMut(*mut u8) -> bool,
    ) -> usize {
        let mut n = 0;
        let base = self.base();
        // SAFETY: forwarded contract (Invariant 2).
        let bm = unsafe { self.bitmap(l) };
        'words: for (w, word) in bm.iter_mut().enumerate() {
            while *word != 0 {
                let bit = word.trailing_zeros() as usize;
                // SAFETY: bit < 64 and w*64+bit < nr (bits beyond nr are never set).
                let obj = unsafe { base.add(l.objs_off + (w * 64 + bit) * l.stride) };
                if !put(obj) {
                    break 'words;
                }
                *word &= !(1u64 << bit);
                n += 1;
            }
        }
        self.inuse += n as u32;
        n
    }

    /// Marks object `i` free again. Panics on a bit that is already set (a double free that got
    /// past the debug states, or corruption).
    ///
    /// # Safety
    /// Invariant 2.
    pub(crate) unsafe fn put(&mut self, l: &SlabLayout, i: usize) {
        // SAFETY: forwarded contract (Invariant 2).
        let bm = unsafe { self.bitmap(l) };
        let (w, b) = (i / 64, i % 64);
        assert!(
            bm[w] & (1 << b) == 0,
            "slab: double free of object {i} (bitmap)"
        );
        bm[w] |= 1 << b;
        self.inuse -= 1;
    }

    /// Swaps the debug state of object `i`, returning the old state.
    pub(crate) fn swap_state(&self, l: &SlabLayout, i: usize, new: u8) -> u8 {
        debug_assert!(l.state_off != 0);
        // SAFETY: debug caches reserve `nr` state bytes at `state_off` (layout); they are only
        // accessed atomically, and AtomicU8 has the layout of u8.
        let s = unsafe { &*self.base().add(l.state_off + i).cast::<AtomicU8>() };
        // AcqRel: two racing frees of one object serialise on this byte; exactly one sees
        // OBJ_ALLOCATED.
        s.swap(new, Ordering::AcqRel)
    }
}

/// Drops the objects of a slab (ctor caches) and unmaps it.
///
/// # Safety
/// The slab is detached from every list, every object is free (`inuse == 0`), and no thread can
/// still reach any of its objects (for typesafe caches: a grace period has elapsed since the slab
/// was detached).
pub(crate) unsafe fn discard_now(slab: NonNull<SlabHeader>) {
    // SAFETY: the slab is live (contract) and its cache outlives it (Invariant 1).
    let (cache, l) = unsafe {
        let cache = &*slab.as_ref().cache;
        (cache, cache.layout)
    };
    // SAFETY: contract: nobody else can reach the slab.
    let h = unsafe { slab.as_ref() };
    debug_assert_eq!(h.inuse, 0, "discarding a slab with objects in use");
    debug_assert_eq!(h.list, ListId::None);
    // Free objects are poisoned under the sanitizer; the drops below read them (the page
    // layer poisons the whole run again when it unmaps it).
    crate::sanitize::unpoison(slab.as_ptr().cast(), l.pages * page::PAGE_SIZE);
    if let Some(drop_obj) = cache.drop_obj {
        for i in 0..l.nr {
            // SAFETY: Invariant 4: each object is a valid T that nobody uses any more.
            unsafe { drop_obj(h.object(&l, i)) };
        }
    }
    cache.slabs_freed.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the run came from alloc_pages_aligned with `l.pages` pages; nobody uses it.
    unsafe { page::free_pages(slab.cast(), l.pages) };
}

/// The slab header of a slab object; panics with a clear message (debug builds) for a pointer
/// that is not a slab object.
///
/// # Safety
/// `p` is a live slab object (or, in debug builds, any pointer: checked).
#[inline]
pub(crate) unsafe fn header_checked<'a>(p: NonNull<u8>) -> &'a SlabHeader {
    if cfg!(debug_assertions) {
        assert!(
            is_slab_object(p.as_ptr()),
            "kfree: {p:p} is not a slab object"
        );
    }
    // SAFETY: a live slab object's header is mapped (slab Invariant 1).
    unsafe { &*header_of(p.as_ptr()) }
}

/// The cache a slab object belongs to; panics with a clear message (debug builds) for a pointer
/// that is not a slab object.
///
/// # Safety
/// `p` is a live slab object (or, in debug builds, any pointer: checked).
#[inline]
pub(crate) unsafe fn cache_of<'a>(p: NonNull<u8>) -> &'a RawCache {
    // SAFETY: forwarded contract; the header points to its cache, which outlives it (slab
    // Invariant 1).
    unsafe { &*header_checked(p).cache }
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn layouts_fit_and_are_aligned() {
        for size in [1, 8, 24, 64, 96, 200, 1000, 4096, 8192, 30_000] {
            for align in [8, 64, 4096] {
                for debug in [false, true] {
                    let l = SlabLayout::new(size, align, debug).expect("fits");
                    assert!(l.objs_off + l.nr * l.stride <= l.pages * PAGE_SIZE);
                    assert_eq!(l.objs_off % l.align, 0);
                    assert!(l.stride >= size && l.stride % l.align == 0);
                    assert!(l.nr >= 1);
                    if size <= 1024 {
                        assert!(l.nr >= 8, "{size}/{align}: {l:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn too_big_or_bad_align_is_none() {
        assert!(SlabLayout::new(SLAB_ALIGN, 8, false).is_none());
        assert!(SlabLayout::new(64, 3 * 8, false).is_none());
        assert!(SlabLayout::new(64, 2 * PAGE_SIZE, false).is_none());
    }

    #[test]
    fn small_objects_use_one_page() {
        let l = SlabLayout::new(8, 8, false).unwrap();
        assert_eq!(l.pages, 1);
        assert!(l.nr > 400);
    }
}
