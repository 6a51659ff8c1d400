//! Command line: options, defaults and the usage text.

use std::time::Duration;

use rcu_kit::kfree_batch::parse_size;

use super::table::MAX_POOL;

/// How writers retire the elements they remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `call_rcu` callbacks that age the element once per grace period, then free it.
    CallRcu,
    /// `kfree_rcu` / `kfree_rcu_head` (half of them from inside a read-side critical section).
    KfreeRcu,
    /// `synchronize_rcu` after every update (the writer ages its own pipeline).
    Synchronize,
    /// `synchronize_rcu_expedited` after every update.
    Expedited,
    /// `start_poll_synchronize_rcu` / `get_state_synchronize_rcu` + `poll_state_synchronize_rcu`,
    /// `cond_synchronize_rcu` when the pipeline is full.
    Polled,
    /// Elements from a `SLAB_TYPESAFE_BY_RCU` cache, freed (and reused) at once or through
    /// `kfree_rcu_cache`; readers revalidate identity.
    Typesafe,
}

impl Mode {
    /// Every mode, in the order `--mode all` runs them.
    pub(crate) const ALL: [Mode; 6] = [
        Mode::CallRcu,
        Mode::KfreeRcu,
        Mode::Synchronize,
        Mode::Expedited,
        Mode::Polled,
        Mode::Typesafe,
    ];

    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::CallRcu => "call-rcu",
            Mode::KfreeRcu => "kfree-rcu",
            Mode::Synchronize => "synchronize",
            Mode::Expedited => "expedited",
            Mode::Polled => "polled",
            Mode::Typesafe => "typesafe",
        }
    }

    fn parse(s: &str) -> Option<Vec<Mode>> {
        if s == "all" {
            return Some(Mode::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',') {
            out.push(*Mode::ALL.iter().find(|m| m.name() == part)?);
        }
        Some(out)
    }
}

/// `--mem-limit`: an absolute `RLIMIT_AS`, or headroom above the address space in use when the
/// limit is applied (`+SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemLimit {
    /// `RLIMIT_AS = SIZE`.
    Absolute(usize),
    /// `RLIMIT_AS = VmSize + SIZE`, measured when the limit is applied.
    Headroom(usize),
}

/// Parsed options.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    /// Modes to run, one after the other.
    pub(crate) modes: Vec<Mode>,
    /// Reader threads.
    pub(crate) readers: usize,
    /// Writer threads.
    pub(crate) writers: usize,
    /// Helper threads that only drive grace periods (liburcu's "fake writers").
    pub(crate) gp_threads: usize,
    /// Run time of each mode.
    pub(crate) duration: Duration,
    /// Time before `--page-budget` and `--mem-limit` take effect.
    pub(crate) warmup: Duration,
    /// `RLIMIT_AS` for this process.
    pub(crate) mem_limit: Option<MemLimit>,
    /// The kit's page budget (`slab_backend::set_memory_limit`).
    pub(crate) page_budget: Option<usize>,
    /// Length of the injected long readers (0: none).
    pub(crate) stall_ms: u64,
    /// Seed of every thread's random choices.
    pub(crate) seed: u64,
    /// Identities (live plus retired elements) that may exist at once.
    pub(crate) pool: usize,
    /// Published cells per writer; readers pick one at random.
    pub(crate) cells: usize,
    /// Test-only: destroy retired elements before their grace period (see `--help`).
    pub(crate) broken: bool,
    /// `--fail-rate`: thousandths of allocations failed at every fault point (0: none).
    pub(crate) fail_rate: u32,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Run with these options.
    Run(Opts),
    /// Print the usage text and exit 0.
    Help,
}

/// Whether this build can run the deliberately broken variant.
pub(crate) const BROKEN_AVAILABLE: bool = cfg!(any(test, feature = "torture-broken"));

