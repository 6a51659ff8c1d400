//! Command line, progress line, table and JSON of the VMA-reuse example. Shared with
//! `tests/vma_reuse.rs` (through `#[path]`).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

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
    /// TEST ONLY: skip the `vm_mm` revalidation.
    pub(crate) broken_skip_mm_check: bool,
}

impl Default for Options {
    fn default() -> Options {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            modes: Mode::ALL.to_vec(),
            threads: cpus.clamp(2, 64),
            mappers: 2,
            mms: 4,
            vmas: 64,
            seconds: DEFAULT_SECONDS,
            map_rate: DEFAULT_MAP_RATE,
            rounds: 1,
            seed: 1,
            json: false,
            broken_skip_mm_check: false,
        }
    }
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Command {
    /// Run with these options.
    Run(Options),
    /// Print [`USAGE`] and exit 0.
    Help,
}

/// The help text.
pub(crate) const USAGE: &str = "\
usage: vma_reuse [OPTIONS]

A model address space with per-VMA locks over a SLAB_TYPESAFE_BY_RCU VMA cache: fault threads run
lock_vma_under_rcu() while mapper threads mmap/munmap/split/merge/mprotect, so VMA objects are
freed and reused (possibly in another mm) under the readers' feet. Compares freeing VMAs into a
typesafe cache at once with freeing each through call_rcu or kfree_rcu.

options:
  --mode M         typesafe | call-rcu | kfree-rcu | all     (default: all, one after another)
  --threads N      fault threads, 1..=256                     (default: CPUs, at least 2)
  --mappers N      mapper threads, 0..=64                     (default: 2)
  --mms N          address spaces, 1..=64                     (default: 4)
  --vmas N         target VMAs per address space, 1..=100000  (default: 64)
  --seconds S      seconds per mode, 0 < S <= 3600            (default: 3)
  --map-rate N     mmap write-lock sections/s per mapper, 0 = flat out (default: 20000)
  --rounds N       repeat the modes N times, alternating; sums per mode  (default: 1)
  --seed N         PRNG seed (decimal or 0x hex)              (default: 1)
  --json           print {\"modes\": [...]} instead of the table
  --broken-skip-mm-check
                   TEST ONLY: skip the vm_mm revalidation; must produce wrong-VMA results
  -h, --help       this text

Exit status: 0 on success, 1 if any wrong-VMA result, leaked VMA or RCU error was seen,
2 on a usage error.";

fn int<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    opt: &str,
    v: &str,
    lo: T,
    hi: T,
) -> Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(format!(
            "{opt}: expected an integer in {lo}..={hi}, got '{v}'"
        )),
    }
}

