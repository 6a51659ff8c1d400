//! Figures that need a process of their own: peak RSS (`VmHWM` is a per-process high-water mark)
//! and kfree-batch configurations (`kfree_batch::configure` must run before the first use).
//!
//! The parent re-executes itself (`/proc/self/exe`, else `std::env::current_exe()`) with `RCU_KIT_COMPARE_CHILD=<figure>`; the
//! child runs that one figure, prints `RESULT v0 v1 ...` on stdout and exits. A child that fails,
//! hangs past [`CHILD_TIMEOUT`] or prints no result gives NaNs (shown as `n/a`), never a panic in
//! the parent.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable naming the figure a child process runs.
pub(crate) const CHILD_ENV: &str = "RCU_KIT_COMPARE_CHILD";
/// Objects retired by a memory child (set by the parent from `--quick`).
pub(crate) const OBJECTS_ENV: &str = "RCU_KIT_COMPARE_OBJECTS";
/// A child that has not exited after this long is killed and reported as missing.
const CHILD_TIMEOUT: Duration = Duration::from_secs(180);
/// The stalled reader leaves its critical section when the retire loop ends, or after this long,
/// whichever comes first (the same rule for every subject; only a retirer that waits for grace
/// periods, i.e. ours at its pending cap, ever reaches it).
pub(crate) const STALL_MAX: Duration = Duration::from_secs(4);

/// Metrics every memory child reports, in this order (NaN where a subject has no such figure).
pub(crate) mod m {
    /// Peak RSS growth during the figure (VmHWM at the end minus VmHWM at the start), MiB.
    pub(crate) const PEAK_RSS: usize = 0;
    /// Peak bytes waiting for a grace period, MiB (ours: `kfree_batch::stats()`, objects + block
    /// pages; crossbeam: the largest sampled retired-minus-dropped count × 32 B).
    pub(crate) const PEAK_PENDING: usize = 1;
    /// Grace periods the reclaimer waited for (kfree: its own count; call_rcu: the engine's).
    pub(crate) const GPS: usize = 2;
    /// Time from the last retire to the last free, ms (barrier, or pin+flush until all dropped).
    pub(crate) const DRAIN: usize = 3;
    /// Wall time of the retire loop, ms.
    pub(crate) const LOOP: usize = 4;
    /// `kfree_batch::stats().fallback_sync` delta (callers that waited for a grace period).
    pub(crate) const FALLBACK: usize = 5;
    /// At the checkpoint (1/10 of the objects retired, reader stalled): pending bytes beyond the
    /// objects' own heap chunks, per pending object (ours, from stats: the batcher's bookkeeping).
    pub(crate) const OVERHEAD: usize = 6;
    /// At the checkpoint: RSS growth per pending object, bytes (malloc chunk + reclaimer).
    pub(crate) const RSS_PER_OBJ: usize = 7;
    /// How long the stalled reader held its critical section, ms.
    pub(crate) const HELD: usize = 8;
    /// Number of metrics.
    pub(crate) const COUNT: usize = 9;
}

/// The figures of one memory child (NaN = not applicable).
pub(crate) struct Mem(pub(crate) [f64; m::COUNT]);

impl Mem {
    pub(crate) fn new() -> Mem {
        Mem([f64::NAN; m::COUNT])
    }

    pub(crate) fn set(&mut self, i: usize, v: f64) {
        self.0[i] = v;
    }
}

/// A 32-byte object whose drop is counted, so a reclaimer's backlog can be sampled.
#[allow(dead_code)]
pub(crate) struct Tracked(pub(crate) [u64; 4]);

/// Objects of [`Tracked`] dropped so far in this process.
pub(crate) static DROPPED: AtomicU64 = AtomicU64::new(0);

impl Drop for Tracked {
    fn drop(&mut self) {
        // Relaxed: a statistic, read by the retiring thread for sampling only.
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Number of objects a memory child retires (10M, or what the parent passed).
pub(crate) fn objects() -> u64 {
    std::env::var(OBJECTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// Peak resident set size of this process so far, bytes (`VmHWM`; see [`start_peak`]).
pub(crate) fn vm_hwm() -> f64 {
    test_support::peak_rss() as f64
}

/// Current resident set size, bytes.
pub(crate) fn vm_rss() -> f64 {
    test_support::rss() as f64
}

/// Starts a peak-RSS figure: the baseline to subtract from a later [`vm_hwm`]
/// (`test_support::start_peak_rss`, which says why it is not the `VmHWM` read now).
pub(crate) fn start_peak() -> f64 {
    test_support::start_peak_rss() as f64
}

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// A thread that enters a read-side critical section (`enter()` returns the guard) and holds it
/// until [`Stalled::release`] or [`STALL_MAX`], whichever comes first.
pub(crate) struct Stalled {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Duration>>,
}

impl Stalled {
    /// Starts the thread; returns once it holds its guard.
    pub(crate) fn start<G: 'static>(enter: fn() -> G) -> Stalled {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let g = enter();
            let t = Instant::now();
            let _ = tx.send(());
            // Relaxed: a stop flag; nothing is published through it.
            while !st.load(Ordering::Relaxed) && t.elapsed() < STALL_MAX {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(g);
            t.elapsed()
        });
        let _ = rx.recv();
        Stalled {
            stop,
            handle: Some(handle),
        }
    }

    /// Makes the reader leave its critical section; returns how long it held it, ms.
    pub(crate) fn release(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Prints the child's result line (parsed by [`run`]).
pub(crate) fn report(v: &[f64]) {
    let parts: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    println!("RESULT {}", parts.join(" "));
}

/// Runs figure `name` in a child process; returns its `metrics` values (NaN on any failure, with
/// a note on stderr).
pub(crate) fn run(name: &str, metrics: usize, objects: u64) -> Vec<f64> {
    let nan = vec![f64::NAN; metrics];
    // `/proc/self/exe` still names this very image when the file on disk was replaced (e.g. by a
    // `cargo build` while the comparison runs); `current_exe()` would then name a deleted path.
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe
    } else {
        match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("[compare] child {name}: cannot find own executable: {e}");
                return nan;
            }
        }
    };
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, name)
        .env(OBJECTS_ENV, objects.to_string());
    let out = match test_support::run_with_deadline(&mut cmd, CHILD_TIMEOUT) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("[compare] child {name}: spawn failed: {e}");
            return nan;
        }
    };
    let (status, stdout, stderr) = (out.status, out.stdout_text(), out.stderr_text());
    let parsed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            l.split_whitespace()
                .map(|x| x.parse::<f64>().unwrap_or(f64::NAN))
                .collect::<Vec<f64>>()
        });
    match (status, parsed) {
        (Some(s), Some(mut v)) if s.success() => {
            v.resize(metrics, f64::NAN);
            v
        }
        (s, _) => {
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            eprintln!(
                "[compare] child {name} gave no result ({}); last stderr lines: {:?}",
                s.map_or("timed out".to_owned(), |s| s.to_string()),
                tail
            );
            nan
        }
    }
}
