//! Command line, progress line, table, row legend and JSON of the VMA-reuse example.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;

use crate::model::{Live, Mode, ModeReport};

/// Seconds per mode when `--seconds` is not given (three modes: about 10 s in all).
pub(crate) const DEFAULT_SECONDS: f64 = 3.0;
/// Mapper operations per second per mapper when `--map-rate` is not given.
pub(crate) const DEFAULT_MAP_RATE: u64 = 20_000;

/// Parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Options {
    /// Modes to run, in order.
    pub(crate) modes: Vec<Mode>,
    /// Fault threads.
    pub(crate) threads: usize,
    /// Mapper threads.
    pub(crate) mappers: usize,
    /// Address spaces.
    pub(crate) mms: usize,
    /// Target VMAs per address space.
    pub(crate) vmas: usize,
    /// Seconds per mode.
    pub(crate) seconds: f64,
    /// Times to run the sequence of modes (alternating), summed per mode.
    pub(crate) rounds: u64,
    /// Mapper operations per second per mapper (0 = unlimited).
    pub(crate) map_rate: u64,
    /// PRNG seed.
    pub(crate) seed: u64,
    /// Print JSON instead of the table.
    pub(crate) json: bool,
    /// Print what each row of the table means, and run nothing.
    pub(crate) explain: bool,
    /// TEST ONLY: skip the `vm_mm` revalidation.
    pub(crate) broken_skip_mm_check: bool,
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 64)
}

impl Default for Options {
    fn default() -> Options {
        Options {
            modes: Mode::ALL.to_vec(),
            threads: default_threads(),
            mappers: 2,
            mms: 4,
            vmas: 64,
            seconds: DEFAULT_SECONDS,
            map_rate: DEFAULT_MAP_RATE,
            rounds: 1,
            seed: 1,
            json: false,
            explain: false,
            broken_skip_mm_check: false,
        }
    }
}

/// `--mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Free VMAs straight back to a SLAB_TYPESAFE_BY_RCU cache (no call_rcu per VMA).
    Typesafe,
    /// A call_rcu per freed VMA (the kernel before the typesafe VMA cache).
    CallRcu,
    /// Each freed VMA batched through kfree_rcu_cache.
    KfreeRcu,
    /// All three, one after another.
    All,
}

/// The command line as clap sees it; [`Options`] is what the program uses.
#[derive(Debug, clap::Parser)]
#[command(
    name = "vma_reuse",
    about = "Per-VMA locks over a SLAB_TYPESAFE_BY_RCU VMA cache: typesafe reuse against per-VMA \
             call_rcu and kfree_rcu freeing",
    long_about = "A model address space with per-VMA locks over a SLAB_TYPESAFE_BY_RCU VMA cache:\n\
                  fault threads run lock_vma_under_rcu() while mapper threads\n\
                  mmap/munmap/split/merge/mprotect, so VMA objects are freed and reused (possibly\n\
                  in another mm) under the readers' feet. Compares freeing VMAs into a typesafe\n\
                  cache at once with freeing each through call_rcu or kfree_rcu. Prints a table\n\
                  (--explain describes its rows) or JSON, then a PASS or FAIL line.",
    after_help = "Exit status: 0 on success, 1 if any wrong-VMA result, leaked VMA or RCU error\n\
                  was seen, 2 on a usage error."
)]
struct Cli {
    /// Mode to run
    #[arg(long, value_name = "MODE", value_enum, default_value = "all")]
    mode: ModeArg,
    /// Fault threads, 1..=256 [default: CPUs, at least 2]
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=256))]
    threads: Option<usize>,
    /// Mapper threads, 0..=64
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=64))]
    mappers: usize,
    /// Address spaces, 1..=64
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
    mms: usize,
    /// Target VMAs per address space, 1..=100000
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    vmas: usize,
    /// Seconds per mode, 0 < S <= 3600
    #[arg(long, value_name = "S", default_value_t = DEFAULT_SECONDS, value_parser = parse_seconds)]
    seconds: f64,
    /// mmap write-lock sections per second per mapper, 0 = flat out
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAP_RATE,
          value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    map_rate: u64,
    /// Repeat the modes N times, alternating; the rounds are summed per mode
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// PRNG seed (decimal or 0x hex)
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_seed)]
    seed: u64,
    /// Print {"modes": [...]} instead of the table (the PASS/FAIL line goes to stderr)
    #[arg(long)]
    json: bool,
    /// Print what each row of the table means, and run nothing
    #[arg(long)]
    explain: bool,
    /// TEST ONLY: skip the vm_mm revalidation; must produce wrong-VMA results
    #[arg(long)]
    broken_skip_mm_check: bool,
}

