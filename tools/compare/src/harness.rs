//! Measurement plumbing of the `compare` binary: subjects sampled alternately in rounds, rows that
//! pair one of our figures with a baseline figure, targets, and the table / JSON output.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use test_support::ring::Ring;

/// Unit of a figure (what the numbers of a row mean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Nanoseconds per operation (lower is better).
    Ns,
    /// Microseconds per operation (lower is better).
    Us,
    /// Millions of operations per second (higher is better).
    Mps,
    /// A dimensionless ratio (e.g. grace periods per call).
    Ratio,
    /// Milliseconds (lower is better).
    Ms,
    /// Mebibytes (lower is better).
    MiB,
    /// Bytes (lower is better).
    Bytes,
    /// A plain count (e.g. grace periods used).
    Count,
    /// Operations per second (higher is better).
    PerSec,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Ns => " ns",
            Unit::Us => " µs",
            Unit::Mps => " M/s",
            Unit::Ratio => "",
            Unit::Ms => " ms",
            Unit::MiB => " MiB",
            Unit::Bytes => " B",
            Unit::Count => "",
            Unit::PerSec => " /s",
        }
    }

    fn json_name(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::Us => "us",
            Unit::Mps => "M/s",
            Unit::Ratio => "ratio",
            Unit::Ms => "ms",
            Unit::MiB => "MiB",
            Unit::Bytes => "B",
            Unit::Count => "count",
            Unit::PerSec => "1/s",
        }
    }
}

/// What a row must reach to count as met.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    /// Informational row.
    None,
    /// ours / baseline ≤ x.
    RatioLe(f64),
    /// ours / baseline ≥ x (rates).
    RatioGe(f64),
    /// ours ≤ x (in the row's unit).
    AbsLe(f64),
    /// ours < x (in the row's unit).
    AbsLt(f64),
    /// ours ≥ x (in the row's unit; rates).
    AbsGe(f64),
}

impl Target {
    fn describe(self, unit: Unit) -> String {
        match self {
            Target::None => "—".to_owned(),
            Target::RatioLe(x) => format!("ratio ≤ {}", trim(x)),
            Target::RatioGe(x) => format!("ratio ≥ {}", trim(x)),
            Target::AbsLe(x) => format!("ours ≤ {}{}", trim(x), unit.suffix()),
            Target::AbsLt(x) => format!("ours < {}{}", trim(x), unit.suffix()),
            Target::AbsGe(x) => format!("ours ≥ {}{}", trim(x), unit.suffix()),
        }
    }

    /// `None` for informational rows and for rows whose figure is missing (a failed or absent
    /// baseline, a child process that did not report).
    fn met(self, ours: f64, ratio: Option<f64>) -> Option<bool> {
        let ratio = ratio.filter(|r| r.is_finite());
        if !ours.is_finite() {
            return None;
        }
        match self {
            Target::None => None,
            Target::RatioLe(x) => ratio.map(|r| r <= x),
            Target::RatioGe(x) => ratio.map(|r| r >= x),
            Target::AbsLe(x) => Some(ours <= x),
            Target::AbsLt(x) => Some(ours < x),
            Target::AbsGe(x) => Some(ours >= x),
        }
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// Formats a value with about three significant digits.
pub(crate) fn fmt_val(v: f64, unit: Unit) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    let s = if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.3}")
    } else if a >= 0.001 {
        format!("{v:.4}")
    } else {
        format!("{v:.2e}")
    };
    format!("{s}{}", unit.suffix())
}

/// Index of a subject's metric: (subject, metric).
pub(crate) type MetricRef = (usize, usize);

type RunFn = Box<dyn FnMut() -> Vec<f64>>;

/// One thing that is measured: ours or a baseline. Each run returns one or more metrics.
pub(crate) struct Subject {
    name: String,
    run: RunFn,
    /// `samples[metric][round]`.
    samples: Vec<Vec<f64>>,
}

/// One line of the table.
pub(crate) struct Row {
    label: String,
    unit: Unit,
    ours: MetricRef,
    baseline: Option<MetricRef>,
    target: Target,
}

/// Subjects measured together (alternately) and the rows built from them.
pub(crate) struct Group {
    id: &'static str,
    subjects: Vec<Subject>,
    rows: Vec<Row>,
    max_rounds: usize,
}

impl Group {
    /// A group with a short id (matched by `--only`).
    pub(crate) fn new(id: &'static str) -> Self {
        Group {
            id,
            subjects: Vec::new(),
            rows: Vec::new(),
            max_rounds: usize::MAX,
        }
    }