/// The usage text.
pub(crate) fn usage() -> String {
    let cpus = default_readers();
    format!(
        "\
usage: rcutorture [OPTIONS]

Stress-tests rcu-kit: readers check the pipeline age of the elements they hold (grace periods
completed since removal; any age above 1 inside a read-side critical section means RCU is broken),
writers retire elements through the selected mode.

options:
  --mode MODE         call-rcu | kfree-rcu | synchronize | expedited | polled | typesafe | all
                      (a comma-separated list also works; all = every mode, one after the other,
                      each for --seconds) [default: all]
  --seconds SECS      run time of each mode, fractions allowed [default: 10]
  --threads N         reader threads [default: {cpus}]
  --writers N         writer threads [default: 1]
  --gp-threads N      threads that only drive grace periods [default: 1]
  --mem-limit SIZE    set RLIMIT_AS of this process after the warm-up; SIZE like 512M or 2G, or
                      +SIZE for headroom above the address space in use at that moment
  --page-budget SIZE  the kit's page budget (set_memory_limit) after the warm-up; 0 = no page
  --warmup MS         milliseconds before --page-budget / --mem-limit apply [default: 500]
  --stall-ms MS       inject long readers: one thread holds a read-side critical section for MS
                      milliseconds, again and again; the stall timeout is set to MS/2
  --seed N            seed of the random choices (decimal or 0x hex) [default: from the clock]
  --pool N            identities (live + retired elements) at once, at most {MAX_POOL}
                      [default: 16384]
  --cells N           published cells per writer [default: 16]
  --fail-rate PCT     fail PCT % of the kit's allocations at every fault point (rcu_core::fault:
                      pages, heap, block, emergency, park, call_rcu, barrier); a FAULTS line per
                      mode shows the failures injected and the fallbacks taken [default: 0]
  --broken-free-early TEST ONLY: destroy every retired element before its grace period ends, to
                      show that rcutorture reports it (only in builds with the torture-broken
                      feature: cargo run -p rcutorture --features torture-broken)
  -h, --help          this text

A progress line (elapsed, reads/s, updates/s, grace periods, pending kfree memory, fallbacks,
errors) is redrawn on a terminal and printed once a second otherwise (stderr). The summary, the
reader pipeline-age histogram and a `RESULT` line per mode go to stdout.

exit status: 0 when no RCU error, no lost element and no abort; 1 otherwise; 2 on usage errors.
"
    )
}

fn default_readers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .clamp(2, 16)
}

fn parse_count(opt: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = v
        .parse()
        .map_err(|_| format!("{opt}: '{v}' is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{opt}: {n} is out of range ({min}..={max})"));
    }
    Ok(n)
}

fn parse_size_opt(opt: &str, v: &str) -> Result<usize, String> {
    parse_size(v).map_err(|e| format!("{opt}: {e}"))
}

fn parse_seed(v: &str) -> Result<u64, String> {
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    r.map_err(|_| format!("--seed: '{v}' is not a number"))
}

/// Parses the arguments (without the program name).
pub(crate) fn parse(args: &[String]) -> Result<Parsed, String> {
    parse_with(args, BROKEN_AVAILABLE)
}