fn parse_seconds(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 3600.0 => Ok(s),
        _ => Err("expected a number in (0, 3600]".to_owned()),
    }
}

fn parse_seed(v: &str) -> Result<u64, String> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse::<u64>().ok(),
    };
    parsed.ok_or_else(|| "expected an unsigned integer (decimal or 0x hex)".to_owned())
}

/// Parses the arguments after the program name. `--help` and usage errors come back as a
/// [`clap::Error`]: `print()` it and exit with its `exit_code()` (0 for help, 2 for errors).
pub(crate) fn parse_args<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser as _;
    let argv = std::iter::once(std::ffi::OsString::from("vma_reuse"))
        .chain(args.into_iter().map(Into::into));
    let c = Cli::try_parse_from(argv)?;
    Ok(Options {
        modes: match c.mode {
            ModeArg::Typesafe => vec![Mode::Typesafe],
            ModeArg::CallRcu => vec![Mode::CallRcu],
            ModeArg::KfreeRcu => vec![Mode::KfreeRcu],
            ModeArg::All => Mode::ALL.to_vec(),
        },
        threads: c.threads.unwrap_or_else(default_threads),
        mappers: c.mappers,
        mms: c.mms,
        vmas: c.vmas,
        seconds: c.seconds,
        rounds: c.rounds,
        map_rate: c.map_rate,
        seed: c.seed,
        json: c.json,
        explain: c.explain,
        broken_skip_mm_check: c.broken_skip_mm_check,
    })
}

