//! `cargo run --release --bin compare`: our grace-period engine side by side with the anchors
//! (crossbeam-epoch, seize, arc-swap, the raw membarrier syscall and, when the package was built
//! with liburcu installed, liburcu-memb with its read side inlined), measured alternately in one
//! process: every round runs our figure and the anchor's in turn, and the table shows medians.
//!
//! ```text
//! compare [--quick] [--only <substring>] [--json] [--rounds N]
//! ```
//!
//! * `--quick`: ~10x shorter loops and 3 rounds (a smoke test of the harness, not a measurement).
//! * `--only <s>`: only the groups whose id, figure or subject name contains `<s>` (repeatable).
//! * `--json`: print JSON instead of the table.
//! * `--rounds N`: rounds per group (default 5).
//!
//! Methods mirror `shared/anchors` (see `anchors/RESULTS.md`) so the anchor columns can be checked
//! against the anchor harness. This is a benchmark: nothing here asserts a timing.

#[path = "compare/anchors.rs"]
mod anchors;
#[path = "compare/harness.rs"]
mod harness;
#[path = "compare/ours.rs"]
mod ours;

use std::io::IsTerminal as _;

use harness::{Group, Target, Unit};

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
        };
        if quick {
            Sizes {
                read: full.read / 10,
                sync: full.sync / 10,
                call_rcu: full.call_rcu / 10,
                barrier: 10,
                sync16: 50,
                replace: full.replace / 10,
            }
        } else {
            full
        }
    }
}

struct Options {
    quick: bool,
    json: bool,
    only: Vec<String>,
    rounds: usize,
}

fn usage() -> ! {
    eprintln!("usage: compare [--quick] [--only <substring>]... [--json] [--rounds N]");
    std::process::exit(2);
}

fn parse_args() -> Options {
    let mut o = Options {
        quick: false,
        json: false,
        only: Vec::new(),
        rounds: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = true,
            "--only" => o.only.push(args.next().unwrap_or_else(|| usage())),
            "--rounds" => {
                o.rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument: {a}");
                usage()
            }
        }
    }
    if o.rounds == 0 {
        o.rounds = if o.quick { 3 } else { 5 };
    }
    o
}

