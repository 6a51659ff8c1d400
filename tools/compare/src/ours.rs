//! Our side of the comparison: loops over `rcu_core`, `kfree_batch` and `slab_backend`, written
//! like the baselines' loops.

use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};
use rcu_core::{call_rcu, rcu_barrier, rcu_read_lock, synchronize_rcu, RcuCell};
use slab_backend::{kfree, kmalloc, KmemCache};

use crate::child::{self, m, Mem, Stalled, Tracked, DROPPED};
use crate::harness::{ns_per, producer_consumer};

/// `n` read_lock+unlock pairs on the calling thread.
pub(crate) fn read_body(n: u64) {
    for _ in 0..n {
        let g = rcu_read_lock();
        black_box(&g);
        drop(g);
    }
}

/// `n` read_lock+unlock pairs on the calling thread; ns/pair.
pub(crate) fn read_loop(n: u64) -> f64 {
    ns_per(n, || read_body(n))
}

/// ns/pair after n/10 warm-up pairs.
pub(crate) fn read_pairs(n: u64) -> f64 {
    read_loop(n / 10);
    read_loop(n)
}

/// ns per inner pair while an outer guard is held.
pub(crate) fn read_pairs_nested(n: u64) -> f64 {
    let outer = rcu_read_lock();
    read_loop(n / 10);
    let v = read_loop(n);
    drop(outer);
    v
}

/// Runs `f(n)` on two threads started together (after `f(n / 10)` each as warm-up); returns the
/// slower thread's figure (the baselines' `two_threads`).
pub(crate) fn two_threads<F>(n: u64, f: F) -> f64
where
    F: Fn(u64) -> f64 + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let bar = Arc::new(Barrier::new(2));
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let f = f.clone();
            let bar = bar.clone();
            std::thread::spawn(move || {
                f(n / 10);
                bar.wait();
                f(n)
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().expect("bench thread panicked"))
        .fold(0.0, f64::max)
}

