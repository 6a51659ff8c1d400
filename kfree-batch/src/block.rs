//! Page-sized blocks of pointers waiting for a grace period.
//!
//! # Implementation
//!
//! A block is exactly one page from the page layer: a 56-byte header and as many 8-byte object
//! pointers as fit (505 on 4 KiB pages, checked by a `const` assertion). All pointers of one block
//! share one *bulk free function* and its context (the channel key), so the common one-type
//! workload pays 8 bytes per pending object.
//!
//! ```text
//!  +--------------------------------------------------------------+  one page
//!  | next | snap | free | ctx | count | origin | inline | bytes | handed | ptr[0..505] |
//!  +--------------------------------------------------------------+
//! ```
//!
//! `snap` is the grace-period state taken when the block is *handed over* (full, or taken after
//! the drain delay) under the per-CPU lock, i.e. after every enqueue into it: the kernel stamps on
//! every add, which costs a full fence per object; stamping once per block is later and therefore
//! at least as conservative. A recycled block is stamped again at its next hand-over. Before a
//! block's pointers are freed, a debug assertion checks that `snap` has completed (the kernel's
//! `WARN_ON_ONCE(!poll_state_synchronize_rcu_full())`).
//!
//! `inline_free` marks the [`dealloc_boxes`] channels: boxes of types without drop glue, freed by
//! the global allocator's `dealloc` alone, with the layout encoded in the channel's context (so
//! every such type of one layout shares a channel). That free runs no user code and never waits,
//! so ready blocks of these channels may be *recycled in place* on a producer's thread (see
//! `local.rs`): each retire takes one ready object out and puts the new one in its slot, and the
//! allocator's thread cache then takes each freed chunk and hands it to the next allocation,
//! instead of overflowing on a whole block at once.

use core::alloc::Layout;
use core::mem::size_of;
use core::ptr::NonNull;

use rcu_core::GpSeq;

/// Size of one block: the page layer's page.
pub(crate) const PAGE_SIZE: usize = 4096;

/// Frees a batch of objects. `ctx` is the channel's context (null for boxes, an `Arc` of the
/// cache for slab objects).
pub type FreeFn = unsafe fn(ctx: *const (), objs: &[*mut u8]);

/// The block header (kernel-doc style field notes: who writes it, under which lock).
#[repr(C)]
pub(crate) struct BlockHeader {
    /// Link in a per-CPU list (handed-over or page cache). Written under that CPU's lock, or by
    /// the single owner of a detached batch.
    pub(crate) next: *mut Block,
    /// Grace-period state taken at hand-over (raw `GpSeq`).
    pub(crate) snap: u64,
    /// The channel's bulk free function.
    pub(crate) free: FreeFn,
    /// The free function's context.
    pub(crate) ctx: *const (),
    /// Pointers stored.
    pub(crate) count: u32,
    /// CPU slot the block was filled on (its page goes back to that slot's cache).
    pub(crate) origin: u16,
    /// The channel is a [`dealloc_boxes`] channel (module docs); set at open.
    pub(crate) inline_free: bool,
    /// Object bytes charged to the pending budget for this block's pointers.
    pub(crate) bytes: usize,
    /// When the block was handed over (the batcher's millisecond clock).
    pub(crate) handed_ms: u64,
}

/// Pointers per block: whatever fits in the page after the header.
pub(crate) const BLOCK_CAPACITY: usize =
    (PAGE_SIZE - size_of::<BlockHeader>()) / size_of::<*mut u8>();

/// One page: header and pointers.
#[repr(C)]
pub struct Block {
    pub(crate) hdr: BlockHeader,
    pub(crate) ptrs: [*mut u8; BLOCK_CAPACITY],
}

impl core::fmt::Debug for Block {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Block")
            .field("count", &self.hdr.count)
            .field("snap", &self.hdr.snap)
            .field("inline_free", &self.hdr.inline_free)
            .finish_non_exhaustive()
    }
}

const _: () = assert!(
    size_of::<Block>() <= PAGE_SIZE,
    "a block must fit in one page"
);
const _: () = assert!(BLOCK_CAPACITY >= 500, "about 500 pointers per 4 KiB block");
const _: () = assert!(
    size_of::<BlockHeader>() == 56,
    "header of 7 words: 505 pointers per 4 KiB page"
);

/// Most CPU slots a batcher may have (`origin` is 16 bits).
pub(crate) const MAX_SLOTS: usize = u16::MAX as usize + 1;

/// The channel context of [`dealloc_boxes`] for allocations of `layout` (size and log2 of the
/// alignment; never null for a non-zero size).
pub(crate) const fn encode_layout(layout: Layout) -> *const () {
    // An integer carried in a pointer-sized context, never dereferenced.
    ((layout.size() << 6) | layout.align().trailing_zeros() as usize) as *const ()
}

/// The layout a [`dealloc_boxes`] context encodes.
///
/// # Safety
/// `ctx` came from [`encode_layout`].
#[inline]
pub(crate) unsafe fn decode_layout(ctx: *const ()) -> Layout {
    let v = ctx as usize;
    // SAFETY: `encode_layout` took these from a valid layout.
    unsafe { Layout::from_size_align_unchecked(v >> 6, 1 << (v & 63)) }
}

/// Frees a batch of global-allocator allocations of the layout encoded in `ctx` (boxes of types
/// without drop glue, non-zero size): the only `inline_free` channel.
///
/// # Safety
/// `ctx` came from [`encode_layout`]; every pointer was allocated by the global allocator with
/// that layout, retired once, and its grace period is over.
pub(crate) unsafe fn dealloc_boxes(ctx: *const (), objs: &[*mut u8]) {
    // SAFETY: the function's contract.
    let layout = unsafe { decode_layout(ctx) };
    for &p in objs {
        // SAFETY: as above.
        unsafe { std::alloc::dealloc(p, layout) };
    }
}

