//! The VMA-reuse model run: configuration, counters, fault and mapper threads, `run_mode`.
//!
//! The address space and the per-VMA lock protocol (and why every access is memory-safe and
//! ordered) are described in `mm.rs`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcu_kit::{kvfree_rcu_barrier, rcu_barrier, rcu_read_lock};

use crate::mapper::Mapper;
use crate::mm::{handle_fault, Mm, VmaAlloc, BASE, PAGE, PAGES_PER_VMA};

/// The kfree_rcu pending cap the example runs with (unless `RCU_KIT_KFREE_CAP` sets another):
/// a bound on the retired VMA arrays waiting for a grace period, charged with their entry
/// buffers. They, not the VMA cache, are what a slow grace period leaves waiting in every mode
/// (tens of MiB per stalled second at the default map rate). A normal run keeps under half of
/// it; when a reader or the starved worker stalls grace periods, a mapper retiring past it waits
/// for a grace period itself instead of growing memory.
pub(crate) const KFREE_PENDING_CAP: usize = 32 << 20;

/// Sets the kfree_rcu pending cap to [`KFREE_PENDING_CAP`] unless `RCU_KIT_KFREE_CAP` chose
/// one (through the environment, so the batcher's other `RCU_KIT_KFREE_*` settings still
/// apply). Call at the start of `main`, before any thread is started or anything retired.
pub(crate) fn configure_kfree() {
    if std::env::var_os("RCU_KIT_KFREE_CAP").is_none() {
        std::env::set_var("RCU_KIT_KFREE_CAP", KFREE_PENDING_CAP.to_string());
    }
}

/// How an unmapped VMA goes back to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `SLAB_TYPESAFE_BY_RCU` cache: freed at once (the 2025 series).
    Typesafe,
    /// Ordinary cache, each VMA freed by its own `call_rcu` (the kernel before the series).
    CallRcu,
    /// Ordinary cache, each VMA freed through `kfree_rcu_cache` (batched).
    KfreeRcu,
}

impl Mode {
    /// All modes, in the order a full run uses.
    pub(crate) const ALL: [Mode; 3] = [Mode::Typesafe, Mode::CallRcu, Mode::KfreeRcu];

    /// The name used on the command line and in JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Typesafe => "typesafe",
            Mode::CallRcu => "call-rcu",
            Mode::KfreeRcu => "kfree-rcu",
        }
    }

    /// Parses a command-line name.
    pub(crate) fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Parameters of one run of one mode.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// How VMAs are freed.
    pub(crate) mode: Mode,
    /// Fault threads.
    pub(crate) threads: usize,
    /// Mapper threads (mmap/munmap/split/merge/mprotect).
    pub(crate) mappers: usize,
    /// Address spaces.
    pub(crate) mms: usize,
    /// Target VMAs per address space.
    pub(crate) vmas: usize,
    /// Duration of the timed phase.
    pub(crate) seconds: f64,
    /// Mapper operations (mmap write-lock sections) per second per mapper; 0 = as fast as
    /// possible.
    pub(crate) map_rate: u64,
    /// PRNG seed.
    pub(crate) seed: u64,
    /// TEST ONLY: skip the `vm_mm` revalidation (must produce wrong-VMA results in typesafe mode).
    pub(crate) skip_mm_check: bool,
}

/// Why `lock_vma_under_rcu` gave up and the fault took the mm-wide lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fallbacks {
    /// The VMA was write-locked (`vm_lock_seq == mm_lock_seq`, or a writer excluded readers).
    pub(crate) seq: u64,
    /// The walk kept finding detached VMAs ([`DETACHED_RETRIES`] retries).
    pub(crate) detached: u64,
    /// The VMA had been recycled into another mm.
    pub(crate) wrong_mm: u64,
    /// The VMA no longer covered the address (split, merge, or recycled elsewhere).
    pub(crate) range: u64,
    /// No VMA at the address (the mm-wide path then reports SIGSEGV).
    pub(crate) unmapped: u64,
}

impl Fallbacks {
    /// Every fallback.
    pub(crate) fn total(&self) -> u64 {
        self.seq + self.detached + self.wrong_mm + self.range + self.unmapped
    }

    fn add(&mut self, o: &Fallbacks) {
        self.seq += o.seq;
        self.detached += o.detached;
        self.wrong_mm += o.wrong_mm;
        self.range += o.range;
        self.unmapped += o.unmapped;
    }
}