/// A thread looping `rcu_read_lock(); 16 compiler barriers; drop` (the baselines' busy reader) until
/// dropped. Starting it waits until the thread runs, then 20 ms as the baselines do.
pub(crate) struct BusyReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl BusyReader {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let (st, sd) = (stop.clone(), started.clone());
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            sd.store(true, Ordering::Release);
            while !st.load(Ordering::Relaxed) {
                let g = rcu_read_lock();
                for _ in 0..16 {
                    compiler_fence(Ordering::SeqCst);
                }
                drop(g);
                n += 1;
            }
            n
        });
        while !started.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        BusyReader {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for BusyReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// µs per `synchronize_rcu()`, mean of `calls` back-to-back calls after 20 warm-up calls.
pub(crate) fn sync_loop(calls: u64, expedited: bool) -> f64 {
    let f: fn() = if expedited {
        rcu_core::synchronize_rcu_expedited
    } else {
        synchronize_rcu
    };
    for _ in 0..20 {
        f();
    }
    let t = Instant::now();
    for _ in 0..calls {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / calls as f64
}

/// `sync_loop` with no other thread (20 ms settle like the baselines).
pub(crate) fn sync_idle(calls: u64, expedited: bool) -> f64 {
    std::thread::sleep(Duration::from_millis(20));
    sync_loop(calls, expedited)
}

/// `sync_loop` while a [`BusyReader`] runs.
pub(crate) fn sync_busy(calls: u64, expedited: bool) -> f64 {
    let _busy = BusyReader::start();
    sync_loop(calls, expedited)
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier(cmd, flags = 0, cpu_id = 0) takes only integer arguments and touches no
    // memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    }
}

/// µs per raw `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` syscall while a [`BusyReader`]
/// (our read side) loops on the other core; NaN if the kernel refuses the command.
pub(crate) fn raw_membarrier_busy(calls: u64) -> f64 {
    if membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0 {
        return f64::NAN;
    }
    let _busy = BusyReader::start();
    for _ in 0..20 {
        membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
    }
    let t = Instant::now();
    for _ in 0..calls {
        if membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
            return f64::NAN;
        }
    }
    t.elapsed().as_secs_f64() * 1e6 / calls as f64
}

fn enqueue_boxes(n: u64) {
    for i in 0..n {
        let b = black_box(Box::new([i as u8; 32]));
        call_rcu(move || drop(b));
    }
}

/// `Box::new([u8; 32])` + `call_rcu(move || drop(b))` × n, then `rcu_barrier()`: M callbacks/s end
/// to end (after 100 000 + `rcu_barrier()` warm-up, like the liburcu baseline). Also returns the
/// enqueue-phase rate.
pub(crate) fn call_rcu_end_to_end(n: u64) -> Vec<f64> {
    enqueue_boxes(100_000);
    rcu_barrier();
    let t0 = Instant::now();
    enqueue_boxes(n);
    let t1 = t0.elapsed().as_secs_f64();
    rcu_barrier();
    let t2 = t0.elapsed().as_secs_f64();
    vec![n as f64 / t2 / 1e6, n as f64 / t1 / 1e6]
}

/// µs per `rcu_barrier()` with nothing pending, after one `call_rcu` started the worker.
pub(crate) fn barrier_idle(calls: u64) -> f64 {
    call_rcu(|| {});
    rcu_barrier();
    let t = Instant::now();
    for _ in 0..calls {
        rcu_barrier();
    }
    t.elapsed().as_secs_f64() * 1e6 / calls as f64
}

/// 16 threads each call `synchronize_rcu()` `per_thread` times concurrently. Returns
/// [grace periods / calls, heavy barriers / grace period, wall µs / (calls per thread)].
pub(crate) fn sync_16_threads(per_thread: u64) -> Vec<f64> {
    const THREADS: usize = 16;
    let bar = Arc::new(Barrier::new(THREADS + 1));
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            let bar = bar.clone();
            std::thread::spawn(move || {
                bar.wait();
                for _ in 0..per_thread {
                    synchronize_rcu();
                }
            })
        })
        .collect();
    let before = rcu_core::stats();
    let t = Instant::now();
    bar.wait();
    for h in hs {
        h.join().expect("sync thread panicked");
    }
    let wall = t.elapsed().as_secs_f64();
    let after = rcu_core::stats();
    let gps = after.grace_periods.wrapping_sub(before.grace_periods) as f64;
    let heavy = after.heavy_barriers.wrapping_sub(before.heavy_barriers) as f64;
    let calls = (THREADS as u64 * per_thread) as f64;
    vec![gps / calls, heavy / gps, wall * 1e6 / per_thread as f64]
}

/// Heavy barriers per grace period over `calls` `synchronize_rcu()` with a busy reader running.
pub(crate) fn heavy_per_gp_busy(calls: u64) -> f64 {
    let _busy = BusyReader::start();
    let before = rcu_core::stats();
    for _ in 0..calls {
        synchronize_rcu();
    }
    let after = rcu_core::stats();
    let gps = after.grace_periods.wrapping_sub(before.grace_periods) as f64;
    after.heavy_barriers.wrapping_sub(before.heavy_barriers) as f64 / gps
}

/// ns per `rcu_read_lock()` + `RcuCell::read` + deref + drop guard.
pub(crate) fn rcucell_read(cell: &RcuCell<u64>, n: u64) -> f64 {
    let one = |k: u64| {
        ns_per(k, || {
            for _ in 0..k {
                let g = rcu_read_lock();
                black_box(cell.read(&g).copied());
                drop(g);
            }
        })
    };
    one(n / 10);
    one(n)
}

/// ns per `RcuCell::replace(Some(Box::new(i)))` (old value retired through call_rcu), including a
/// final `rcu_barrier()` so every retired value is freed within the timed span.
pub(crate) fn rcucell_replace(cell: &RcuCell<u64>, n: u64) -> f64 {
    ns_per(n, || {
        for i in 0..n {
            cell.replace(Some(Box::new(i)));
        }
        rcu_barrier();
    })
}

// --- kfree_rcu ----------------------------------------------------------------------------------

fn kfree_boxes(n: u64) {
    for i in 0..n {
        kfree_rcu(black_box(Box::new([i as u8; 32])));
    }
}

