//! Command line: options, defaults and the usage text.

use std::time::Duration;

use rcu_kit::kfree_batch::parse_size;

use clap::builder::RangedU64ValueParser;

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

/// Whether this build can run the deliberately broken variant.
pub(crate) const BROKEN_AVAILABLE: bool = cfg!(any(test, feature = "torture-broken"));

/// `--mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// call_rcu callbacks that age the element once per grace period, then free it
    CallRcu,
    /// kfree_rcu / kfree_rcu_head, half of them from inside a read-side critical section
    KfreeRcu,
    /// synchronize_rcu after every update
    Synchronize,
    /// synchronize_rcu_expedited after every update
    Expedited,
    /// the polled grace-period API, cond_synchronize_rcu when the pipeline is full
    Polled,
    /// elements from a SLAB_TYPESAFE_BY_RCU cache; readers revalidate identity
    Typesafe,
    /// every mode, one after the other
    All,
}

/// The command line as clap sees it; [`Opts`] is what the tool uses.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rcutorture",
    about = "Stress-tests rcu-kit: readers check the pipeline age of the elements they hold, \
             writers retire elements through the selected mode",
    long_about = "Stress-tests rcu-kit: readers check the pipeline age of the elements they hold\n\
                  (grace periods completed since removal; any age above 1 inside a read-side\n\
                  critical section means RCU is broken), writers retire elements through the\n\
                  selected mode.",
    after_help = "A progress line (elapsed, reads/s, updates/s, grace periods, pending kfree memory,\n\
                  fallbacks, errors) is redrawn on a terminal and printed once a second otherwise\n\
                  (stderr). The summary, the reader pipeline-age histogram and a `RESULT` line per\n\
                  mode go to stdout.\n\n\
                  Exit status: 0 when no RCU error, no lost element and no abort; 1 otherwise; 2 on\n\
                  usage errors."
)]
struct Cli {
    /// Modes to run, one after the other, each for --seconds (a comma-separated list also works)
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    mode: Vec<ModeArg>,
    /// Run time of each mode, fractions allowed (0 < SECS <= 86400)
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    seconds: Duration,
    /// Reader threads, 1..=1024 [default: 2 per CPU, 2..=16]
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    threads: Option<usize>,
    /// Writer threads, 1..=256
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=256))]
    writers: usize,
    /// Threads that only drive grace periods, 0..=64
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=64))]
    gp_threads: usize,
    /// Set RLIMIT_AS of this process after the warm-up: SIZE like 512M or 2G (at least 16M), or
    /// +SIZE for headroom above the address space in use at that moment
    #[arg(long, value_name = "SIZE", value_parser = parse_mem_limit)]
    mem_limit: Option<MemLimit>,
    /// The kit's page budget (set_memory_limit) after the warm-up, SIZE like 64M; 0 = no page
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    page_budget: Option<usize>,
    /// Milliseconds before --page-budget / --mem-limit apply
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    warmup: u64,
    /// Inject long readers: one thread holds a read-side critical section for MS milliseconds,
    /// again and again; the stall timeout is set to MS/2
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    stall_ms: u64,
    /// Seed of the random choices (decimal or 0x hex) [default: from the clock]
    #[arg(long, value_name = "N", value_parser = parse_seed)]
    seed: Option<u64>,
    /// Identities (live + retired elements) that may exist at once, 64..=16777216; at least twice
    /// writers x cells
    #[arg(long, value_name = "N", default_value_t = 16384,
          value_parser = RangedU64ValueParser::<usize>::new().range(64..=MAX_POOL as u64))]
    pool: usize,
    /// Published cells per writer, 1..=4096
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    cells: usize,
    /// TEST ONLY: destroy every retired element before its grace period ends, to show that
    /// rcutorture reports it (only in builds with the torture-broken feature: cargo run -p
    /// rcutorture --features torture-broken)
    #[arg(long)]
    broken_free_early: bool,
    /// Fail PCT % of the kit's allocations at every fault point (rcu_core::fault: pages, heap,
    /// block, emergency, park, call_rcu, barrier); a FAULTS line per mode shows the failures
    /// injected and the fallbacks taken
    #[arg(long, value_name = "PCT", default_value = "0", value_parser = super::faults::parse_rate)]
    fail_rate: u32,
}