/// Fault-side counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FaultStats {
    /// Faults handled (either path).
    pub(crate) faults: u64,
    /// Faults served under the per-VMA lock.
    pub(crate) vma_locked: u64,
    /// Fallbacks to the mm-wide lock, by reason.
    pub(crate) fallbacks: Fallbacks,
    /// Walks retried because the VMA found was detached (the kernel's VMA_LOCK_MISS).
    pub(crate) detached_retries: u64,
    /// Rejections of a VMA that had been freed and reallocated since the walk found it.
    pub(crate) reuse_caught: u64,
    /// Recycled VMAs that legitimately passed (reused in the same mm, covering the address).
    pub(crate) reuse_accepted: u64,
    /// Faults that ended holding a VMA that does not map the address in this mm.
    pub(crate) wrong_vma: u64,
    /// A VMA reused before a grace period in a mode that promises otherwise.
    pub(crate) rcu_errors: u64,
    /// Faults at unmapped addresses (confirmed under the mm-wide lock).
    pub(crate) segv: u64,
    /// CPU time the fault threads used, in nanoseconds (a load-independent cost measure).
    pub(crate) cpu_ns: u64,
}

impl FaultStats {
    fn add(&mut self, o: &FaultStats) {
        self.faults += o.faults;
        self.vma_locked += o.vma_locked;
        self.fallbacks.add(&o.fallbacks);
        self.detached_retries += o.detached_retries;
        self.reuse_caught += o.reuse_caught;
        self.reuse_accepted += o.reuse_accepted;
        self.wrong_vma += o.wrong_vma;
        self.rcu_errors += o.rcu_errors;
        self.segv += o.segv;
        self.cpu_ns += o.cpu_ns;
    }
}

/// Mapper-side counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MapStats {
    /// mmap write-lock sections.
    pub(crate) ops: u64,
    /// VMAs allocated.
    pub(crate) allocated: u64,
    /// VMAs detached and freed (munmap, merge, exit).
    pub(crate) freed: u64,
    /// `call_rcu` calls made for VMAs.
    pub(crate) vma_call_rcu: u64,
    /// `kfree_rcu*` calls (VMAs and retired VMA arrays).
    pub(crate) kfree_rcu: u64,
    /// Allocations the cache refused.
    pub(crate) alloc_failures: u64,
}

impl MapStats {
    fn add(&mut self, o: &MapStats) {
        self.ops += o.ops;
        self.allocated += o.allocated;
        self.freed += o.freed;
        self.vma_call_rcu += o.vma_call_rcu;
        self.kfree_rcu += o.kfree_rcu;
        self.alloc_failures += o.alloc_failures;
    }
}

/// Result of one mode.
#[derive(Clone, Debug)]
pub(crate) struct ModeReport {
    /// The mode.
    pub(crate) mode: Mode,
    /// Length of the timed phase in seconds.
    pub(crate) seconds: f64,
    /// Fault counters.
    pub(crate) fault: FaultStats,
    /// Mapper counters (including the final teardown).
    pub(crate) map: MapStats,
    /// `call_rcu` callbacks queued process-wide during the timed phase (VMA frees, slab page
    /// releases, anything else in the kit).
    pub(crate) call_rcu_calls: u64,
    /// Grace periods completed during the timed phase.
    pub(crate) grace_periods: u64,
    /// Peak resident set size of the process during this mode.
    pub(crate) peak_rss_bytes: u64,
    /// Largest memory of the VMA cache's slabs (on its lists, plus those waiting for a grace
    /// period before release), sampled about every 100 ms of the timed phase and after it.
    pub(crate) peak_cache_bytes: u64,
    /// Objects still allocated in the VMA cache after teardown and barriers.
    pub(crate) vmas_leaked: u64,
}

impl ModeReport {
    /// Adds another run of the same mode (`--rounds`): counters add up, peaks take the maximum.
    pub(crate) fn merge(&mut self, o: &ModeReport) {
        debug_assert_eq!(self.mode, o.mode);
        self.seconds += o.seconds;
        self.fault.add(&o.fault);
        self.map.add(&o.map);
        self.call_rcu_calls += o.call_rcu_calls;
        self.grace_periods += o.grace_periods;
        self.peak_rss_bytes = self.peak_rss_bytes.max(o.peak_rss_bytes);
        self.peak_cache_bytes = self.peak_cache_bytes.max(o.peak_cache_bytes);
        self.vmas_leaked += o.vmas_leaked;
    }