/// [`parse`], with `broken_available` in place of [`BROKEN_AVAILABLE`] (so that the refusal of
/// `--broken-free-early` in ordinary builds can be tested in a build that has the broken code).
fn parse_with(args: &[String], broken_available: bool) -> Result<Parsed, String> {
    let mut o = Opts {
        modes: Mode::ALL.to_vec(),
        readers: default_readers(),
        writers: 1,
        gp_threads: 1,
        duration: Duration::from_secs(10),
        warmup: Duration::from_millis(500),
        mem_limit: None,
        page_budget: None,
        stall_ms: 0,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        pool: 16384,
        cells: 16,
        broken: false,
        fail_rate: 0,
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let (opt, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_owned())),
            _ => (arg, None),
        };
        match opt {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--broken-free-early" => {
                if inline.is_some() {
                    return Err("--broken-free-early takes no value".into());
                }
                if !broken_available {
                    return Err("--broken-free-early exists only in builds with the \
                                torture-broken feature (cargo run -p rcutorture --features \
                                torture-broken -- ...)"
                        .into());
                }
                o.broken = true;
                continue;
            }
            _ => {}
        }
        if !opt.starts_with("--") {
            return Err(format!("unexpected argument '{arg}'"));
        }
        let known = [
            "--mode",
            "--seconds",
            "--threads",
            "--writers",
            "--gp-threads",
            "--mem-limit",
            "--page-budget",
            "--warmup",
            "--stall-ms",
            "--seed",
            "--pool",
            "--cells",
            "--fail-rate",
        ];
        if !known.contains(&opt) {
            return Err(format!("unknown option '{opt}'"));
        }
        let v = match inline {
            Some(v) => v,
            None => {
                let Some(v) = args.get(i) else {
                    return Err(format!("{opt} needs a value"));
                };
                i += 1;
                v.clone()
            }
        };
        let v = v.as_str();
        match opt {
            "--mode" => {
                o.modes = Mode::parse(v).ok_or_else(|| {
                    format!(
                        "--mode: '{v}' is not one of call-rcu, kfree-rcu, synchronize, \
                         expedited, polled, typesafe, all"
                    )
                })?
            }
            "--seconds" => {
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("--seconds: '{v}' is not a number"))?;
                if !(s > 0.0 && s <= 86_400.0) {
                    return Err(format!(
                        "--seconds: {v} is out of range (0 < SECS <= 86400)"
                    ));
                }
                o.duration = Duration::from_secs_f64(s);
            }
            "--threads" => o.readers = parse_count(opt, v, 1, 1024)?,
            "--writers" => o.writers = parse_count(opt, v, 1, 256)?,
            "--gp-threads" => o.gp_threads = parse_count(opt, v, 0, 64)?,
            "--mem-limit" => {
                o.mem_limit = Some(match v.strip_prefix('+') {
                    Some(rest) => MemLimit::Headroom(parse_size_opt(opt, rest)?),
                    None => {
                        let n = parse_size_opt(opt, v)?;
                        if n < (16 << 20) {
                            return Err(format!(
                                "--mem-limit: {v} is below 16M: the process could not even \
                                 start its threads (use +SIZE for headroom above current use)"
                            ));
                        }
                        MemLimit::Absolute(n)
                    }
                })
            }
            "--page-budget" => o.page_budget = Some(parse_size_opt(opt, v)?),
            "--warmup" => {
                o.warmup = Duration::from_millis(parse_count(opt, v, 0, 3_600_000)? as u64)
            }
            "--stall-ms" => o.stall_ms = parse_count(opt, v, 0, 3_600_000)? as u64,
            "--seed" => o.seed = parse_seed(v)?,
            "--pool" => o.pool = parse_count(opt, v, 64, MAX_POOL)?,
            "--cells" => o.cells = parse_count(opt, v, 1, 4096)?,
            "--fail-rate" => o.fail_rate = super::faults::parse_rate(v)?,
            _ => unreachable!("checked against `known`"),
        }
    }
    let cells = o.cells * o.writers;
    if cells * 2 > o.pool {
        return Err(format!(
            "--pool {} is too small for {} writers x {} cells (needs at least {})",
            o.pool,
            o.writers,
            o.cells,
            cells * 2
        ));
    }
    Ok(Parsed::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_options() {
        let Ok(Parsed::Run(o)) = p(&[
            "--mode",
            "kfree-rcu,typesafe",
            "--seconds=1.5",
            "--mem-limit",
            "+64M",
            "--page-budget",
            "0",
            "--seed",
            "0x10",
        ]) else {
            panic!("should parse");
        };
        assert_eq!(o.modes, vec![Mode::KfreeRcu, Mode::Typesafe]);
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert_eq!(o.mem_limit, Some(MemLimit::Headroom(64 << 20)));
        assert_eq!(o.page_budget, Some(0));
        assert_eq!(o.seed, 16);
    }

    #[test]
    fn rejects_bad_options() {
        for bad in [
            &["--mode", "nope"][..],
            &["--seconds", "0"],
            &["--threads"],
            &["--bogus"],
            &["--page-budget", "lots"],
            &["--mem-limit", "1M"],
            &["--pool", "64", "--cells", "64"],
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn broken_flag_needs_the_feature() {
        let args = vec!["--broken-free-early".to_owned()];
        let err = parse_with(&args, false).expect_err("refused without the feature");
        assert!(err.contains("torture-broken"), "{err}");
        let Ok(Parsed::Run(o)) = parse_with(&args, true) else {
            panic!("accepted with the feature");
        };
        assert!(o.broken);
    }
}