fn default_readers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .clamp(2, 16)
}

fn parse_seconds(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        Ok(_) => Err("out of range (0 < SECS <= 86400)".to_owned()),
        Err(_) => Err("not a number".to_owned()),
    }
}

fn parse_size_arg(v: &str) -> Result<usize, String> {
    parse_size(v).map_err(|e| e.to_string())
}

fn parse_mem_limit(v: &str) -> Result<MemLimit, String> {
    match v.strip_prefix('+') {
        Some(rest) => Ok(MemLimit::Headroom(parse_size_arg(rest)?)),
        None => {
            let n = parse_size_arg(v)?;
            if n < (16 << 20) {
                return Err(
                    "below 16M: the process could not even start its threads (use \
                            +SIZE for headroom above current use)"
                        .to_owned(),
                );
            }
            Ok(MemLimit::Absolute(n))
        }
    }
}

fn parse_seed(v: &str) -> Result<u64, String> {
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    r.map_err(|_| "not a number (decimal or 0x hex)".to_owned())
}

/// Parses the arguments (without the program name). `--help` and usage errors come back as a
/// [`clap::Error`]: `print()` it and exit with its `exit_code()` (0 for help, 2 for errors).
pub(crate) fn parse(args: &[String]) -> Result<Opts, clap::Error> {
    parse_with(args, BROKEN_AVAILABLE)
}

/// [`parse`], with `broken_available` in place of [`BROKEN_AVAILABLE`] (so that the refusal of
/// `--broken-free-early` in ordinary builds can be tested in a build that has the broken code).
fn parse_with(args: &[String], broken_available: bool) -> Result<Opts, clap::Error> {
    use clap::{CommandFactory as _, Parser as _};
    let argv = std::iter::once("rcutorture").chain(args.iter().map(String::as_str));
    let c = Cli::try_parse_from(argv)?;
    let invalid = |msg: String| Cli::command().error(clap::error::ErrorKind::ValueValidation, msg);
    if c.broken_free_early && !broken_available {
        return Err(invalid(
            "--broken-free-early exists only in builds with the torture-broken feature (cargo \
             run -p rcutorture --features torture-broken -- ...)"
                .to_owned(),
        ));
    }
    let cells = c.cells * c.writers;
    if cells * 2 > c.pool {
        return Err(invalid(format!(
            "--pool {} is too small for {} writers x {} cells (needs at least {})",
            c.pool,
            c.writers,
            c.cells,
            cells * 2
        )));
    }
    let modes = if c.mode.contains(&ModeArg::All) {
        Mode::ALL.to_vec()
    } else {
        c.mode
            .iter()
            .map(|m| match m {
                ModeArg::CallRcu => Mode::CallRcu,
                ModeArg::KfreeRcu => Mode::KfreeRcu,
                ModeArg::Synchronize => Mode::Synchronize,
                ModeArg::Expedited => Mode::Expedited,
                ModeArg::Polled => Mode::Polled,
                ModeArg::Typesafe => Mode::Typesafe,
                ModeArg::All => unreachable!("handled above"),
            })
            .collect()
    };
    Ok(Opts {
        modes,
        readers: c.threads.unwrap_or_else(default_readers),
        writers: c.writers,
        gp_threads: c.gp_threads,
        duration: c.seconds,
        warmup: Duration::from_millis(c.warmup),
        mem_limit: c.mem_limit,
        page_budget: c.page_budget,
        stall_ms: c.stall_ms,
        seed: c.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        }),
        pool: c.pool,
        cells: c.cells,
        broken: c.broken_free_early,
        fail_rate: c.fail_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Opts, clap::Error> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_options() {
        let Ok(o) = p(&[
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
            let e = p(bad).expect_err(&format!("{bad:?} should be refused"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn broken_flag_needs_the_feature() {
        let args = vec!["--broken-free-early".to_owned()];
        let err = parse_with(&args, false).expect_err("refused without the feature");
        assert!(err.to_string().contains("torture-broken"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let Ok(o) = parse_with(&args, true) else {
            panic!("accepted with the feature");
        };
        assert!(o.broken);
    }
}
