//! Our side of the comparison: loops over `rcu_core`, written like the anchors' loops.

use std::hint::black_box;
use std::sync::atomic::{compiler_fence, AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcu_core::{call_rcu, rcu_barrier, rcu_read_lock, synchronize_rcu, RcuCell};

use crate::harness::ns_per;

/// `n` read_lock+unlock pairs on the calling thread; ns/pair.
pub(crate) fn read_loop(n: u64) -> f64 {
    ns_per(n, || {
        for _ in 0..n {
            let g = rcu_read_lock();
            black_box(&g);
            drop(g);
        }
    })
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
/// slower thread's figure (the anchors' `two_threads`).
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

/// A thread looping `rcu_read_lock(); 16 compiler barriers; drop` (the anchors' busy reader) until
/// dropped. Starting it waits until the thread runs, then 20 ms as the anchors do.
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

/// `sync_loop` with no other thread (20 ms settle like the anchors).
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
/// to end (after 100 000 + `rcu_barrier()` warm-up, like the liburcu anchor). Also returns the
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