/// nproc, kernel and CPU model of this machine.
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
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
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
        if anchors::urcu::has_membarrier() {
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

fn groups(sz: Sizes) -> Vec<Group> {
    let mut out = Vec::new();

    // --- read side, 1 thread ---------------------------------------------------------------
    let mut g = Group::new("read1");
    let n = sz.read;
    let o = g.subject("ours rcu_read_lock+drop", move || ours::read_pairs(n));
    let cb = g.subject("crossbeam-epoch pin", move || anchors::cb::pin_pairs(n));
    let c = std::sync::Arc::new(seize::Collector::new());
    let se = g.subject("seize enter", move || anchors::sz::enter_pairs(&c, n));
    g.row(
        "read lock+unlock, 1 thr, vs crossbeam-epoch",
        Unit::Ns,
        o,
        Some(cb),
        Target::RatioLe(0.15),
    );
    g.row(
        "read lock+unlock, 1 thr, vs seize",
        Unit::Ns,
        o,
        Some(se),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb", move || anchors::urcu::read_pairs(n));
        g.row(
            "read lock+unlock, 1 thr, vs liburcu memb",
            Unit::Ns,
            o,
            Some(u),
            Target::RatioLe(1.2),
        );
    }
    out.push(g);

    // --- read side, 2 threads --------------------------------------------------------------
    let mut g = Group::new("read2");
    let o = g.subject("ours 2 thr", move || ours::two_threads(n, ours::read_loop));
    let cb = g.subject("crossbeam-epoch 2 thr", move || {
        ours::two_threads(n, anchors::cb::pin_loop)
    });
    g.row(
        "read lock+unlock, 2 thr (slower), vs crossbeam-epoch",
        Unit::Ns,
        o,
        Some(cb),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb 2 thr", move || {
            anchors::urcu::read_pairs_2thr(n)
        });
        g.row(
            "read lock+unlock, 2 thr (slower), vs liburcu memb",
            Unit::Ns,
            o,
            Some(u),
            Target::None,
        );
    }
    out.push(g);

    // --- nested read side ----------------------------------------------------------------
    let mut g = Group::new("nested");
    let o = g.subject("ours nested", move || ours::read_pairs_nested(n));
    let cb = g.subject("crossbeam-epoch nested pin", move || {
        anchors::cb::pin_nested(n)
    });
    g.row(
        "nested read lock+unlock, vs crossbeam-epoch",
        Unit::Ns,
        o,
        Some(cb),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb nested", move || {
            anchors::urcu::read_pairs_nested(n)
        });
        g.row(
            "nested read lock+unlock, vs liburcu memb",
            Unit::Ns,
            o,
            Some(u),
            Target::None,
        );
    }
    out.push(g);

    // --- synchronize_rcu, no other thread -----------------------------------------------------
    let mut g = Group::new("sync0");
    let calls = sz.sync;
    let o = g.subject("ours synchronize_rcu idle", move || {
        ours::sync_idle(calls, false)
    });
    let oe = g.subject("ours synchronize_rcu_expedited idle", move || {
        ours::sync_idle(calls, true)
    });
    #[cfg(rcu_have_liburcu)]
    let u = Some(g.subject("liburcu memb sync0", move || {
        anchors::urcu::sync(calls, false)
    }));
    #[cfg(not(rcu_have_liburcu))]
    let u = None;
    g.row(
        "synchronize_rcu, no other thread",
        Unit::Us,
        o,
        u,
        Target::AbsLe(1.0),
    );
    g.row(
        "synchronize_rcu_expedited, no other thread",
        Unit::Us,
        oe,
        u,
        Target::None,
    );
    out.push(g);

    // --- synchronize_rcu, one busy reader -------------------------------------------------
    let mut g = Group::new("sync1");
    let o = g.subject("ours synchronize_rcu busy", move || {
        ours::sync_busy(calls, false)
    });
    let oe = g.subject("ours synchronize_rcu_expedited busy", move || {
        ours::sync_busy(calls, true)
    });
    let mb = g.subject("raw membarrier", move || ours::raw_membarrier_busy(calls));
    g.row(
        "synchronize_rcu, 1 busy reader, vs 1 raw membarrier",
        Unit::Us,
        o,
        Some(mb),
        Target::RatioLe(1.5),
    );
    g.row(
        "sync_rcu_expedited, 1 busy reader, vs 1 raw membarrier",
        Unit::Us,
        oe,
        Some(mb),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb sync1", move || {
            anchors::urcu::sync(calls, true)
        });
        g.row(
            "synchronize_rcu, 1 busy reader, vs liburcu memb",
            Unit::Us,
            o,
            Some(u),
            Target::None,
        );
    }
    out.push(g);

    // --- call_rcu end to end -----------------------------------------------------------------
    let mut g = Group::new("call_rcu");
    let m = sz.call_rcu;
    let o = g.subject_n("ours call_rcu", move || ours::call_rcu_end_to_end(m));
    let cb = g.subject("crossbeam-epoch defer_destroy", move || {
        anchors::cb::defer_rate(m)
    });
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject_n("liburcu memb call_rcu", move || anchors::urcu::call_rcu(m));
        g.row(
            "call_rcu 32 B end to end (+rcu_barrier), vs liburcu",
            Unit::Mps,
            (o, 0),
            Some((u, 0)),
            Target::RatioGe(2.0),
        );
        g.row(
            "call_rcu 32 B enqueue phase, vs liburcu",
            Unit::Mps,
            (o, 1),
            Some((u, 1)),
            Target::None,
        );
    }
    #[cfg(not(rcu_have_liburcu))]
    g.row(
        "call_rcu 32 B end to end (+rcu_barrier)",
        Unit::Mps,
        (o, 0),
        None,
        Target::None,
    );
    g.row(
        "call_rcu 32 B end to end, vs crossbeam-epoch defer",
        Unit::Mps,
        (o, 0),
        Some(cb),
        Target::None,
    );
    out.push(g);

    // --- rcu_barrier, idle ---------------------------------------------------------------
    let mut g = Group::new("barrier");
    let bc = sz.barrier;
    let o = g.subject("ours rcu_barrier idle", move || ours::barrier_idle(bc));
    #[cfg(rcu_have_liburcu)]
    let u = Some(g.subject("liburcu memb rcu_barrier idle", move || {
        anchors::urcu::barrier_idle(bc)
    }));
    #[cfg(not(rcu_have_liburcu))]
    let u = None;
    g.row(
        "rcu_barrier, idle engine",
        Unit::Us,
        o,
        u,
        Target::AbsLe(1000.0),
    );
    out.push(g);

    // --- 16 concurrent synchronize_rcu callers ----------------------------------------------------
    let mut g = Group::new("sync16");
    let per = sz.sync16;
    let s = g.subject_n("ours 16 thr synchronize_rcu", move || {
        ours::sync_16_threads(per)
    });
    g.row(
        "16 thr synchronize_rcu: grace periods / calls",
        Unit::Ratio,
        (s, 0),
        None,
        Target::AbsLt(0.25),
    );
    g.row(
        "16 thr synchronize_rcu: heavy barriers / GP",
        Unit::Ratio,
        (s, 1),
        None,
        Target::AbsLe(1.0),
    );
    g.row(
        "16 thr synchronize_rcu: wall time / calls per thread",
        Unit::Us,
        (s, 2),
        None,
        Target::None,
    );
    out.push(g);

    // --- heavy barriers per grace period -------------------------------------------------------
    let mut g = Group::new("heavy");
    let h = g.subject("ours heavy/GP busy", move || ours::heavy_per_gp_busy(calls));
    g.row(
        "heavy barriers / GP, synchronize_rcu + 1 busy reader",
        Unit::Ratio,
        h,
        None,
        Target::AbsLe(1.0),
    );
    out.push(g);

    // --- RcuCell vs arc-swap ----------------------------------------------------------------
    let mut g = Group::new("rcucell");
    let cell = rcu_core::RcuCell::new(Some(Box::new(7u64)));
    let o = g.subject("ours RcuCell read", move || ours::rcucell_read(&cell, n));
    let sw = arc_swap::ArcSwap::from_pointee(7u64);
    let a = g.subject("arc-swap load", move || anchors::asw::load(&sw, n));
    let r = sz.replace;
    let cell = rcu_core::RcuCell::new(Some(Box::new(7u64)));
    let orp = g.subject("ours RcuCell replace", move || {
        ours::rcucell_replace(&cell, r)
    });
    let sw = arc_swap::ArcSwap::from_pointee(7u64);
    let ast = g.subject("arc-swap store", move || anchors::asw::store(&sw, r));
    g.row(
        "RcuCell lock+read+unlock, vs arc-swap load",
        Unit::Ns,
        o,
        Some(a),
        Target::None,
    );
    g.row(
        "RcuCell replace (+final rcu_barrier), vs arc-swap store",
        Unit::Ns,
        orp,
        Some(ast),
        Target::None,
    );
    out.push(g);

    out
}