/// Three types of different sizes in turn: three free functions, so three block channels.
fn kfree_mixed_boxes(n: u64) {
    for i in 0..n {
        match i % 3 {
            0 => kfree_rcu(black_box(Box::new([i as u8; 16]))),
            1 => kfree_rcu(black_box(Box::new([i as u8; 32]))),
            _ => kfree_rcu(black_box(Box::new([i as u8; 64]))),
        }
    }
}

fn kfree_timed(n: u64, f: fn(u64)) -> Vec<f64> {
    f(100_000);
    kvfree_rcu_barrier();
    let t0 = Instant::now();
    f(n);
    let t1 = t0.elapsed().as_secs_f64();
    kvfree_rcu_barrier();
    let t2 = t0.elapsed().as_secs_f64();
    vec![n as f64 / t2 / 1e6, n as f64 / t1 / 1e6]
}

/// `kfree_rcu(Box::new([u8; 32]))` × n, then `kvfree_rcu_barrier()`: [M objects/s end to end
/// (every object freed), M/s of the retire loop alone]. Warmed like the call_rcu figure.
pub(crate) fn kfree_end_to_end(n: u64) -> Vec<f64> {
    kfree_timed(n, kfree_boxes)
}

/// The control for the kfree rows: `drop(Box::new([u8; 32]))` × n, the allocator's malloc+free
/// pair through its thread cache, in this (multi-threaded) process: M pairs/s. No reclamation
/// scheme that allocates and frees each object can beat it.
pub(crate) fn box_pair_rate(n: u64) -> f64 {
    for i in 0..100_000u64 {
        drop(black_box(Box::new([i as u8; 32])));
    }
    let t = Instant::now();
    for i in 0..n {
        drop(black_box(Box::new([i as u8; 32])));
    }
    n as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// As [`kfree_end_to_end`] with `Box<[u8; 16]>`, `Box<[u8; 32]>`, `Box<[u8; 64]>` in turn.
pub(crate) fn kfree_mixed_end_to_end(n: u64) -> Vec<f64> {
    kfree_timed(n, kfree_mixed_boxes)
}

/// Memory child: retires `child::objects()` 32-byte [`Tracked`] boxes through `kfree_rcu` on this
/// thread, optionally while another thread holds `rcu_read_lock()` (see [`Stalled`]), optionally
/// under a pending cap other than the default; then `kvfree_rcu_barrier()`.
pub(crate) fn kfree_mem(stall: bool, cap: Option<usize>) -> Result<Mem, String> {
    if let Some(cap) = cap {
        kfree_batch::configure(kfree_batch::Config {
            pending_cap: cap,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    }
    let n = child::objects();
    let checkpoint = n / 10;
    let mut out = Mem::new();
    // Warm-up outside the figure (every child does the same): the batcher's one-time set-up
    // (worker thread, per-CPU slots, emergency page caches, the thread's front and park slots)
    // is not memory waiting for a grace period.
    for i in 0..1024u64 {
        kfree_rcu(Box::new([i; 4]));
    }
    kvfree_rcu_barrier();
    let reader = stall.then(|| Stalled::start(rcu_read_lock));
    let s0 = kfree_batch::stats();
    let hwm0 = child::start_peak();
    let rss0 = child::vm_rss();
    let t = Instant::now();
    for i in 0..n {
        kfree_rcu(Box::new(Tracked([i; 4])));
        if stall && i + 1 == checkpoint {
            let s = kfree_batch::stats();
            // Only meaningful while nothing has been freed or fallen back: then every retired
            // object is pending, and pending bytes = objects + pages + unspent reservations.
            if s.fallback_sync == s0.fallback_sync && DROPPED.load(Ordering::Relaxed) == 0 {
                // kfree-batch charges each object's heap chunk (glibc: 48 B for a 32-byte
                // request); what is left is the batcher's own bookkeeping per object.
                const CHUNK: usize = (32 + 8 + 15) & !15; // glibc: round_up(32 + 8, 16) = 48
                let chunk = CHUNK as f64;
                let extra =
                    s.pending_bytes as f64 - s0.pending_bytes as f64 - chunk * checkpoint as f64;
                out.set(m::OVERHEAD, extra / checkpoint as f64);
                out.set(m::RSS_PER_OBJ, (child::vm_rss() - rss0) / checkpoint as f64);
            }
        }
    }
    let loop_end = Instant::now();
    out.set(m::LOOP, t.elapsed().as_secs_f64() * 1e3);
    if let Some(r) = reader {
        out.set(m::HELD, r.release());
    }
    kvfree_rcu_barrier();
    out.set(m::DRAIN, loop_end.elapsed().as_secs_f64() * 1e3);
    let s1 = kfree_batch::stats();
    out.set(m::PEAK_RSS, (child::vm_hwm() - hwm0) / child::MIB);
    out.set(m::PEAK_PENDING, s1.peak_pending_bytes as f64 / child::MIB);
    out.set(
        m::GPS,
        s1.grace_periods.wrapping_sub(s0.grace_periods) as f64,
    );
    out.set(
        m::FALLBACK,
        s1.fallback_sync.wrapping_sub(s0.fallback_sync) as f64,
    );
    if DROPPED.load(Ordering::Relaxed) != n {
        return Err(format!(
            "only {} of {n} objects freed after kvfree_rcu_barrier",
            DROPPED.load(Ordering::Relaxed)
        ));
    }
    Ok(out)
}

/// Metrics of the `kfree_zero` child, in this order.
pub(crate) mod z {
    /// Objects retired per second (wall time of the retire loop).
    pub(crate) const RATE: usize = 0;
    /// Grace periods the retiring thread waited for (park-array drains + `fallback_sync`).
    pub(crate) const WAITS: usize = 1;
    /// Reader sections held meanwhile.
    pub(crate) const SECTIONS: usize = 2;
    /// Number of metrics.
    pub(crate) const COUNT: usize = 3;
}

/// Child figure `kfree_zero`: `kfree_rcu` under a zero page budget (`set_memory_limit(Some(0))`
/// after a warm-up, caches shrunk) while another thread holds 50 ms read-side critical sections
/// back to back: `child::objects()` 32-byte [`Tracked`] boxes retired outside any reader, then
/// `kvfree_rcu_barrier()`. The loop also stops after 120 s (the figure is then the rate so far).
pub(crate) fn kfree_zero() -> Result<Vec<f64>, String> {
    let n = child::objects();
    for i in 0..1024u64 {
        kfree_rcu(Box::new([i; 4]));
    }
    kvfree_rcu_barrier();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all();
    kvfree_rcu_barrier();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sections = 0u64;
            let mut first = Some(tx);
            // Relaxed: a stop flag; nothing is published through it.
            while !stop.load(Ordering::Relaxed) {
                let g = rcu_read_lock();
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                std::thread::sleep(Duration::from_millis(50));
                drop(g);
                sections += 1;
            }
            sections
        })
    };
    let _ = rx.recv();
    let s0 = kfree_batch::stats();
    let base = DROPPED.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut done = 0u64;
    for i in 0..n {
        if i % 1024 == 0 && t.elapsed() > Duration::from_secs(120) {
            break;
        }
        kfree_rcu(Box::new(Tracked([i; 4])));
        done += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sections = reader.join().map_err(|_| "reader panicked".to_owned())?;
    kvfree_rcu_barrier();
    let s1 = kfree_batch::stats();
    slab_backend::set_memory_limit(None);
    let freed = DROPPED.load(Ordering::Relaxed) - base;
    if freed != done {
        return Err(format!(
            "only {freed} of {done} objects freed after kvfree_rcu_barrier"
        ));
    }
    let mut out = vec![f64::NAN; z::COUNT];
    out[z::RATE] = done as f64 / secs;
    out[z::WAITS] =
        ((s1.park_waits - s0.park_waits) + (s1.fallback_sync - s0.fallback_sync)) as f64;
    out[z::SECTIONS] = sections as f64;
    Ok(out)
}

/// Memory child: the same 32-byte [`Tracked`] boxes through `call_rcu(move || drop(b))`, no
/// reader, then `rcu_barrier()`. Grace periods are the engine's count.
pub(crate) fn call_rcu_mem() -> Mem {
    let n = child::objects();
    let mut out = Mem::new();
    let g0 = rcu_core::stats().grace_periods;
    let hwm0 = child::start_peak();
    let t = Instant::now();
    for i in 0..n {
        let b = Box::new(Tracked([i; 4]));
        call_rcu(move || drop(b));
    }
    let loop_end = Instant::now();
    out.set(m::LOOP, t.elapsed().as_secs_f64() * 1e3);
    rcu_barrier();
    out.set(m::DRAIN, loop_end.elapsed().as_secs_f64() * 1e3);
    out.set(m::PEAK_RSS, (child::vm_hwm() - hwm0) / child::MIB);
    out.set(
        m::GPS,
        rcu_core::stats().grace_periods.wrapping_sub(g0) as f64,
    );
    out
}

// --- slab ---------------------------------------------------------------------------------------

/// The 64-byte object of the slab figures.
pub(crate) type Obj64 = [u8; 64];

/// A plain (`typesafe == false`) or typesafe (with a zeroing ctor) cache of [`Obj64`].
pub(crate) fn cache64(name: &str, typesafe: bool) -> Option<Arc<KmemCache<Obj64>>> {
    let b = KmemCache::<Obj64>::builder(name);
    let b = if typesafe {
        b.typesafe_by_rcu(true).ctor(|| [0u8; 64])
    } else {
        b
    };
    match b.build() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            eprintln!("[compare] KmemCache {name}: {e}");
            None
        }
    }
}