    /// Caps the rounds of this group (for slow figures such as one child process per sample).
    pub(crate) fn max_rounds(&mut self, n: usize) {
        self.max_rounds = n.max(1);
    }

    /// Adds a subject returning several metrics per run.
    pub(crate) fn subject_n(
        &mut self,
        name: &str,
        run: impl FnMut() -> Vec<f64> + 'static,
    ) -> usize {
        self.subjects.push(Subject {
            name: name.to_owned(),
            run: Box::new(run),
            samples: Vec::new(),
        });
        self.subjects.len() - 1
    }

    /// Adds a subject returning one metric per run; returns its metric reference.
    pub(crate) fn subject(
        &mut self,
        name: &str,
        mut run: impl FnMut() -> f64 + 'static,
    ) -> MetricRef {
        (self.subject_n(name, move || vec![run()]), 0)
    }

    /// Adds a row comparing `ours` with `baseline` (if any).
    pub(crate) fn row(
        &mut self,
        label: &str,
        unit: Unit,
        ours: MetricRef,
        baseline: Option<MetricRef>,
        target: Target,
    ) {
        self.rows.push(Row {
            label: label.to_owned(),
            unit,
            ours,
            baseline,
            target,
        });
    }

    /// The group's id (`read1`, `sync0`, `call_rcu`, ...).
    pub(crate) fn id(&self) -> &'static str {
        self.id
    }

    /// Whether a figure label or subject name of this group contains `pat` (case-insensitive).
    pub(crate) fn mentions(&self, pat: &str) -> bool {
        let pat = pat.to_lowercase();
        self.rows
            .iter()
            .any(|r| r.label.to_lowercase().contains(&pat))
            || self
                .subjects
                .iter()
                .any(|s| s.name.to_lowercase().contains(&pat))
    }

    /// Runs `rounds` rounds; in each round every subject runs once. Even rounds go first to last,
    /// odd rounds last to first, so neither side always runs right after the other's warm caches
    /// or background work.
    pub(crate) fn run(&mut self, rounds: usize, progress: bool) {
        let rounds = rounds.min(self.max_rounds);
        for r in 0..rounds {
            let k = self.subjects.len();
            for j in 0..k {
                let i = if r % 2 == 0 { j } else { k - 1 - j };
                let s = &mut self.subjects[i];
                if progress {
                    eprint!(
                        "\r[compare] {} round {}/{}: {:<40}",
                        self.id,
                        r + 1,
                        rounds,
                        s.name
                    );
                }
                let v = (s.run)();
                if s.samples.len() < v.len() {
                    s.samples.resize(v.len(), Vec::new());
                }
                for (m, x) in v.into_iter().enumerate() {
                    s.samples[m].push(x);
                }
            }
        }
        if progress {
            eprint!("\r{:<80}\r", "");
        }
    }

    fn samples(&self, m: MetricRef) -> &[f64] {
        self.subjects[m.0]
            .samples
            .get(m.1)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The results of every row (after [`Group::run`]).
    pub(crate) fn results(&self) -> Vec<RowResult> {
        self.rows
            .iter()
            .map(|r| {
                let ours = median(self.samples(r.ours));
                let baseline = r
                    .baseline
                    .map(|a| (self.subjects[a.0].name.clone(), median(self.samples(a))));
                let ratio = baseline.as_ref().map(|(_, a)| ours / a);
                RowResult {
                    group: self.id,
                    label: r.label.clone(),
                    unit: r.unit,
                    ours,
                    ours_samples: self.samples(r.ours).to_vec(),
                    baseline_name: baseline.as_ref().map(|(n, _)| n.clone()),
                    baseline: baseline.as_ref().map(|(_, a)| *a),
                    baseline_samples: r
                        .baseline
                        .map(|a| self.samples(a).to_vec())
                        .unwrap_or_default(),
                    ratio,
                    target: r.target,
                    met: r.target.met(ours, ratio),
                }
            })
            .collect()
    }
}

/// Median of the finite samples (NaN if none: a figure that failed in some rounds is the median
/// of the rounds that worked).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One evaluated row.
pub(crate) struct RowResult {
    group: &'static str,
    label: String,
    unit: Unit,
    ours: f64,
    ours_samples: Vec<f64>,
    baseline_name: Option<String>,
    baseline: Option<f64>,
    baseline_samples: Vec<f64>,
    ratio: Option<f64>,
    target: Target,
    met: Option<bool>,
}

