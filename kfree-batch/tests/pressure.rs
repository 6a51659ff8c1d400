//! The batcher under memory pressure and misuse. Every case runs in a child process (the page
//! budget, RLIMIT_AS and the batcher configuration are process-wide) with a deadline checked from
//! outside; the parent checks the exit status and the child's report.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfree_batch::{
    impl_has_rcu_head, kfree_rcu, kfree_rcu_head, kfree_rcu_raw, kvfree_rcu_barrier, stats,
    RcuHead, PARK_SLOTS,
};
use rcu_core::rcu_read_lock;
use test_support::{child_case, run_child, stderr};

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Tracked(#[allow(dead_code)] [u64; 4]);
impl Drop for Tracked {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

struct Linked {
    _v: [u64; 4],
    head: RcuHead,
}
impl_has_rcu_head!(Linked, head);
impl Drop for Linked {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn warm_up() {
    for i in 0..5_000u64 {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    kvfree_rcu_barrier();
}

/// Page budget 0 after warm-up: every object is still freed, the fallback is counted, and no
/// object is freed before its grace period (a reader holds the first ones throughout).
fn case_budget_zero() {
    warm_up();
    let base = DROPPED.load(Ordering::Relaxed);
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all(); // the batcher's shrinker gives its cached pages back
    let n = 20_000u64;
    for i in 0..n {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    kvfree_rcu_barrier();
    let s = stats();
    println!("budget0: {s:?}");
    assert_eq!(DROPPED.load(Ordering::Relaxed) - base, n, "objects lost");
    // The fallback under a zero page budget parks (and waits once per full park array).
    assert!(
        s.objects_parked > 0,
        "no fallback taken with a zero budget: {s:?}"
    );
    assert_eq!(s.queued, s.freed);
    slab_backend::set_memory_limit(None);
}

/// The budget drops to 0 while blocks are in flight and nobody runs the shrinkers: freed blocks
/// pages go back instead of being recycled, so the batcher runs out of pages, falls back, and ends
/// holding no page at all (it shrinks to the limit instead of living on its recycled pages).
fn case_budget_lowered_in_flight() {
    warm_up();
    let base = DROPPED.load(Ordering::Relaxed);
    for i in 0..50_000u64 {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    let before = slab_backend::memory_stats();
    slab_backend::set_memory_limit(Some(0));
    let n = 200_000u64;
    for i in 0..n {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    kvfree_rcu_barrier();
    let s = stats();
    let after = slab_backend::memory_stats();
    println!("lowered: before {before:?}\nafter {after:?}\n{s:?}");
    assert_eq!(
        DROPPED.load(Ordering::Relaxed) - base,
        50_000 + n,
        "objects lost"
    );
    assert!(
        after.budget_refusals > before.budget_refusals,
        "the budget never refused: the batcher lived on recycled pages"
    );
    assert!(s.objects_parked > 0, "no fallback taken: {s:?}");
    // What may stay: this thread's park array (two pages, kept for reuse by later threads like
    // a thread record). Blocks and cached pages must all be gone.
    assert_eq!(s.pages_cached, 0, "pages cached over a zero limit: {s:?}");
    assert!(
        after.bytes_in_use <= 2 * slab_backend::PAGE_SIZE,
        "{} bytes of pages still held over a zero limit after the barrier",
        after.bytes_in_use
    );
    slab_backend::set_memory_limit(None);
}

/// The limit drops below the use while the emergency caches are full, and no shrinker runs: the
/// next collection pass (here the barrier's) gives the cached pages back. Before, they stayed
/// cached over the limit until memory ran short enough for a shrinker.
fn case_limit_drops_cached_pages() {
    warm_up();
    // The worker refills the caches after the warm-up (asynchronously).
    let t = Instant::now();
    while stats().pages_cached == 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let cached = stats().pages_cached;
    assert!(cached > 0, "the worker never refilled the caches");
    slab_backend::set_memory_limit(Some(0));
    kvfree_rcu_barrier();
    let s = stats();
    let m = slab_backend::memory_stats();
    println!("limit-drops-cached: {cached} cached before; after {s:?}\n{m:?}");
    assert_eq!(s.pages_cached, 0, "pages kept cached over the limit");
    assert_eq!(
        m.shrinker_runs, 0,
        "a shrinker ran: the case tests the pass alone"
    );
    slab_backend::set_memory_limit(None);
}

/// Inside a reader with no memory: no deadlock, nothing freed before the guard drops, all freed
/// after it.
fn case_reader_under_pressure() {
    warm_up();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    let base = DROPPED.load(Ordering::Relaxed);
    let n = 100u64;
    {
        let _g = rcu_read_lock();
        for i in 0..n {
            kfree_rcu(Box::new(Tracked([i; 4]))); // parks
        }
        for _ in 0..20 {
            kfree_rcu_head(Box::new(Linked {
                _v: [0; 4],
                head: RcuHead::new(),
            })); // links
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            DROPPED.load(Ordering::Relaxed),
            base,
            "freed inside the retiring reader"
        );
    }
    kvfree_rcu_barrier();
    let s = stats();
    println!("reader-under-pressure: {s:?}");
    assert_eq!(
        DROPPED.load(Ordering::Relaxed) - base,
        n + 20,
        "objects lost"
    );
    assert!(s.objects_parked >= n, "{s:?}");
    assert!(s.head_queued >= 20, "{s:?}");
    assert_eq!(s.parked_now, 0);
    slab_backend::set_memory_limit(None);
}

/// Ids of [`Marked`] objects.
const MARKED_IDS: usize = 1 << 16;
/// `DEAD[id]`: the object of that id was dropped.
static DEAD: [AtomicBool; MARKED_IDS] = [const { AtomicBool::new(false) }; MARKED_IDS];

/// An object whose drop marks `DEAD[id]`, so that a reader can check, without touching freed
/// memory, that what it found inside its section was not freed before the section ended.
struct Marked {
    id: usize,
    _pad: [u64; 3],
}
impl Drop for Marked {
    fn drop(&mut self) {
        // SeqCst: the reader's SeqCst load at the end of its section sees a drop that ran before.
        DEAD[self.id].store(true, Ordering::SeqCst);
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Page budget 0 and a reader holding 50 ms sections back to back: a producer replaces a
/// published object 50,000 times and retires each old one outside any reader. The retiring
/// thread may wait for a grace period only once per park array full (not once per object);
/// nothing is lost, nothing the reader found is freed inside its section, and the page layer
/// holds no more than before (the park array was mapped before the budget dropped).
fn case_zero_budget_churn() {
    warm_up();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    kvfree_rcu_barrier();
    let mem0 = slab_backend::memory_stats().bytes_in_use;
    let s0 = stats();
    let base = DROPPED.load(Ordering::Relaxed);
    let slot = Arc::new(AtomicPtr::new(Box::into_raw(Box::new(Marked {
        id: 0,
        _pad: [0; 3],
    }))));
    let stop = Arc::new(AtomicBool::new(false));
    let early = Arc::new(AtomicU64::new(0));
    let sections = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let (slot, stop, early, sections) =
            (slot.clone(), stop.clone(), early.clone(), sections.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut first = Some(tx);
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(120) {
                let g = rcu_read_lock();
                if let Some(tx) = first.take() {
                    tx.send(()).unwrap();
                }
                let p = slot.load(Ordering::Acquire);
                // SAFETY: found under `g`; retired objects are freed only after a grace period.
                let id = unsafe { (*p).id };
                std::thread::sleep(Duration::from_millis(50));
                if DEAD[id].load(Ordering::SeqCst) {
                    early.fetch_add(1, Ordering::Relaxed);
                }
                drop(g);
                sections.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    rx.recv().unwrap();
    let n = 50_000usize;
    let t = Instant::now();
    let mut retired = 0u64;
    for id in 1..=n {
        if t.elapsed() > Duration::from_secs(60) {
            break;
        }
        let new = Box::into_raw(Box::new(Marked {
            id,
            _pad: [id as u64; 3],
        }));
        let old = slot.swap(new, Ordering::AcqRel);
        // SAFETY: from `Box::into_raw`, unpublished by the swap, retired once.
        unsafe { kfree_rcu_raw(old) };
        retired += 1;
    }
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let last = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: as above; the reader has stopped.
    unsafe { kfree_rcu_raw(last) };
    retired += 1;
    kvfree_rcu_barrier();
    let s = stats();
    let mem1 = slab_backend::memory_stats().bytes_in_use;
    let waits = (s.fallback_sync - s0.fallback_sync) + (s.park_waits - s0.park_waits);
    println!(
        "zero-churn: {retired} objects in {took:?}, {} reader sections, {waits} waits by the \
         retiring thread; pages {mem0} -> {mem1} B: {s:?}",
        sections.load(Ordering::Relaxed)
    );
    assert_eq!(
        early.load(Ordering::Relaxed),
        0,
        "objects freed inside a reader's section"
    );
    assert_eq!(
        DROPPED.load(Ordering::Relaxed) - base,
        retired,
        "objects lost"
    );
    assert!(
        waits * 100 <= retired,
        "the retiring thread waited for {waits} grace periods for {retired} objects under a zero \
         page budget: {s:?}"
    );
    assert!(
        mem1 <= mem0,
        "the page layer grew over a zero budget: {mem0} -> {mem1} B"
    );
    assert!(s.peak_pending_bytes <= s.pending_cap, "{s:?}");
    assert_eq!(s.parked_now, 0, "{s:?}");
    assert_eq!(s.queued, s.freed, "{s:?}");
    slab_backend::set_memory_limit(None);
}

/// Page budget 0, and 20,000 headless objects retired inside one read-side critical section
/// (far more than the park slots): no panic, no deadlock, nothing freed before the guard drops,
/// everything freed after it; the spill is counted and its memory given back.
fn case_spill_in_reader() {
    static SPILL_REPORTS: AtomicU64 = AtomicU64::new(0);
    rcu_core::set_stall_hook(Some(|r| {
        if r.kind == rcu_core::StallKind::RetireSpilled {
            SPILL_REPORTS.fetch_add(1, Ordering::Relaxed);
        }
    }));
    warm_up();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    let base = DROPPED.load(Ordering::Relaxed);
    let n = 20_000u64;
    {
        let _g = rcu_read_lock();
        for i in 0..n {
            kfree_rcu(Box::new(Tracked([i; 4])));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            DROPPED.load(Ordering::Relaxed),
            base,
            "freed inside the retiring reader"
        );
    }
    kvfree_rcu_barrier();
    let s = stats();
    println!("spill-in-reader: {s:?}");
    assert_eq!(DROPPED.load(Ordering::Relaxed) - base, n, "objects lost");
    assert!(s.spilled >= n - PARK_SLOTS as u64, "{s:?}");
    assert!(s.spill_bytes_peak > 0, "{s:?}");
    assert_eq!(
        s.spill_bytes, 0,
        "spill memory kept after the barrier: {s:?}"
    );
    assert_eq!(s.parked_now, 0, "{s:?}");
    assert_eq!(s.queued, s.freed, "{s:?}");
    assert_eq!(
        SPILL_REPORTS.load(Ordering::Relaxed),
        1,
        "the spill is reported once"
    );
    slab_backend::set_memory_limit(None);
}

/// The pending cap reached while this thread's own read-side critical section holds grace
/// periods up, with pages available: retiring far past the cap and the park slots inside the
/// section spills instead of panicking; everything is freed after the guard drops.
fn case_spill_at_cap() {
    let cap = 1usize << 20;
    kfree_batch::configure(kfree_batch::Config {
        pending_cap: cap,
        ..Default::default()
    })
    .unwrap();
    warm_up();
    let base = DROPPED.load(Ordering::Relaxed);
    // 48-byte heap chunks: about 5x the cap.
    let n = 100_000u64;
    {
        let _g = rcu_read_lock();
        for i in 0..n {
            kfree_rcu(Box::new(Tracked([i; 4])));
        }
        assert_eq!(
            DROPPED.load(Ordering::Relaxed),
            base,
            "freed inside the retiring reader"
        );
    }
    kvfree_rcu_barrier();
    let s = stats();
    println!("spill-at-cap: {s:?}");
    assert_eq!(DROPPED.load(Ordering::Relaxed) - base, n, "objects lost");
    assert!(s.spilled > 0, "{s:?}");
    assert!(
        s.peak_pending_bytes as usize <= kfree_batch::counted_cap(cap),
        "{s:?}"
    );
    // What the section held past the cap is counted, and given back with the objects.
    assert!(s.overdraft_bytes_peak > 0, "{s:?}");
    assert_eq!(s.overdraft_bytes, 0, "{s:?}");
    assert_eq!(s.spill_bytes, 0, "{s:?}");
    assert_eq!(s.queued, s.freed, "{s:?}");
}

/// RLIMIT_AS nearly full: the page layer's mmap fails, the batcher falls back, nothing aborts.
fn case_rlimit() {
    warm_up();
    // Allocate the objects first (Box::new aborts on OOM), then leave little address space.
    let n = 50_000usize;
    let objs: Vec<Box<Tracked>> = (0..n).map(|i| Box::new(Tracked([i as u64; 4]))).collect();
    // A reader holds grace periods off for 100 ms, so freed pages cannot be recycled in time and
    // the batcher must map new ones, which RLIMIT_AS refuses.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    });
    rx.recv().unwrap();
    slab_backend::shrink_all();
    let limit = test_support::vm_size() + (64 << 10);
    test_support::set_rlimit_as(limit).expect("setrlimit");
    let base = DROPPED.load(Ordering::Relaxed);
    for o in objs {
        kfree_rcu(o);
    }
    reader.join().unwrap();
    kvfree_rcu_barrier();
    let os_refusals = slab_backend::memory_stats().os_refusals;
    println!("rlimit: page-layer OS refusals {os_refusals}");
    assert!(os_refusals > 0, "RLIMIT_AS never refused a mapping");
    let s = stats();
    println!("rlimit: {s:?}");
    assert_eq!(
        DROPPED.load(Ordering::Relaxed) - base,
        n as u64,
        "objects lost"
    );
    assert!(
        s.fallback_sync + s.objects_parked > 0,
        "no fallback under RLIMIT_AS: {s:?}"
    );
}

/// Starts a thread that holds a read guard until the returned flag is cleared or `max` passes;
/// returns once the guard is held.
fn stalled_reader(max: Duration) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let hold = Arc::new(AtomicBool::new(true));
    let (tx, rx) = std::sync::mpsc::channel();
    let h = hold.clone();
    let reader = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        tx.send(()).unwrap();
        let t = Instant::now();
        while h.load(Ordering::Relaxed) && t.elapsed() < max {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    rx.recv().unwrap();
    (hold, reader)
}

/// A reader holds its guard for 200 ms while another thread retires many objects under a small
/// cap: pending memory never passes the cap; callers fall back; everything is freed.
fn case_cap_stalled_reader() {
    let cap = 1usize << 20;
    kfree_batch::configure(kfree_batch::Config {
        pending_cap: cap,
        ..Default::default()
    })
    .unwrap();
    let (hold, reader) = stalled_reader(Duration::from_millis(200));
    let n: u64 = if cfg!(debug_assertions) {
        1_000_000
    } else {
        10_000_000
    };
    let base = DROPPED.load(Ordering::Relaxed);
    let t = Instant::now();
    for i in 0..n {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    let took = t.elapsed();
    hold.store(false, Ordering::Relaxed);
    reader.join().unwrap();
    kvfree_rcu_barrier();
    let s = stats();
    println!("cap-stalled: {n} objects in {took:?}: {s:?}");
    assert!(
        s.peak_pending_bytes as usize <= cap,
        "pending {} passed the cap {cap}",
        s.peak_pending_bytes
    );
    assert!(s.fallback_sync > 0, "{s:?}");
    assert_eq!(DROPPED.load(Ordering::Relaxed) - base, n, "objects lost");
    assert_eq!(s.queued, s.freed);
}

/// The cap bounds resident memory, not only the batcher's count: with a reader stalled, the
/// process's peak RSS grows by at most the cap while far more than the cap is retired (cached
/// block pages are charged like pages in use).
///
/// The cap is 16 MiB so that the 1/64 the batcher leaves to the allocator (256 KiB) also covers
/// the kernel's own error on the peak (`VmHWM` comes from per-CPU counters summed approximately:
/// up to 32 pages per CPU, 256 KiB on this 2-vCPU machine); with an 8 MiB cap the reading passed
/// the cap by up to 40 KiB in about one release run in ten while the batcher's count stayed 128
/// KiB under it.
fn case_rss_under_cap() {
    let cap = 16usize << 20;
    kfree_batch::configure(kfree_batch::Config {
        pending_cap: cap,
        ..Default::default()
    })
    .unwrap();
    // One-time set-up outside the measurement (worker thread, slots, caches, front, park slots).
    for i in 0..1024u64 {
        kfree_rcu(Box::new([i; 4]));
    }
    kvfree_rcu_barrier();
    // Held for up to 2 s (the first retire over the cap waits for it): long enough for the cap
    // to be reached while it holds in a slow run too (a debug build sharing the two CPUs with
    // the other cases' children once took more than 300 ms to reach half this cap).
    let (hold, reader) = stalled_reader(Duration::from_secs(2));
    let rss0 = test_support::start_peak_rss();
    // 48-byte heap chunks: 1M objects are about 3x the cap.
    let n = 1_000_000u64;
    let base = DROPPED.load(Ordering::Relaxed);
    for i in 0..n {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    let grew = test_support::peak_rss().saturating_sub(rss0);
    hold.store(false, Ordering::Relaxed);
    reader.join().unwrap();
    kvfree_rcu_barrier();
    let s = stats();
    println!("rss-under-cap: peak RSS grew {grew} B under a cap of {cap} B: {s:?}");
    assert!(s.fallback_sync > 0, "the cap was never reached: {s:?}");
    // The batcher's count stays under `counted_cap(cap)`, leaving 1/64 of the cap to the
    // allocator's fragmentation around the pending chunks: the process grows by at most the cap.
    assert!(
        s.peak_pending_bytes as usize <= kfree_batch::counted_cap(cap),
        "{s:?}"
    );
    // AddressSanitizer's quarantine keeps freed heap memory resident: the RSS bound holds only
    // without it.
    if !cfg!(rcu_sanitize) {
        assert!(
            grew <= cap,
            "peak RSS grew {grew} B, more than the cap {cap} B"
        );
    }
    assert!(
        s.pending_bytes >= s.pages_cached * 4096,
        "cached pages must stay charged: {s:?}"
    );
    assert_eq!(DROPPED.load(Ordering::Relaxed) - base, n, "objects lost");
}

/// An 8 KiB object with an embedded head, counted while alive.
struct BigLinked {
    _v: [u8; 8192],
    head: RcuHead,
}
impl_has_rcu_head!(BigLinked, head);
static BIG_LIVE: AtomicU64 = AtomicU64::new(0);
impl Drop for BigLinked {
    fn drop(&mut self) {
        BIG_LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}
/// glibc's chunk for a `BigLinked` (8 KiB + 16 + 8 of header, 16-byte granules).
const BIG_CHUNK: u64 = (core::mem::size_of::<BigLinked>() as u64 + 8).div_ceil(16) * 16;

fn big_linked() -> Box<BigLinked> {
    BIG_LIVE.fetch_add(1, Ordering::Relaxed);
    Box::new(BigLinked {
        _v: [1; 8192],
        head: RcuHead::new(),
    })
}

/// A 64 KiB cap, a reader on another thread holding grace periods up, and 4096 head-linked 8 KiB
/// objects retired outside any reader: the objects really waiting for a grace period (retired,
/// not yet dropped) never weigh more than the cap, and neither does the peak RSS growth (with
/// the kernel's error on the peak as slack). Head-linking when no page can be had charges the
/// budget like a batched object, and at the cap the retiring thread waits for a grace period.
fn case_head_cap() {
    let cap = 64usize << 10;
    kfree_batch::configure(kfree_batch::Config {
        pending_cap: cap,
        ..Default::default()
    })
    .unwrap();
    kfree_rcu_head(big_linked());
    kvfree_rcu_barrier();
    let (hold, reader) = stalled_reader(Duration::from_millis(300));
    let rss0 = test_support::start_peak_rss();
    let mut max_live = 0;
    for _ in 0..4096 {
        kfree_rcu_head(big_linked());
        max_live = max_live.max(BIG_LIVE.load(Ordering::Relaxed));
    }
    let grew = test_support::peak_rss().saturating_sub(rss0);
    let s = stats();
    hold.store(false, Ordering::Relaxed);
    reader.join().unwrap();
    kvfree_rcu_barrier();
    let real = max_live * BIG_CHUNK;
    println!("head-cap: at most {max_live} objects ({real} B) pending, RSS grew {grew} B: {s:?}");
    assert!(
        real <= cap as u64,
        "{real} B of head-linked objects pending at once, over the cap of {cap} B: {s:?}"
    );
    assert!(
        s.peak_pending_bytes as usize <= kfree_batch::counted_cap(cap),
        "{s:?}"
    );
    // The kernel's peak (VmHWM) may be off by up to 256 KiB on two CPUs (see `case_rss_under_cap`).
    // AddressSanitizer's quarantine keeps freed heap memory resident: the RSS bound holds only
    // without it.
    if !cfg!(rcu_sanitize) {
        assert!(
            grew <= cap + (512 << 10),
            "peak RSS grew {grew} B under a cap of {cap} B"
        );
    }
    assert_eq!(BIG_LIVE.load(Ordering::Relaxed), 0, "objects lost");
    assert_eq!(
        s.overdraft_bytes_peak, 0,
        "an overdraft outside readers: {s:?}"
    );
    // One wait frees every object pending (about 7 fit under the cap), not one per object.
    assert!(
        s.grace_periods + s.fallback_sync <= 2048,
        "about one grace period per object: {s:?}"
    );

    // Inside a reader the retiring thread cannot wait: past the budget the objects are held
    // anyway and counted as the overdraft, which goes back to zero once they are freed.
    {
        let _g = rcu_read_lock();
        for _ in 0..32 {
            kfree_rcu_head(big_linked());
        }
        let s = stats();
        println!("head-cap: 32 objects inside one reader: {s:?}");
        assert!(
            s.overdraft_bytes > 0 && s.pending_bytes + s.overdraft_bytes >= 32 * BIG_CHUNK,
            "objects held past the cap inside a reader are not counted: {s:?}"
        );
        assert!(
            s.pending_bytes as usize <= kfree_batch::counted_cap(cap),
            "{s:?}"
        );
    }
    kvfree_rcu_barrier();
    let s = stats();
    assert_eq!(s.overdraft_bytes, 0, "{s:?}");
    assert!(
        s.overdraft_bytes_peak >= 32 * BIG_CHUNK - cap as u64,
        "{s:?}"
    );
    assert_eq!(BIG_LIVE.load(Ordering::Relaxed), 0, "objects lost");
    assert_eq!(s.queued, s.freed, "{s:?}");
}

/// Under a 256 KiB cap, 20 threads each retire one small object and then stay alive, idle: their
/// unspent budget slices are taken back when a reserve is refused, so no retire falls back to a
/// synchronous grace period, and the retires that follow batch again.
fn case_idle_threads() {
    let cap = 256usize << 10;
    kfree_batch::configure(kfree_batch::Config {
        pending_cap: cap,
        ..Default::default()
    })
    .unwrap();
    // A light warm-up: 5,000 objects would fill this cap on their own if the worker's grace
    // periods lag (a loaded machine).
    for i in 0..100u64 {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    kvfree_rcu_barrier();
    let s0 = stats();
    let stop = Arc::new(AtomicBool::new(false));
    let mut idle = Vec::new();
    for i in 0..20u64 {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = stop.clone();
        idle.push(std::thread::spawn(move || {
            kfree_rcu(Box::new(Tracked([i; 4])));
            tx.send(()).unwrap();
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
        rx.recv().unwrap();
    }
    let s = stats();
    println!("idle-threads: after 20 idle threads: {s:?}");
    assert_eq!(
        s.fallback_sync - s0.fallback_sync,
        0,
        "idle threads' reservations pushed retires to a synchronous grace period: {s:?}"
    );
    for i in 0..1000u64 {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    let s2 = stats();
    println!("idle-threads: after 1000 more retires: {s2:?}");
    assert_eq!(s2.fallback_sync - s0.fallback_sync, 0, "{s2:?}");
    assert!(
        s2.reserve_reclaims - s.reserve_reclaims <= 2,
        "the later retires kept reclaiming reservations (slow path): {s2:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for t in idle {
        t.join().unwrap();
    }
    kvfree_rcu_barrier();
    let s = stats();
    assert_eq!(s.queued, s.freed, "{s:?}");
}

/// A box the allocator serves with its own mapping (at or above glibc's 128 KiB threshold)
/// occupies whole pages: it is charged at that footprint, not at its size.
fn case_large_box() {
    const N: usize = (128 << 10) + 8;
    const FOOTPRINT: usize = (N + 16).div_ceil(4096) * 4096;
    warm_up();
    let (hold, reader) = stalled_reader(Duration::from_secs(5));
    let before = stats().pending_bytes as usize;
    let k = 10;
    for _ in 0..k {
        let b: Box<[u8; N]> = vec![0u8; N].into_boxed_slice().try_into().unwrap();
        kfree_rcu(b);
    }
    let after = stats().pending_bytes as usize;
    hold.store(false, Ordering::Relaxed);
    reader.join().unwrap();
    kvfree_rcu_barrier();
    println!("large-box: pending grew {} B for {k} boxes", after - before);
    assert!(
        after - before >= k * FOOTPRINT,
        "{k} boxes of {N} B charged {} B, less than their {} B footprint",
        after - before,
        k * FOOTPRINT
    );
}

/// The barrier inside a reader panics with a clear message.
fn case_barrier_in_reader() {
    let _g = rcu_read_lock();
    kvfree_rcu_barrier();
}

/// A fork child keeps working (worker restarted lazily).
fn case_fork() {
    warm_up();
    for i in 0..1000u64 {
        kfree_rcu(Box::new(Tracked([i; 4])));
    }
    // SAFETY: the child only uses the kit and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let base = DROPPED.load(Ordering::Relaxed);
        for i in 0..10_000u64 {
            kfree_rcu(Box::new(Tracked([i; 4])));
        }
        kvfree_rcu_barrier();
        let ok = DROPPED.load(Ordering::Relaxed) - base >= 10_000;
        // SAFETY: async-signal-safe exit of the fork child.
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    let mut status = 0;
    let t = Instant::now();
    loop {
        // SAFETY: our own child.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            break;
        }
        if t.elapsed() > Duration::from_secs(20) {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("fork child hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fork child failed: {status}"
    );
    kvfree_rcu_barrier();
}

#[test]
fn pressure_child() {
    match child_case().as_deref() {
        Some("budget0") => case_budget_zero(),
        Some("lowered") => case_budget_lowered_in_flight(),
        Some("limit_cached") => case_limit_drops_cached_pages(),
        Some("reader") => case_reader_under_pressure(),
        Some("rlimit") => case_rlimit(),
        Some("cap") => case_cap_stalled_reader(),
        Some("rss_cap") => case_rss_under_cap(),
        Some("barrier_in_reader") => case_barrier_in_reader(),
        Some("fork") => case_fork(),
        Some("zero_churn") => case_zero_budget_churn(),
        Some("spill") => case_spill_in_reader(),
        Some("spill_cap") => case_spill_at_cap(),
        Some("head_cap") => case_head_cap(),
        Some("idle_threads") => case_idle_threads(),
        Some("large_box") => case_large_box(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn expect_ok(case: &str) -> String {
    let out = run_child("pressure_child", case, &[], Duration::from_secs(150));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case {case} failed:\n{all}");
    all
}

#[test]
fn peak_rss_grows_by_at_most_the_cap() {
    let out = expect_ok("rss_cap");
    let line = out.lines().find(|l| l.contains("rss-under-cap"));
    eprintln!("{}", line.unwrap_or("(no figure line)"));
}

#[test]
fn budget_zero_after_warm_up_frees_everything_through_fallbacks() {
    expect_ok("budget0");
}

#[test]
fn budget_lowered_with_blocks_in_flight_shrinks_the_batcher() {
    expect_ok("lowered");
}

#[test]
fn lowered_limit_gives_cached_pages_back_at_the_next_pass() {
    expect_ok("limit_cached");
}

#[test]
fn retire_inside_reader_under_pressure_parks_and_links() {
    expect_ok("reader");
}

#[test]
fn rlimit_as_nearly_full() {
    expect_ok("rlimit");
}

#[test]
fn pending_memory_stays_under_cap_with_stalled_reader() {
    expect_ok("cap");
}

#[test]
fn fork_child_keeps_working() {
    expect_ok("fork");
}

#[test]
fn barrier_inside_reader_panics() {
    let out = run_child(
        "pressure_child",
        "barrier_in_reader",
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("read-side critical section"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn zero_budget_churn_waits_once_per_park_array() {
    let out = expect_ok("zero_churn");
    let line = out.lines().find(|l| l.contains("zero-churn"));
    eprintln!("{}", line.unwrap_or("(no figure line)"));
}

#[test]
fn retire_past_the_park_slots_inside_one_reader_spills() {
    expect_ok("spill");
}

#[test]
fn retire_past_the_cap_inside_one_reader_spills() {
    expect_ok("spill_cap");
}

#[test]
fn head_linked_retires_stay_under_the_cap_outside_readers() {
    let out = expect_ok("head_cap");
    let line = out.lines().find(|l| l.contains("head-cap"));
    eprintln!("{}", line.unwrap_or("(no figure line)"));
}

#[test]
fn idle_threads_reservations_are_taken_back() {
    expect_ok("idle_threads");
}

#[test]
fn large_boxes_are_charged_at_their_footprint() {
    expect_ok("large_box");
}
