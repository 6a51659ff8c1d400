//! `cargo run --release -p compare`: our grace-period engine side by side with the baselines
//! (crossbeam-epoch, seize, arc-swap, the raw membarrier syscall and, when the package was built
//! with liburcu installed, liburcu-memb with its read side inlined), measured alternately in one
//! process: every round runs our figure and the baseline's in turn, and the table shows medians.
//!
//! ```text
//! compare [--quick] [--only <substring>] [--json] [--rounds N]
//! ```
//!
//! * `--quick`: ~10x shorter loops and 3 rounds (a smoke test of the harness, not a measurement).
//! * `--only <s>`: only the groups whose id, figure or subject name contains `<s>` (repeatable).
//! * `--json`: print JSON instead of the table.
//! * `--rounds N`: rounds per group (default 5; the memory groups, one child process per sample,
//!   run at most 3).
//!
//! Groups (ids for `--only`): `read1`, `read2`, `readscale`, `nested`, `sync0`, `sync1`,
//! `call_rcu`, `barrier`, `sync16`, `heavy`, `rcucell`, `kfree`, `kfree_mixed`, `kfree_zero`,
//! `mem`, `mem_stall`, `slab`, `slab_pc`.
//!
//! Memory figures (peak RSS, pending bytes, grace periods, drain time of 10M retired objects)
//! run each sample in a fresh child process: this binary re-executes itself with
//! `RCU_KIT_COMPARE_CHILD=<figure>` (see `compare/child.rs`), so `VmHWM` is per figure and the
//! kfree-batch pending cap can differ per child. A missing baseline or a failed child shows `n/a`;
//! the command never panics for it.
//!
//! Methods mirror the reference harness the targets were measured with, so the baseline columns
//! can be checked against it. This is a benchmark: nothing here asserts a timing.

mod baselines;
mod child;
mod groups;
mod harness;
mod ours;

use std::io::IsTerminal as _;

use clap::builder::RangedU64ValueParser;
use harness::Group;

/// Loop sizes.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// read-side pairs per sample
    read: u64,
    /// synchronize_rcu / membarrier calls per sample
    sync: u64,
    /// callbacks / objects per sample
    call_rcu: u64,
    /// idle rcu_barrier calls per sample
    barrier: u64,
    /// synchronize_rcu calls per thread in the 16-thread test
    sync16: u64,
    /// RcuCell::replace / ArcSwap::store per sample
    replace: u64,
    /// kfree_rcu / defer / retire objects per sample
    kfree: u64,
    /// objects retired by each memory child (one process per sample)
    mem: u64,
    /// alloc+free pairs per sample
    slab: u64,
    /// objects per producer/consumer sample
    pc: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        let full = Sizes {
            read: 20_000_000,
            sync: 1000,
            call_rcu: 2_000_000,
            barrier: 50,
            sync16: 200,
            replace: 2_000_000,
            kfree: 2_000_000,
            mem: 10_000_000,
            slab: 10_000_000,
            pc: 2_000_000,
        };
        if quick {
            Sizes {
                read: full.read / 10,
                sync: full.sync / 10,
                call_rcu: full.call_rcu / 10,
                barrier: 10,
                sync16: 50,
                replace: full.replace / 10,
                kfree: full.kfree / 10,
                mem: full.mem / 10,
                slab: full.slab / 10,
                pc: full.pc / 10,
            }
        } else {
            full
        }
    }
}

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "compare",
    about = "rcu-kit side by side with its baselines (crossbeam-epoch, seize, arc-swap, glibc\n\
             malloc, liburcu when built with it), measured alternately in one process; the table\n\
             shows medians and ratios against the targets",
    after_help = "Groups (ids for --only): read1, read2, readscale, nested, sync0, sync1, call_rcu,\n\
                  barrier, sync16, heavy, rcucell, kfree, kfree_mixed, kfree_zero, mem, mem_stall,\n\
                  slab, slab_pc.\n\n\
                  Exit status: 0 after a run (a missing baseline shows n/a), 2 on a usage error."
)]
struct Options {
    /// About 10x shorter loops and 3 rounds: a smoke test of the harness, not a measurement
    #[arg(long)]
    quick: bool,
    /// Only the groups whose id contains SUBSTRING, or, when no id does, whose figures or
    /// subjects mention it (repeatable)
    #[arg(long, value_name = "SUBSTRING")]
    only: Vec<String>,
    /// Print JSON, with every sample, instead of the table
    #[arg(long)]
    json: bool,
    /// Rounds per group [default: 5, or 3 with --quick]; the memory groups (one child process
    /// per sample) run at most 3
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=1000))]
    rounds: Option<usize>,
}