fn met_str(m: Option<bool>, target: Target) -> &'static str {
    match (m, target) {
        (None, Target::None) => "—",
        (None, _) => "n/a",
        (Some(true), _) => "yes",
        (Some(false), _) => "NO",
    }
}

/// Renders the rows as an aligned text table.
pub(crate) fn table(rows: &[RowResult]) -> String {
    let header = [
        "figure",
        "ours",
        "baseline",
        "ratio (ours/baseline)",
        "target",
        "met?",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.label.clone(),
                fmt_val(r.ours, r.unit),
                match (&r.baseline_name, r.baseline) {
                    (Some(n), Some(a)) => format!("{} ({n})", fmt_val(a, r.unit)),
                    _ => "—".to_owned(),
                },
                r.ratio
                    .map(|x| fmt_val(x, Unit::Ratio))
                    .unwrap_or_else(|| "—".to_owned()),
                r.target.describe(r.unit),
                met_str(r.met, r.target).to_owned(),
            ]
        })
        .collect();
    let mut w = header.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: &[String]| {
        out.push('|');
        for (i, s) in c.iter().enumerate() {
            // numbers right-aligned, text left-aligned
            if i == 1 || i == 3 {
                let _ = write!(out, " {s:>width$} |", width = w[i]);
            } else {
                let _ = write!(out, " {s:<width$} |", width = w[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &header.map(str::to_owned));
    out.push('|');
    for x in w {
        let _ = write!(out, "{}|", "-".repeat(x + 2));
    }
    out.push('\n');
    for c in &cells {
        line(&mut out, c);
    }
    out
}

/// One row in the JSON output (non-finite figures become `null`).
#[derive(Debug, serde::Serialize)]
pub(crate) struct JsonRow<'a> {
    group: &'static str,
    figure: &'a str,
    unit: &'static str,
    ours: f64,
    ours_samples: &'a [f64],
    baseline: Option<&'a str>,
    baseline_value: Option<f64>,
    baseline_samples: &'a [f64],
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

/// The rows as JSON values: `group`, `figure`, `unit`, `ours`, `ours_samples`, `baseline`,
/// `baseline_value`, `baseline_samples`, `ratio`, `target`, `met`.
pub(crate) fn json_rows(rows: &[RowResult]) -> Vec<JsonRow<'_>> {
    rows.iter()
        .map(|r| JsonRow {
            group: r.group,
            figure: &r.label,
            unit: r.unit.json_name(),
            ours: r.ours,
            ours_samples: &r.ours_samples,
            baseline: r.baseline_name.as_deref(),
            baseline_value: r.baseline,
            baseline_samples: &r.baseline_samples,
            ratio: r.ratio,
            target: r.target.describe(r.unit),
            met: r.met,
        })
        .collect()
}

/// Runs `f` and returns the elapsed nanoseconds divided by `n`.
pub(crate) fn ns_per(n: u64, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    black_box(t.elapsed().as_nanos() as f64 / n as f64)
}

/// Pins the calling thread to `cpu`; false if the kernel refuses (e.g. the CPU is not in the
/// process's allowed set).
pub(crate) fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: `cpu_set_t` is plain old data (a bit array), so all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`, which is a valid cpu_set_t; `cpu` is bounded by
    // the callers (< available_parallelism) and CPU_SET ignores out-of-range indices anyway.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = the calling thread; `set` is a valid cpu_set_t of the size passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// CPU time consumed by the calling thread, ns (NaN if the clock is unavailable).
fn thread_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// Iterations per timed chunk of [`pinned_scaling`].
const CHUNK: u64 = 20_000;

/// Chunks each thread of [`pinned_scaling`] has finished (one padded line per thread, written by
/// its owner only, once per chunk).
struct Beats([rcu_core::CachePadded<AtomicU64>; 2]);

/// Runs `body` in chunks of [`CHUNK`] until `n` iterations were counted or 3 s passed; counts a
/// chunk only if this thread ran it without being descheduled (wall time within 10% of thread CPU
/// time) and, when `other` is given, the other thread finished at least 2 chunks meanwhile (so it
/// ran on its core during the whole chunk). Returns thread-CPU ns per counted iteration (NaN if
/// none counted).
fn chunked(
    n: u64,
    body: fn(u64),
    beats: &Beats,
    me: usize,
    other: Option<usize>,
    done: &AtomicUsize,
) -> f64 {
    let (mut cpu, mut ops) = (0.0f64, 0u64);
    let start = Instant::now();
    let mut counted_enough = false;
    // Keep running (so the other thread keeps overlapping) until both threads counted enough.
    while done.load(Ordering::Relaxed) < 2 && start.elapsed().as_secs() < 3 {
        let o0 = other.map(|o| beats.0[o].load(Ordering::Relaxed));
        let w0 = Instant::now();
        let c0 = thread_cpu_ns();
        body(CHUNK);
        let c1 = thread_cpu_ns();
        let wall = w0.elapsed().as_nanos() as f64;
        let o1 = other.map(|o| beats.0[o].load(Ordering::Relaxed));
        // Relaxed: a progress counter only this thread writes; readers need no ordering.
        beats.0[me].store(beats.0[me].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let overlapped = match (o0, o1) {
            (Some(a), Some(b)) => b.wrapping_sub(a) >= 2,
            _ => true,
        };
        if overlapped && wall <= 1.1 * (c1 - c0) {
            cpu += c1 - c0;
            ops += CHUNK;
        }
        if !counted_enough && ops >= n {
            counted_enough = true;
            done.fetch_add(if other.is_some() { 1 } else { 2 }, Ordering::Relaxed);
        }
    }
    if ops == 0 {
        f64::NAN
    } else {
        black_box(cpu / ops as f64)
    }
}

/// Runs `body` first on one thread pinned to CPU 0, then on two threads pinned to CPUs 0 and 1
/// at once, and returns `[1-thread ns/iter, slower of the 2 threads' ns/iter, 2-thread /
/// 1-thread]` (NaNs with fewer than 2 CPUs or when pinning fails).
///
/// Time is each thread's CPU time over chunks it ran undisturbed while (in the 2-thread phase) the
/// other thread demonstrably ran too, so time-sharing with other processes on a loaded machine
/// neither inflates the figures nor hides contention. A loop that writes only thread-private cache
/// lines keeps its per-thread cost when the second core runs the same loop; one that writes a line
/// the other core also writes stalls on cache-line transfers instead.
pub(crate) fn pinned_scaling(n: u64, body: fn(u64)) -> Vec<f64> {
    let nan = vec![f64::NAN; 3];
    if std::thread::available_parallelism().map_or(1, |p| p.get()) < 2 {
        return nan;
    }
    let beats = std::sync::Arc::new(Beats([
        rcu_core::CachePadded::new(AtomicU64::new(0)),
        rcu_core::CachePadded::new(AtomicU64::new(0)),
    ]));
    let b = beats.clone();
    let one = std::thread::spawn(move || {
        if !pin_to_cpu(0) {
            return f64::NAN;
        }
        body(n / 10);
        chunked(n, body, &b, 0, None, &AtomicUsize::new(0))
    })
    .join()
    .unwrap_or(f64::NAN);
    let bar = std::sync::Arc::new(Barrier::new(2));
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..2)
        .map(|cpu| {
            let (bar, beats, done) = (bar.clone(), beats.clone(), done.clone());
            std::thread::spawn(move || {
                let pinned = pin_to_cpu(cpu);
                body(n / 10);
                bar.wait();
                let v = chunked(n, body, &beats, cpu, Some(1 - cpu), &done);
                if pinned {
                    v
                } else {
                    f64::NAN
                }
            })
        })
        .collect();
    let two = hs
        .into_iter()
        .map(|h| h.join().unwrap_or(f64::NAN))
        .fold(0.0, |a: f64, b| if b.is_nan() { b } else { a.max(b) });
    vec![one, two, two / one]
}

/// Producer/consumer free pattern: one thread calls `alloc` `n` times and passes each object
/// through a 256-slot SPSC ring to a second thread, which calls `free` on it. Returns wall ns per
/// object (both threads started together, clock stopped after the last free), or NaN if `alloc`
/// returned 0 (out of memory).
pub(crate) fn producer_consumer<A, F>(n: u64, alloc: A, free: F) -> f64
where
    A: Fn() -> usize + Sync,
    F: Fn(usize) + Sync,
{
    let ring = Ring::new();
    let bar = Barrier::new(2);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            bar.wait();
            for _ in 0..n {
                let p = alloc();
                if p == 0 {
                    failed.store(true, Ordering::Relaxed);
                }
                ring.push(p);
            }
        });
        let consumer = s.spawn(|| {
            bar.wait();
            let t = Instant::now();
            for _ in 0..n {
                let p = ring.pop();
                if p != 0 {
                    free(p);
                }
            }
            t.elapsed().as_nanos() as f64 / n as f64
        });
        let v = consumer.join().unwrap_or(f64::NAN);
        if failed.load(Ordering::Relaxed) {
            f64::NAN
        } else {
            v
        }
    })
}