    /// Faults per second of the timed phase.
    pub(crate) fn faults_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.fault.faults as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Faults per CPU second of the fault threads (insensitive to other load on the machine).
    pub(crate) fn faults_per_cpu_sec(&self) -> f64 {
        if self.fault.cpu_ns > 0 {
            self.fault.faults as f64 * 1e9 / self.fault.cpu_ns as f64
        } else {
            0.0
        }
    }

    /// Whether the run showed an error (wrong VMA, leak, RCU violation).
    pub(crate) fn failed(&self) -> bool {
        self.fault.wrong_vma > 0 || self.vmas_leaked > 0 || self.fault.rcu_errors > 0
    }
}

/// xorshift64* — small, seeded, good enough to pick addresses and operations.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` of `seed` (splitmix64 of both, never zero).
    pub(crate) fn new(seed: u64, stream: u64) -> Rng {
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(z | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Live counters, flushed by the threads now and then (for the progress line) and at the end.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Fault counters so far.
    pub(crate) fault: Mutex<FaultStats>,
    /// Mapper counters so far.
    pub(crate) map: Mutex<MapStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn fault_thread(cfg: &Config, mms: &[Arc<Mm>], idx: usize, stop: &AtomicBool, live: &Live) {
    let cpu0 = thread_cpu_ns();
    let mut rng = Rng::new(cfg.seed, 1000 + idx as u64);
    let mut st = FaultStats::default();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let mm = &mms[rng.below(mms.len() as u64) as usize];
        // The application touches memory it mapped, or (1 in 256) a random address.
        let addr = if rng.below(256) != 0 {
            let g = rcu_read_lock();
            let t = mm.tree(&g);
            if t.entries.is_empty() {
                BASE
            } else {
                let e = t.entries[rng.below(t.entries.len() as u64) as usize];
                e.start + rng.below(e.end - e.start)
            }
        } else {
            BASE + rng.below(mm.npages() * PAGE)
        };
        handle_fault(mm, addr, cfg.mode, cfg.skip_mm_check, &mut st);
        n += 1;
        if n == 1024 {
            lock(&live.fault).add(&st);
            st = FaultStats::default();
            n = 0;
        }
    }
    st.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
    lock(&live.fault).add(&st);
}

fn mapper_thread(
    cfg: &Config,
    alloc: &VmaAlloc,
    mms: &[Arc<Mm>],
    idx: usize,
    stop: &AtomicBool,
    live: &Live,
) {
    let mut m = Mapper {
        alloc,
        rng: Rng::new(cfg.seed, idx as u64),
        target_vmas: cfg.vmas,
        st: MapStats::default(),
        last_freed: None,
    };
    let start = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if cfg.map_rate > 0 && done % 16 == 0 {
            // Pace to `map_rate` operations per second (a fixed mapping load in every mode).
            let due = Duration::from_secs_f64(done as f64 / cfg.map_rate as f64);
            let now = start.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        done += 1;
        // A random mm each time, so a freed VMA is often reallocated into another mm.
        let mm = &mms[m.rng.below(mms.len() as u64) as usize];
        let w = mm.mmap_write_lock();
        for _ in 0..=m.rng.below(2) {
            m.op(&w);
        }
        drop(w);
        m.st.ops += 1;
        if m.st.ops % 256 == 0 {
            lock(&live.map).add(&m.st);
            m.st = MapStats::default();
        }
    }
    lock(&live.map).add(&m.st);
}

/// Runs one mode: populate the mms, run fault and mapper threads for `cfg.seconds`, tear down,
/// wait for every deferred free and count leaked VMAs. `tick` is called about every 100 ms with
/// the elapsed time and the live counters (for a progress line).
pub(crate) fn run_mode(cfg: &Config, tick: &mut dyn FnMut(Duration, &Live)) -> ModeReport {
    assert!(cfg.threads >= 1 && cfg.mms >= 1 && cfg.vmas >= 1);
    // Return what the allocator keeps free (an earlier mode's arrays and callbacks) to the OS
    // first, so that this mode's peak starts from its own baseline, not from the heap an
    // earlier mode left behind.
    trim_heap();
    test_support::start_peak_rss();
    let alloc = VmaAlloc::new(cfg.mode);
    let npages = (cfg.vmas * PAGES_PER_VMA).max(8);
    let mms: Vec<Arc<Mm>> = (0..cfg.mms).map(|_| Arc::new(Mm::new(npages))).collect();

    // Populate every mm to its target.
    let mut setup = Mapper {
        alloc: &alloc,
        rng: Rng::new(cfg.seed, u64::MAX),
        target_vmas: cfg.vmas,
        st: MapStats::default(),
        last_freed: None,
    };
    for mm in &mms {
        let w = mm.mmap_write_lock();
        loop {
            let e = Mapper::entries(&w);
            let before = e.len();
            if before >= cfg.vmas {
                break;
            }
            setup.mmap(&w, e);
            if Mapper::entries(&w).len() == before {
                break; // address space full
            }
        }
    }

    let live = Live::default();
    let stop = AtomicBool::new(false);
    let mut peak_cache_bytes = cache_bytes(&alloc);
    let gp0 = rcu_kit::gp_stats();
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(cfg.seconds);
    let elapsed = std::thread::scope(|s| {
        for i in 0..cfg.threads {
            let (mms, stop, live) = (&mms, &stop, &live);
            std::thread::Builder::new()
                .name(format!("fault-{i}"))
                .spawn_scoped(s, move || fault_thread(cfg, mms, i, stop, live))
                .expect("spawn fault thread");
        }
        for i in 0..cfg.mappers {
            let (alloc, mms, stop, live) = (&alloc, &mms, &stop, &live);
            std::thread::Builder::new()
                .name(format!("mapper-{i}"))
                .spawn_scoped(s, move || mapper_thread(cfg, alloc, mms, i, stop, live))
                .expect("spawn mapper thread");
        }
        loop {
            let e = start.elapsed();
            if e >= deadline {
                break;
            }
            std::thread::sleep((deadline - e).min(Duration::from_millis(100)));
            peak_cache_bytes = peak_cache_bytes.max(cache_bytes(&alloc));
            tick(start.elapsed(), &live);
        }
        stop.store(true, Ordering::Relaxed);
        start.elapsed()
    });
    let gp1 = rcu_kit::gp_stats();
    let peak_cache_bytes = peak_cache_bytes.max(cache_bytes(&alloc));

    // Teardown: exit_mmap every mm, then wait for every deferred free.
    for mm in &mms {
        setup.exit_mmap(mm);
    }
    rcu_barrier();
    kvfree_rcu_barrier();
    rcu_barrier();
    let mut map = *lock(&live.map);
    map.add(&setup.st);
    let fault = *lock(&live.fault);
    let leaked_stats = alloc.cache.stats().active_objects as u64;
    let leaked_count = map.allocated.saturating_sub(map.freed);
    let peak_rss_bytes = test_support::peak_rss() as u64;
    drop(mms);
    let mut vmas_leaked = leaked_stats.max(leaked_count);
    match Arc::try_unwrap(alloc.cache) {
        Ok(cache) => {
            if let Err(e) = cache.destroy() {
                eprintln!("vma_reuse: {e}");
                vmas_leaked = vmas_leaked.max(1);
            }
        }
        Err(_) => {
            eprintln!("vma_reuse: the VMA cache is still referenced after the barriers");
            vmas_leaked = vmas_leaked.max(1);
        }
    }
    ModeReport {
        mode: cfg.mode,
        seconds: elapsed.as_secs_f64(),
        fault,
        map,
        call_rcu_calls: gp1.callbacks_queued - gp0.callbacks_queued,
        grace_periods: gp1.grace_periods - gp0.grace_periods,
        peak_rss_bytes,
        peak_cache_bytes,
        vmas_leaked,
    }
}

/// Gives the free memory of every allocator arena back to the OS (glibc's `malloc_trim`).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes of the VMA cache's slabs: on its lists, and waiting for a grace period before release.
fn cache_bytes(alloc: &VmaAlloc) -> u64 {
    let s = alloc.cache.stats();
    ((s.slabs + s.rcu_pending_slabs) * s.pages_per_slab * rcu_kit::slab_backend::PAGE_SIZE) as u64
}