/// The JSON document of `--json`.
#[derive(Debug, serde::Serialize)]
struct JsonOut<'a> {
    machine: JsonMachine<'a>,
    rcu_core_mode: &'a str,
    liburcu: &'a str,
    liburcu_built_in: bool,
    quick: bool,
    rounds: usize,
    rows: Vec<harness::JsonRow<'a>>,
}

/// The machine in the JSON document.
#[derive(Debug, serde::Serialize)]
struct JsonMachine<'a> {
    nproc: usize,
    kernel: &'a str,
    cpu: &'a str,
    loadavg: &'a str,
    loadavg_end: &'a str,
}

/// nproc, kernel and CPU model of the machine the comparison runs on.
struct Machine {
    nproc: usize,
    kernel: String,
    cpu: String,
    loadavg: String,
}

fn machine() -> Machine {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: `utsname` is plain old data (arrays of c_char), so all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname; uname fills it with NUL-terminated strings.
    let kernel = if unsafe { libc::uname(&mut u) } == 0 {
        let field = |f: &[libc::c_char]| {
            let bytes: Vec<u8> = f
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        format!(
            "{} {} {}",
            field(&u.sysname),
            field(&u.release),
            field(&u.machine)
        )
    } else {
        "unknown".to_owned()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let loadavg = loadavg();
    Machine {
        nproc,
        kernel,
        cpu,
        loadavg,
    }
}

#[cfg(rcu_have_liburcu)]
fn liburcu_desc() -> String {
    format!(
        "liburcu-memb, read side inlined (-D_LGPL_SOURCE -O2), uses membarrier: {}",
        if baselines::urcu::has_membarrier() {
            "yes"
        } else {
            "NO (fences)"
        }
    )
}

#[cfg(not(rcu_have_liburcu))]
fn liburcu_desc() -> String {
    "not built in (install liburcu-dev and rebuild: rows vs liburcu are left out)".to_owned()
}

/// About half a second of mixed work on this thread (read side, allocator, a few grace periods).
fn warm_up() {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_millis(500) {
        ours::read_loop(1_000_000);
        for i in 0..10_000u64 {
            std::hint::black_box(Box::new(i));
        }
        rcu_core::synchronize_rcu();
    }
}

/// Waits for every queued callback and retired object, then gives the workers time to park.
fn settle() {
    rcu_core::rcu_barrier();
    kfree_batch::kvfree_rcu_barrier();
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// Runs one child figure (this process was started by [`child::run`]); returns the exit code.
fn child_main(name: &str) -> i32 {
    // A stalled reader is the point of some figures: keep the stall reports off stderr.
    rcu_core::set_stall_hook(Some(|_| {}));
    if name == "kfree_zero" {
        return match ours::kfree_zero() {
            Ok(v) => {
                child::report(&v);
                0
            }
            Err(e) => {
                eprintln!("[compare child {name}] {e}");
                1
            }
        };
    }
    let mem = match name {
        "kfree" => ours::kfree_mem(false, None),
        "kfree_stall" => ours::kfree_mem(true, None),
        "kfree_stall_16m" => ours::kfree_mem(true, Some(16 << 20)),
        "call_rcu" => Ok(ours::call_rcu_mem()),
        "cb" => Ok(baselines::cb::defer_mem(false)),
        "cb_stall" => Ok(baselines::cb::defer_mem(true)),
        #[cfg(rcu_have_liburcu)]
        "urcu" => Ok(baselines::urcu::call_rcu_mem(false)),
        #[cfg(rcu_have_liburcu)]
        "urcu_stall" => Ok(baselines::urcu::call_rcu_mem(true)),
        other => Err(format!("unknown child figure {other:?}")),
    };
    match mem {
        Ok(mem) => {
            child::report(&mem.0);
            0
        }
        Err(e) => {
            eprintln!("[compare child {name}] {e}");
            1
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    if let Ok(name) = std::env::var(child::CHILD_ENV) {
        std::process::exit(child_main(&name));
    }
    let opts = <Options as clap::Parser>::parse();
    let rounds = opts.rounds.unwrap_or(if opts.quick { 3 } else { 5 });
    let sz = Sizes::new(opts.quick);
    let m = machine();
    // Register this thread (and so probe the engine's mode) before reading the mode.
    drop(rcu_core::rcu_read_lock());
    let mode = format!("{:?}", rcu_core::stats().mode);
    let urcu = liburcu_desc();

    eprintln!(
        "[compare] loadavg at start: {} (nproc {}): figures are noisy when this is near or above nproc",
        m.loadavg, m.nproc
    );
    let mut groups = groups::groups(sz);
    if !opts.only.is_empty() {
        // A pattern selects the groups whose id contains it; a pattern that is in no id selects
        // the groups whose figures or subjects mention it.
        let ids: Vec<&str> = groups.iter().map(Group::id).collect();
        let selects = |g: &Group, p: &str| {
            let p = p.to_lowercase();
            if ids.iter().any(|id| id.contains(&p)) {
                g.id().contains(&p)
            } else {
                g.mentions(&p)
            }
        };
        groups.retain(|g| opts.only.iter().any(|p| selects(g, p)));
        if groups.is_empty() {
            <Options as clap::CommandFactory>::command()
                .error(
                    clap::error::ErrorKind::InvalidValue,
                    "--only matched no group (the ids are listed in --help)",
                )
                .exit();
        }
    }
    let progress = std::io::stderr().is_terminal();
    let mut rows = Vec::new();
    // Warm the process up before the first group (page faults, lazy initialisation, CPU
    // frequency), so that the first group is not measured on a cold process.
    warm_up();
    for g in &mut groups {
        g.run(rounds, progress);
        rows.extend(g.results());
        // Let the background workers a group leaves behind (call_rcu and kfree workers finishing
        // their batches) go idle before the next group is timed.
        settle();
    }
    let load_end = loadavg();

    if opts.json {
        let out = JsonOut {
            machine: JsonMachine {
                nproc: m.nproc,
                kernel: &m.kernel,
                cpu: &m.cpu,
                loadavg: &m.loadavg,
                loadavg_end: &load_end,
            },
            rcu_core_mode: &mode,
            liburcu: &urcu,
            liburcu_built_in: cfg!(rcu_have_liburcu),
            quick: opts.quick,
            rounds,
            rows: harness::json_rows(&rows),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("strings, numbers and booleans serialise")
        );
        return;
    }
    println!("rcu-kit compare: ours vs baselines, same process, alternating rounds, medians");
    println!(
        "machine: nproc={}, {}, cpu \"{}\", loadavg at start {}, at end {}",
        m.nproc, m.kernel, m.cpu, m.loadavg, load_end
    );
    println!("rcu-core mode: {mode}; liburcu: {urcu}");
    println!(
        "rounds: {}{} (memory groups: at most 3, one child process each); sizes: {} read pairs, \
         {} sync calls, {} call_rcu, {} barriers, 16x{} syncs, {} kfree_rcu, {} objects per memory \
         child, {} slab pairs, {} producer/consumer objects",
        rounds,
        if opts.quick {
            " (--quick: short loops, not a measurement)"
        } else {
            ""
        },
        sz.read,
        sz.sync,
        sz.call_rcu,
        sz.barrier,
        sz.sync16,
        sz.kfree,
        sz.mem,
        sz.slab,
        sz.pc,
    );
    println!();
    print!("{}", harness::table(&rows));
    println!();
    println!(
        "ratio = ours / baseline (medians); for M/s and /s rows higher is better, for time rows lower."
    );
    println!("call_rcu: ours Box<[u8;32]> + call_rcu(move || drop(b)); liburcu malloc(32 B) + call_rcu(free);");
    println!(
        "  crossbeam-epoch: pin + Owned::new(32 B) + defer_destroy per object (not end to end)."
    );
    println!("busy reader: a thread looping read lock; 16 compiler barriers; unlock (our guard for ours and");
    println!("  the raw membarrier row, liburcu's read lock for the liburcu row).");
    println!("kfree_rcu: Box<[u8;32]> x N then kvfree_rcu_barrier (every object freed); crossbeam: pin +");
    println!("  defer_destroy per object, flush every 1024; seize: enter + retire(reclaim::boxed) per object;");
    println!("  crossbeam and seize rates are not end to end (they free lazily, some objects stay pending);");
    println!(
        "  allocator floor: drop(Box::new([u8;32])) x N in the same process (a malloc+free pair)."
    );
    println!("kfree_zero: one child per sample; 32-byte boxes with a counted drop through kfree_rcu after");
    println!("  set_memory_limit(Some(0)) while a thread loops 50 ms read-side sections; rate = retire loop.");
    println!("memory rows: one child process per sample; 32-byte objects with a counted drop; peak RSS growth =");
    println!("  VmHWM delta over the figure; stalled reader = a thread inside rcu_read_lock() (crossbeam: pin(),");
    println!(
        "  liburcu: rcu_read_lock()) until the retire loop ends or {} s pass; crossbeam 'pending' =",
        child::STALL_MAX.as_secs()
    );
    println!("  retired minus dropped objects x 32 B (no bookkeeping), ours = kfree_batch::stats (objects + pages).");
    println!("slab: alloc+free pairs on one thread; Rust Box = Box<MaybeUninit<[u8;64]>> (System = glibc);");
    println!(
        "  producer/consumer: alloc on one thread, free on another through a 256-slot SPSC ring."
    );
    println!("readscale: same loop on 1 thread pinned to CPU 0, then 2 threads pinned to CPUs 0 and 1, timed");
    println!("  with each thread's CPU clock (descheduled time not counted); the shared-line control shows");
    println!("  whether the two threads overlapped (its ratio is far above 1 when they did).");
}