/// Parses the arguments after the program name.
pub(crate) fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let flag = |inline: &Option<String>| -> Result<(), String> {
            match inline {
                Some(_) => Err(format!("{name} takes no value")),
                None => Ok(()),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--json" => {
                flag(&inline)?;
                o.json = true;
                continue;
            }
            "--broken-skip-mm-check" => {
                flag(&inline)?;
                o.broken_skip_mm_check = true;
                continue;
            }
            "--mode" | "--threads" | "--mappers" | "--mms" | "--vmas" | "--seconds"
            | "--map-rate" | "--rounds" | "--seed" => {}
            _ => return Err(format!("unknown argument '{arg}'")),
        }
        let v = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--mode" => {
                o.modes = if v == "all" {
                    Mode::ALL.to_vec()
                } else {
                    vec![Mode::parse(&v).ok_or_else(|| {
                        format!("--mode: expected typesafe, call-rcu, kfree-rcu or all, got '{v}'")
                    })?]
                }
            }
            "--threads" => o.threads = int(&name, &v, 1, 256)?,
            "--mappers" => o.mappers = int(&name, &v, 0, 64)?,
            "--mms" => o.mms = int(&name, &v, 1, 64)?,
            "--vmas" => o.vmas = int(&name, &v, 1, 100_000)?,
            "--map-rate" => o.map_rate = int(&name, &v, 0, 100_000_000)?,
            "--rounds" => o.rounds = int(&name, &v, 1, 1000)?,
            "--seconds" => {
                o.seconds = match v.parse::<f64>() {
                    Ok(s) if s > 0.0 && s <= 3600.0 => s,
                    _ => {
                        return Err(format!(
                            "--seconds: expected a number in (0, 3600], got '{v}'"
                        ))
                    }
                }
            }
            "--seed" => {
                let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => v.parse::<u64>().ok(),
                };
                o.seed = parsed
                    .ok_or_else(|| format!("--seed: expected an unsigned integer, got '{v}'"))?;
            }
            _ => unreachable!("value options are listed above"),
        }
    }
    Ok(Command::Run(o))
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
    type Row = (&'static str, fn(&ModeReport) -> String);
    let rows: [Row; 22] = [
        ("faults", |r| r.fault.faults.to_string()),
        ("faults/s", |r| human_count(r.faults_per_sec())),
        ("faults per fault-thread CPU s", |r| {
            human_count(r.faults_per_cpu_sec())
        }),
        ("  under the per-VMA lock", |r| {
            format!(
                "{:.1}%",
                100.0 * r.fault.vma_locked as f64 / r.fault.faults.max(1) as f64
            )
        }),
        ("lock fallbacks", |r| r.fault.fallbacks.total().to_string()),
        ("  seq (write-locked)", |r| {
            r.fault.fallbacks.seq.to_string()
        }),
        ("  detached", |r| r.fault.fallbacks.detached.to_string()),
        ("  wrong mm", |r| r.fault.fallbacks.wrong_mm.to_string()),
        ("  range", |r| r.fault.fallbacks.range.to_string()),
        ("  unmapped", |r| r.fault.fallbacks.unmapped.to_string()),
        ("detached walk retries", |r| {
            r.fault.detached_retries.to_string()
        }),
        ("reuse races caught", |r| r.fault.reuse_caught.to_string()),
        ("reused, still valid", |r| {
            r.fault.reuse_accepted.to_string()
        }),
        ("wrong-VMA results", |r| r.fault.wrong_vma.to_string()),
        ("VMAs freed (munmap/merge)", |r| r.map.freed.to_string()),
        ("call_rcu calls", |r| r.call_rcu_calls.to_string()),
        ("  per VMA freed", |r| {
            format!("{:.4}", r.call_rcu_calls as f64 / r.map.freed.max(1) as f64)
        }),
        ("kfree_rcu calls (+arrays)", |r| r.map.kfree_rcu.to_string()),
        ("grace periods", |r| r.grace_periods.to_string()),
        ("peak RSS (process)", |r| human_bytes(r.peak_rss_bytes)),
        ("  VMA cache slabs (peak)", |r| {
            human_bytes(r.peak_cache_bytes)
        }),
        ("leaked VMAs / RCU errors", |r| {
            format!("{} / {}", r.vmas_leaked, r.fault.rcu_errors)
        }),
    ];
    let _ = write!(s, "{:<28}", "");
    for r in reports {
        let _ = write!(s, "{:>14}", r.mode.name());
    }
    s.push('\n');
    for (name, f) in rows {
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
    s
}

/// `{"modes": [...]}`: the keys the issue specifies, in its order, then a few extras.
pub(crate) fn render_json(reports: &[ModeReport]) -> String {
    let mut s = String::from("{\"modes\": [");
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let fb = &r.fault.fallbacks;
        let fps = r.faults_per_sec();
        let _ = write!(
            s,
            "{{\"mode\": \"{}\", \"faults\": {}, \"faults_per_sec\": {:.1}, \"lock_fallbacks\": {}, \
             \"reuse_caught\": {}, \"wrong_vma\": {}, \"call_rcu_calls\": {}, \"kfree_rcu_calls\": {}, \
             \"grace_periods\": {}, \"peak_rss_bytes\": {}, \"peak_cache_bytes\": {}, \
             \"fallback_reasons\": {{\"seq\": {}, \"detached\": {}, \"wrong_mm\": {}, \"range\": {}, \"unmapped\": {}}}, \
             \"vmas_freed\": {}, \"vmas_leaked\": {}, \"rcu_errors\": {}, \"seconds\": {:.3}, \
             \"fault_cpu_seconds\": {:.3}}}",
            r.mode.name(),
            r.fault.faults,
            if fps.is_finite() { fps } else { 0.0 },
            fb.total(),
            r.fault.reuse_caught,
            r.fault.wrong_vma,
            r.call_rcu_calls,
            r.map.kfree_rcu,
            r.grace_periods,
            r.peak_rss_bytes,
            r.peak_cache_bytes,
            fb.seq,
            fb.detached,
            fb.wrong_mm,
            fb.range,
            fb.unmapped,
            r.map.freed,
            r.vmas_leaked,
            r.fault.rcu_errors,
            r.seconds,
            r.fault.cpu_ns as f64 / 1e9,
        );
    }
    s.push_str("]}");
    s
}