fn main() {
    let opts = parse_args();
    let sz = Sizes::new(opts.quick);
    let m = machine();
    // Register this thread (and so probe the engine's mode) before reading the mode.
    drop(rcu_core::rcu_read_lock());
    let mode = format!("{:?}", rcu_core::stats().mode);
    let urcu = liburcu_desc();

    let mut groups = groups(sz);
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
            eprintln!("--only matched no group");
            std::process::exit(2);
        }
    }
    let progress = std::io::stderr().is_terminal();
    let mut rows = Vec::new();
    for g in &mut groups {
        g.run(opts.rounds, progress);
        rows.extend(g.results());
    }

    if opts.json {
        println!(
            "{{\"machine\":{{\"nproc\":{},\"kernel\":{},\"cpu\":{},\"loadavg\":{}}},\"rcu_core_mode\":{},\
             \"liburcu\":{},\"liburcu_built_in\":{},\"quick\":{},\"rounds\":{},\"rows\":{}}}",
            m.nproc,
            harness::json_str(&m.kernel),
            harness::json_str(&m.cpu),
            harness::json_str(&m.loadavg),
            harness::json_str(&mode),
            harness::json_str(&urcu),
            cfg!(rcu_have_liburcu),
            opts.quick,
            opts.rounds,
            harness::json_rows(&rows)
        );
        return;
    }
    println!("rcu-kit compare: ours vs anchors, same process, alternating rounds, medians");
    println!(
        "machine: nproc={}, {}, cpu \"{}\", loadavg at start {}",
        m.nproc, m.kernel, m.cpu, m.loadavg
    );
    println!("rcu-core mode: {mode}; liburcu: {urcu}");
    println!(
        "rounds: {}{}; sizes: {} read pairs, {} sync calls, {} call_rcu, {} barriers, 16x{} syncs",
        opts.rounds,
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
    );
    println!();
    print!("{}", harness::table(&rows));
    println!();
    println!(
        "ratio = ours / anchor (medians); for M/s rows higher is better, for time rows lower."
    );
    println!("call_rcu: ours Box<[u8;32]> + call_rcu(move || drop(b)); liburcu malloc(32 B) + call_rcu(free);");
    println!(
        "  crossbeam-epoch: pin + Owned::new(32 B) + defer_destroy per object (not end to end)."
    );
    println!("busy reader: a thread looping read lock; 16 compiler barriers; unlock (our guard for ours and");
    println!("  the raw membarrier row, liburcu's read lock for the liburcu row).");
}