fn kmem_loop(c: &KmemCache<Obj64>, n: u64) -> f64 {
    let mut ok = true;
    let v = ns_per(n, || {
        for _ in 0..n {
            let Some(p) = c.alloc() else {
                ok = false;
                break;
            };
            // SAFETY: `p` was just allocated from `c` and is not used afterwards.
            unsafe { c.free(black_box(p)) };
        }
    });
    if ok {
        v
    } else {
        f64::NAN
    }
}

/// ns per `cache.alloc()` + `cache.free()` on one thread, after n/10 warm-up pairs.
pub(crate) fn kmem_pairs(c: Option<&Arc<KmemCache<Obj64>>>, n: u64) -> f64 {
    let Some(c) = c else { return f64::NAN };
    kmem_loop(c, n / 10);
    kmem_loop(c, n)
}

fn kmalloc_loop(n: u64) -> f64 {
    let mut ok = true;
    let v = ns_per(n, || {
        for _ in 0..n {
            let Some(p) = kmalloc(64) else {
                ok = false;
                break;
            };
            // SAFETY: `p` was just returned by kmalloc and is not used afterwards.
            unsafe { kfree(black_box(p)) };
        }
    });
    if ok {
        v
    } else {
        f64::NAN
    }
}

/// ns per `kmalloc(64)` + `kfree()` on one thread, after n/10 warm-up pairs.
pub(crate) fn kmalloc_pairs(n: u64) -> f64 {
    kmalloc_loop(n / 10);
    kmalloc_loop(n)
}

/// Producer/consumer: `cache.alloc()` on one thread, `cache.free()` on the other; ns/object.
pub(crate) fn kmem_producer_consumer(c: Option<&Arc<KmemCache<Obj64>>>, n: u64) -> f64 {
    let Some(c) = c else { return f64::NAN };
    producer_consumer(
        n,
        || c.alloc().map_or(0, |p| p.as_ptr() as usize),
        |p| {
            // SAFETY: `p` is a non-zero address the producer got from `c.alloc()` and passed
            // through the ring exactly once; nobody else uses it.
            unsafe { c.free(NonNull::new_unchecked(p as *mut Obj64)) }
        },
    )
}

/// Producer/consumer: `kmalloc(64)` on one thread, `kfree()` on the other; ns/object.
pub(crate) fn kmalloc_producer_consumer(n: u64) -> f64 {
    producer_consumer(
        n,
        || kmalloc(64).map_or(0, |p| p.as_ptr() as usize),
        |p| {
            // SAFETY: `p` is a non-zero address from `kmalloc(64)`, passed through the ring
            // exactly once; nobody else uses it.
            unsafe { kfree(NonNull::new_unchecked(p as *mut u8)) }
        },
    )
}