/// A free function that never runs (placeholder in fresh or cached blocks).
unsafe fn no_free(_ctx: *const (), _objs: &[*mut u8]) {}

impl Block {
    /// Initialises a fresh page as an empty block of channel `(free, ctx)`.
    ///
    /// # Safety
    /// `page` must be a writable, page-aligned page owned by the caller.
    pub(crate) unsafe fn init(
        page: NonNull<u8>,
        free: FreeFn,
        ctx: *const (),
        origin: usize,
        inline_free: bool,
    ) -> *mut Block {
        let b = page.as_ptr().cast::<Block>();
        // SAFETY: the page is ours, aligned and large enough for a header (const assertion above);
        // the pointer array is left uninitialised (only `ptrs[..count]` is ever read).
        unsafe {
            core::ptr::addr_of_mut!((*b).hdr).write(BlockHeader {
                next: core::ptr::null_mut(),
                snap: 0,
                free,
                ctx,
                count: 0,
                origin: origin as u16,
                inline_free,
                bytes: 0,
                handed_ms: 0,
            });
        }
        b
    }

    /// Re-keys a cached page for a channel (header only).
    ///
    /// # Safety
    /// As for [`Block::init`].
    pub(crate) unsafe fn empty_page(page: NonNull<u8>, origin: usize) -> *mut Block {
        // SAFETY: forwarded contract.
        unsafe { Self::init(page, no_free, core::ptr::null(), origin, false) }
    }

    /// The stored pointers.
    ///
    /// # Safety
    /// `b` must be a valid block not concurrently written.
    pub(crate) unsafe fn objs<'a>(b: *const Block) -> &'a [*mut u8] {
        // SAFETY: `ptrs[..count]` were written by `push` (or a front's put), and the caller
        // excludes writers.
        unsafe {
            // Acquire: pairs with the Release count store of a front's put, so the pointers below
            // the count are read after it (`chan.rs`, Memory orderings: fork snapshots; between
            // live threads the grace period or the slot lock already orders the put first).
            let n =
                crate::primitive::load_acquire_u32(core::ptr::addr_of!((*b).hdr.count)) as usize;
            core::slice::from_raw_parts(core::ptr::addr_of!((*b).ptrs).cast::<*mut u8>(), n)
        }
    }

    /// Frees every pointer of `b` with its channel's function. The caller owns `b` (detached).
    ///
    /// # Safety
    /// `b` is a detached block whose grace period (`snap`) has completed.
    pub(crate) unsafe fn free_objects(b: *mut Block, dom: &rcu_core::raw::Domain) -> usize {
        // SAFETY: the caller owns `b`.
        let hdr = unsafe { &(*b).hdr };
        debug_assert!(
            dom.poll(GpSeq::from_raw(hdr.snap)),
            "kfree-batch: block freed before its grace period {:?} completed (current {:?})",
            GpSeq::from_raw(hdr.snap),
            dom.current()
        );
        // SAFETY: the caller owns `b`.
        let objs = unsafe { Self::objs(b) };
        // SAFETY: the objects were retired and their grace period is over, so the channel's free
        // function may release them.
        unsafe { run_free(hdr.free, hdr.ctx, objs) };
        objs.len()
    }
}

/// Runs a free function, containing a panicking destructor so that it cannot unwind through a
/// collector that holds locks. `Box` and `KmemCache` batches contain each destructor themselves
/// and free the rest; for other free functions the rest of that batch leaks (nothing is freed
/// twice).
///
/// # Safety
/// `objs` are retired objects of channel `(free, ctx)` whose grace period is over, freed once.
#[inline]
pub(crate) unsafe fn run_free(free: FreeFn, ctx: *const (), objs: &[*mut u8]) {
    #[cfg(not(rcu_loom))]
    {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the function's contract.
            unsafe { free(ctx, objs) }
        }));
        if r.is_err() {
            // Written without allocating: frees run when memory is short.
            rcu_core::lowmem::report(format_args!(
                "kfree-batch: a free function panicked while freeing a batch of {} objects; the \
                 rest of that batch is leaked",
                objs.len()
            ));
        }
    }
    #[cfg(rcu_loom)]
    // SAFETY: as above.
    unsafe {
        free(ctx, objs)
    }
}

/// Allocation failures injected at the batcher's sites (`KfreeStats::injected_failures`).
#[cfg(not(rcu_loom))]
static INJECTED: crate::primitive::sync::atomic::AtomicU64 =
    crate::primitive::sync::atomic::AtomicU64::new(0);

/// Whether the fault point `p` refuses an allocation of `size` bytes at one of the batcher's
/// sites (counted in the stats); one Relaxed load when no point is armed. Never under loom.
#[inline]
pub(crate) fn inject(p: rcu_core::fault::Point, size: usize) -> bool {
    #[cfg(not(rcu_loom))]
    {
        let hit = rcu_core::fault::should_fail(p, size);
        if hit {
            // Relaxed: a statistic.
            INJECTED.fetch_add(1, crate::primitive::sync::atomic::Ordering::Relaxed);
        }
        hit
    }
    #[cfg(rcu_loom)]
    {
        let _ = (p, size);
        false
    }
}

/// Failures [`inject`] reported.
#[cfg(not(rcu_loom))]
pub(crate) fn injected() -> u64 {
    INJECTED.load(crate::primitive::sync::atomic::Ordering::Relaxed)
}