/// The progress line on stderr: rewritten in place on a terminal, a plain line per second
/// otherwise.
#[derive(Debug)]
pub(crate) struct Progress {
    tty: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    /// A progress line for stderr.
    pub(crate) fn new() -> Progress {
        use std::io::IsTerminal as _;
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// Shows the state of `mode` after `elapsed` of `total`.
    pub(crate) fn tick(&mut self, mode: Mode, elapsed: Duration, total: Duration, live: &Live) {
        let plain_due = self.last.elapsed() >= Duration::from_secs(1);
        if !self.tty && !plain_due {
            return;
        }
        self.last = Instant::now();
        let f = *live.fault.lock().unwrap_or_else(|e| e.into_inner());
        let secs = elapsed.as_secs_f64().max(1e-9);
        let line = format!(
            "{:<9} {:>4.1}/{:.1}s  faults {:>8} ({:>8}/s)  fallbacks {}  reuse caught {}  wrong VMA {}",
            mode.name(),
            elapsed.as_secs_f64(),
            total.as_secs_f64(),
            human_count(f.faults as f64),
            human_count(f.faults as f64 / secs),
            f.fallbacks.total(),
            f.reuse_caught,
            f.wrong_vma,
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.shown = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Clears the in-place line (terminal only).
    pub(crate) fn finish(&mut self) {
        if self.tty && self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", b >> 10)
    }
}

fn human_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// One row of the table: its label, what it means, and its value for a mode.
type Row = (&'static str, &'static str, fn(&ModeReport) -> String);

/// The rows of the table, in order.
fn rows() -> [Row; 22] {
    [
        ("faults", "page faults handled (each looked up and checked)", |r| {
            r.fault.faults.to_string()
        }),
        ("faults/s", "faults per second of wall-clock time", |r| {
            human_count(r.faults_per_sec())
        }),
        (
            "faults per fault-thread CPU s",
            "faults per second of CPU time of the fault threads (not hurt by preemption)",
            |r| human_count(r.faults_per_cpu_sec()),
        ),
        (
            "  under the per-VMA lock",
            "share of faults served under the VMA's own lock, without the mm-wide lock",
            |r| {
                format!(
                    "{:.1}%",
                    100.0 * r.fault.vma_locked as f64 / r.fault.faults.max(1) as f64
                )
            },
        ),
        (
            "lock fallbacks",
            "faults that gave up the per-VMA lock and took the mm-wide lock; by reason:",
            |r| r.fault.fallbacks.total().to_string(),
        ),
        ("  seq (write-locked)", "the VMA was write-locked by a mapper", |r| {
            r.fault.fallbacks.seq.to_string()
        }),
        ("  detached", "the VMA was detached (unmapped, or freed and not yet reused)", |r| {
            r.fault.fallbacks.detached.to_string()
        }),
        (
            "  wrong mm",
            "the object had been reused for a VMA of another address space",
            |r| r.fault.fallbacks.wrong_mm.to_string(),
        ),
        (
            "  range",
            "the object had been reused for a VMA that does not cover the address",
            |r| r.fault.fallbacks.range.to_string(),
        ),
        ("  unmapped", "no VMA covered the address in the RCU walk", |r| {
            r.fault.fallbacks.unmapped.to_string()
        }),
        (
            "detached walk retries",
            "RCU walks retried after finding a detached VMA",
            |r| r.fault.detached_retries.to_string(),
        ),
        (
            "reuse races caught",
            "faults whose VMA object was freed and reused under them, caught by revalidation",
            |r| r.fault.reuse_caught.to_string(),
        ),
        (
            "reused, still valid",
            "faults whose VMA object was reused but still maps the address in the same mm",
            |r| r.fault.reuse_accepted.to_string(),
        ),
        (
            "wrong-VMA results",
            "faults that ended with a VMA not mapping the address: must be 0",
            |r| r.fault.wrong_vma.to_string(),
        ),
        ("VMAs freed (munmap/merge)", "VMA objects freed by the mappers", |r| {
            r.map.freed.to_string()
        }),
        ("call_rcu calls", "call_rcu callbacks queued in the mode (all of the kit)", |r| {
            r.call_rcu_calls.to_string()
        }),
        ("  per VMA freed", "call_rcu calls divided by VMAs freed", |r| {
            format!("{:.4}", r.call_rcu_calls as f64 / r.map.freed.max(1) as f64)
        }),
        (
            "kfree_rcu calls (+arrays)",
            "kfree_rcu calls: freed VMAs (kfree-rcu mode) plus retired VMA arrays",
            |r| r.map.kfree_rcu.to_string(),
        ),
        ("grace periods", "grace periods completed during the mode", |r| {
            r.grace_periods.to_string()
        }),
        (
            "peak RSS (process)",
            "the whole process's peak resident memory during the mode",
            |r| human_bytes(r.peak_rss_bytes),
        ),
        (
            "  VMA cache slabs (peak)",
            "peak memory of the VMA cache's slabs, those waiting for a grace period included",
            |r| human_bytes(r.peak_cache_bytes),
        ),
        (
            "leaked VMAs / RCU errors",
            "VMAs left in the cache after teardown / VMAs reused before a grace period: must be 0 / 0",
            |r| format!("{} / {}", r.vmas_leaked, r.fault.rcu_errors),
        ),
    ]
}

/// What each row of the table means (`--explain`).
pub(crate) fn legend() -> String {
    let mut s = String::from("vma_reuse: the rows of the table (one column per mode)\n");
    for (name, what, _) in rows() {
        let _ = writeln!(s, "{name:<31}{what}");
    }
    s.push_str(
        "typesafe vs call-rcu (last line) typesafe mode's rates divided by call-rcu mode's\n",
    );
    s
}

/// The last line of the output: PASS, or FAIL with what failed in which mode.
pub(crate) fn verdict(reports: &[ModeReport]) -> String {
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.failed())
        .map(|r| {
            format!(
                "{} mode: {} wrong-VMA results, {} leaked VMAs, {} RCU errors",
                r.mode.name(),
                r.fault.wrong_vma,
                r.vmas_leaked,
                r.fault.rcu_errors
            )
        })
        .collect();
    if failed.is_empty() {
        let names: Vec<&str> = reports.iter().map(|r| r.mode.name()).collect();
        format!(
            "PASS: no wrong-VMA result, leaked VMA or RCU error ({})",
            names.join(", ")
        )
    } else {
        format!("FAIL: {}", failed.join("; "))
    }
}

/// The comparison table, one column per mode.
pub(crate) fn render_table(o: &Options, reports: &[ModeReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vma_reuse: {} fault threads, {} mappers ({}), {} mms x {} VMAs, {:.1} s per mode{}, seed {}{}",
        o.threads,
        o.mappers,
        if o.map_rate == 0 {
            "flat out".to_owned()
        } else {
            format!("{} ops/s each", o.map_rate)
        },
        o.mms,
        o.vmas,
        o.seconds,
        if o.rounds > 1 {
            format!(" x {} rounds", o.rounds)
        } else {
            String::new()
        },
        o.seed,
        if o.broken_skip_mm_check {
            "  [TEST ONLY: vm_mm check skipped]"
        } else {
            ""
        }
    );
    let rows = rows();
    let _ = write!(s, "{:<28}", "");
    for r in reports {
        let _ = write!(s, "{:>14}", r.mode.name());
    }
    s.push('\n');
    for (name, _, f) in rows {
        let _ = write!(s, "{name:<28}");
        for r in reports {
            let _ = write!(s, "{:>14}", f(r));
        }
        s.push('\n');
    }
    let find = |m: Mode| reports.iter().find(|r| r.mode == m);
    if let (Some(t), Some(c)) = (find(Mode::Typesafe), find(Mode::CallRcu)) {
        let _ = writeln!(
            s,
            "typesafe vs call-rcu: faults/s x{:.3}, per fault-thread CPU s x{:.3}, call_rcu calls {} vs {} ({})",
            t.faults_per_sec() / c.faults_per_sec().max(1e-9),
            t.faults_per_cpu_sec() / c.faults_per_cpu_sec().max(1e-9),
            t.call_rcu_calls,
            c.call_rcu_calls,
            if t.call_rcu_calls == 0 {
                "none in typesafe mode".to_owned()
            } else {
                format!(
                    "{:.0}x fewer",
                    c.call_rcu_calls as f64 / t.call_rcu_calls as f64
                )
            }
        );
    }
    s.push_str("(--explain describes each row)\n");
    s
}

/// One mode in the JSON output.
#[derive(Debug, serde::Serialize)]
struct JsonMode {
    mode: &'static str,
    faults: u64,
    faults_per_sec: f64,
    lock_fallbacks: u64,
    reuse_caught: u64,
    wrong_vma: u64,
    call_rcu_calls: u64,
    kfree_rcu_calls: u64,
    grace_periods: u64,
    peak_rss_bytes: u64,
    peak_cache_bytes: u64,
    fallback_reasons: JsonFallbacks,
    vmas_freed: u64,
    vmas_leaked: u64,
    rcu_errors: u64,
    seconds: f64,
    fault_cpu_seconds: f64,
}

/// Why faults fell back to the mm-wide lock.
#[derive(Debug, serde::Serialize)]
struct JsonFallbacks {
    seq: u64,
    detached: u64,
    wrong_mm: u64,
    range: u64,
    unmapped: u64,
}

/// The JSON document.
#[derive(Debug, serde::Serialize)]
struct JsonOut {
    modes: Vec<JsonMode>,
}

/// Rounds `x` to `digits` decimals (0 when it is not finite).
fn round(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    if x.is_finite() {
        (x * k).round() / k
    } else {
        0.0
    }
}

/// `{"modes": [...]}`, one object per mode: `mode`, `faults`, `faults_per_sec`,
/// `lock_fallbacks`, `reuse_caught`, `wrong_vma`, `call_rcu_calls`, `kfree_rcu_calls`,
/// `grace_periods`, `peak_rss_bytes`, `peak_cache_bytes`, then `fallback_reasons`, `vmas_freed`,
/// `vmas_leaked`, `rcu_errors`, `seconds`, `fault_cpu_seconds`.
pub(crate) fn render_json(reports: &[ModeReport]) -> String {
    let out = JsonOut {
        modes: reports
            .iter()
            .map(|r| {
                let fb = &r.fault.fallbacks;
                JsonMode {
                    mode: r.mode.name(),
                    faults: r.fault.faults,
                    faults_per_sec: round(r.faults_per_sec(), 1),
                    lock_fallbacks: fb.total(),
                    reuse_caught: r.fault.reuse_caught,
                    wrong_vma: r.fault.wrong_vma,
                    call_rcu_calls: r.call_rcu_calls,
                    kfree_rcu_calls: r.map.kfree_rcu,
                    grace_periods: r.grace_periods,
                    peak_rss_bytes: r.peak_rss_bytes,
                    peak_cache_bytes: r.peak_cache_bytes,
                    fallback_reasons: JsonFallbacks {
                        seq: fb.seq,
                        detached: fb.detached,
                        wrong_mm: fb.wrong_mm,
                        range: fb.range,
                        unmapped: fb.unmapped,
                    },
                    vmas_freed: r.map.freed,
                    vmas_leaked: r.vmas_leaked,
                    rcu_errors: r.fault.rcu_errors,
                    seconds: round(r.seconds, 3),
                    fault_cpu_seconds: round(r.fault.cpu_ns as f64 / 1e9, 3),
                }
            })
            .collect(),
    };
    serde_json::to_string(&out).expect("plain numbers and strings serialise")
}
