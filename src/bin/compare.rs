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
//! * `--rounds N`: rounds per group (default 5; the memory groups, one child process per sample,
//!   run at most 3).
//!
//! Groups (ids for `--only`): `read1`, `read2`, `readscale`, `nested`, `sync0`, `sync1`,
//! `call_rcu`, `barrier`, `sync16`, `heavy`, `rcucell`, `kfree`, `kfree_mixed`, `mem`,
//! `mem_stall`, `slab`, `slab_pc`.
//!
//! Memory figures (peak RSS, pending bytes, grace periods, drain time of 10M retired objects)
//! run each sample in a fresh child process: this binary re-executes itself with
//! `RCU_KIT_COMPARE_CHILD=<figure>` (see `compare/child.rs`), so `VmHWM` is per figure and the
//! kfree-batch pending cap can differ per child. A missing anchor or a failed child shows `n/a`;
//! the command never panics for it.
//!
//! Methods mirror `shared/anchors` (see `anchors/RESULTS.md`) so the anchor columns can be checked
//! against the anchor harness. This is a benchmark: nothing here asserts a timing.

#[path = "compare/anchors.rs"]
mod anchors;
#[path = "compare/child.rs"]
mod child;
#[path = "compare/harness.rs"]
mod harness;
#[path = "compare/ours.rs"]
mod ours;
#[path = "compare/ring.rs"]
mod ring;

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

    // --- read side: does it write a shared cache line? ---------------------------------------
    // The same loop on 1 thread pinned to CPU 0, then on 2 threads pinned to CPUs 0 and 1. A read
    // side that writes only its own line keeps its per-thread cost like the private-line control;
    // one that wrote a shared line would degrade like the shared-line control.
    let mut g = Group::new("readscale");
    let o = g.subject_n("ours read lock+unlock, pinned", move || {
        harness::pinned_scaling(n, ours::read_body)
    });
    let pc = g.subject_n("control: load+store, private line", move || {
        harness::pinned_scaling(n, anchors::control::private_line)
    });
    let sc = g.subject_n("control: load+store, shared line", move || {
        harness::pinned_scaling(n, anchors::control::shared_line)
    });
    g.row(
        "read side 2 thr/1 thr (pinned), vs private-line control",
        Unit::Ratio,
        (o, 2),
        Some((pc, 2)),
        Target::RatioLe(1.2),
    );
    g.row(
        "read side 2 thr/1 thr (pinned), vs shared-line control",
        Unit::Ratio,
        (o, 2),
        Some((sc, 2)),
        Target::None,
    );
    g.row(
        "read lock+unlock, thread CPU ns/pair with 2 thr pinned",
        Unit::Ns,
        (o, 1),
        Some((sc, 1)),
        Target::None,
    );
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

    // --- kfree_rcu end to end ---------------------------------------------------------------------
    let mut g = Group::new("kfree");
    let k = sz.kfree;
    let o = g.subject_n("ours kfree_rcu", move || ours::kfree_end_to_end(k));
    let cb = g.subject("crossbeam-epoch defer_destroy", move || {
        anchors::cb::defer_rate(k)
    });
    let c = std::sync::Arc::new(seize::Collector::new());
    let se = g.subject("seize retire", move || anchors::sz::retire_each(&c, k));
    let oc = g.subject_n("ours call_rcu", move || ours::call_rcu_end_to_end(k));
    g.row(
        "kfree_rcu 32 B end to end (+barrier), vs crossbeam defer",
        Unit::Mps,
        (o, 0),
        Some(cb),
        Target::RatioGe(3.0),
    );
    g.row(
        "kfree_rcu 32 B end to end, vs seize retire",
        Unit::Mps,
        (o, 0),
        Some(se),
        Target::RatioGe(1.5),
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject_n("liburcu memb call_rcu", move || anchors::urcu::call_rcu(k));
        g.row(
            "kfree_rcu 32 B end to end, vs liburcu call_rcu end to end",
            Unit::Mps,
            (o, 0),
            Some((u, 0)),
            Target::None,
        );
    }
    g.row(
        "kfree_rcu 32 B end to end, vs our call_rcu end to end",
        Unit::Mps,
        (o, 0),
        Some((oc, 0)),
        Target::None,
    );
    g.row(
        "kfree_rcu 32 B retire loop alone, vs crossbeam defer",
        Unit::Mps,
        (o, 1),
        Some(cb),
        Target::None,
    );
    let floor = g.subject("Box<[u8;32]> new+drop (control)", move || {
        ours::box_pair_rate(k)
    });
    g.row(
        "kfree_rcu 32 B end to end, vs bare Box new+drop (allocator floor)",
        Unit::Mps,
        (o, 0),
        Some(floor),
        Target::None,
    );
    g.row(
        "crossbeam defer, vs bare Box new+drop (allocator floor)",
        Unit::Mps,
        cb,
        Some(floor),
        Target::None,
    );
    out.push(g);

    // --- kfree_rcu, three types ---------------------------------------------------------------
    let mut g = Group::new("kfree_mixed");
    let o = g.subject_n("ours kfree_rcu 16/32/64 B", move || {
        ours::kfree_mixed_end_to_end(k)
    });
    let o1 = g.subject_n("ours kfree_rcu 32 B only", move || {
        ours::kfree_end_to_end(k)
    });
    let cb = g.subject("crossbeam-epoch defer 16/32/64 B", move || {
        anchors::cb::defer_mixed_rate(k)
    });
    let c = std::sync::Arc::new(seize::Collector::new());
    let se = g.subject("seize retire 16/32/64 B", move || {
        anchors::sz::retire_mixed(&c, k)
    });
    g.row(
        "kfree_rcu 3 types end to end, vs crossbeam defer 3 types",
        Unit::Mps,
        (o, 0),
        Some(cb),
        Target::None,
    );
    g.row(
        "kfree_rcu 3 types end to end, vs seize retire 3 types",
        Unit::Mps,
        (o, 0),
        Some(se),
        Target::None,
    );
    g.row(
        "kfree_rcu 3 types end to end, vs ours 1 type",
        Unit::Mps,
        (o, 0),
        Some((o1, 0)),
        Target::None,
    );
    out.push(g);

    // --- memory: 10M retired objects, no reader (one child process per sample) ---------------
    let mo = sz.mem;
    let mem_subject = move |g: &mut Group, label: &str, child_name: &'static str| {
        g.subject_n(label, move || child::run(child_name, child::m::COUNT, mo))
    };
    let nm = if mo % 1_000_000 == 0 {
        format!("{}M", mo / 1_000_000)
    } else {
        format!("{mo}")
    };
    let lbl = |rest: &str| format!("{nm} retired{rest}");
    let mut g = Group::new("mem");
    g.max_rounds(3);
    let o = mem_subject(&mut g, "ours kfree_rcu", "kfree");
    let cb = mem_subject(&mut g, "crossbeam-epoch defer", "cb");
    let oc = mem_subject(&mut g, "ours call_rcu", "call_rcu");
    #[cfg(rcu_have_liburcu)]
    let u = Some(mem_subject(&mut g, "liburcu memb call_rcu", "urcu"));
    #[cfg(not(rcu_have_liburcu))]
    let u: Option<usize> = None;
    use child::m;
    g.row(
        &lbl(", no reader: peak RSS growth, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_RSS),
        Some((cb, m::PEAK_RSS)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            &lbl(", no reader: peak RSS growth, vs liburcu call_rcu"),
            Unit::MiB,
            (o, m::PEAK_RSS),
            Some((u, m::PEAK_RSS)),
            Target::None,
        );
    }
    g.row(
        &lbl(", no reader: peak pending, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_PENDING),
        Some((cb, m::PEAK_PENDING)),
        Target::None,
    );
    g.row(
        &lbl(": grace periods used, kfree_rcu vs our call_rcu"),
        Unit::Count,
        (o, m::GPS),
        Some((oc, m::GPS)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            &lbl(": last retire -> last free, vs liburcu call_rcu"),
            Unit::Ms,
            (o, m::DRAIN),
            Some((u, m::DRAIN)),
            Target::None,
        );
    }
    g.row(
        &lbl(": last retire -> last free, vs our call_rcu"),
        Unit::Ms,
        (o, m::DRAIN),
        Some((oc, m::DRAIN)),
        Target::None,
    );
    g.row(
        &lbl(": last retire -> last free, vs crossbeam (pin+flush)"),
        Unit::Ms,
        (o, m::DRAIN),
        Some((cb, m::DRAIN)),
        Target::None,
    );
    g.row(
        &lbl(": retire loop, vs crossbeam"),
        Unit::Ms,
        (o, m::LOOP),
        Some((cb, m::LOOP)),
        Target::None,
    );
    out.push(g);

    // --- memory: 10M retired objects while a reader stalls ------------------------------------
    let mut g = Group::new("mem_stall");
    g.max_rounds(3);
    let o = mem_subject(&mut g, "ours kfree_rcu, cap 128 MiB", "kfree_stall");
    let o16 = mem_subject(&mut g, "ours kfree_rcu, cap 16 MiB", "kfree_stall_16m");
    let cb = mem_subject(&mut g, "crossbeam-epoch defer, pinned reader", "cb_stall");
    #[cfg(rcu_have_liburcu)]
    let u = Some(mem_subject(&mut g, "liburcu memb call_rcu", "urcu_stall"));
    #[cfg(not(rcu_have_liburcu))]
    let u: Option<usize> = None;
    let cap = (kfree_batch::DEFAULT_PENDING_CAP >> 20) as f64;
    g.row(
        &lbl(", stalled reader, cap 128 MiB: peak pending, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_PENDING),
        Some((cb, m::PEAK_PENDING)),
        Target::AbsLe(cap),
    );
    g.row(
        &lbl(", stalled reader, cap 128 MiB: peak RSS growth, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_RSS),
        Some((cb, m::PEAK_RSS)),
        Target::AbsLe(cap),
    );
    if let Some(u) = u {
        g.row(
            &lbl(", stalled reader, cap 128 MiB: peak RSS growth, vs liburcu call_rcu"),
            Unit::MiB,
            (o, m::PEAK_RSS),
            Some((u, m::PEAK_RSS)),
            Target::None,
        );
    }
    g.row(
        &lbl(", stalled reader, cap 16 MiB: peak pending, vs crossbeam"),
        Unit::MiB,
        (o16, m::PEAK_PENDING),
        Some((cb, m::PEAK_PENDING)),
        Target::AbsLe(16.0),
    );
    g.row(
        &lbl(", stalled reader, cap 16 MiB: peak RSS growth, vs crossbeam"),
        Unit::MiB,
        (o16, m::PEAK_RSS),
        Some((cb, m::PEAK_RSS)),
        Target::AbsLe(16.0),
    );
    g.row(
        "pending object, reader stalled: batcher bytes beyond its heap chunk",
        Unit::Bytes,
        (o, m::OVERHEAD),
        None,
        Target::AbsLe(10.0),
    );
    g.row(
        "pending object, reader stalled: RSS per object, vs crossbeam",
        Unit::Bytes,
        (o, m::RSS_PER_OBJ),
        Some((cb, m::RSS_PER_OBJ)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            "pending object, reader stalled: RSS per object, vs liburcu call_rcu",
            Unit::Bytes,
            (o, m::RSS_PER_OBJ),
            Some((u, m::RSS_PER_OBJ)),
            Target::None,
        );
    }
    g.row(
        "stalled reader, cap 128 MiB: retire loop, vs crossbeam",
        Unit::Ms,
        (o, m::LOOP),
        Some((cb, m::LOOP)),
        Target::None,
    );
    g.row(
        "stalled reader, cap 128 MiB: reader held, vs crossbeam",
        Unit::Ms,
        (o, m::HELD),
        Some((cb, m::HELD)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            "stalled reader, cap 128 MiB: reader held, vs liburcu call_rcu",
            Unit::Ms,
            (o, m::HELD),
            Some((u, m::HELD)),
            Target::None,
        );
    }
    g.row(
        "stalled reader, cap 128 MiB: callers that waited (fallback_sync)",
        Unit::Count,
        (o, m::FALLBACK),
        None,
        Target::None,
    );
    g.row(
        "stalled reader, cap 128 MiB: last retire -> last free, vs crossbeam",
        Unit::Ms,
        (o, m::DRAIN),
        Some((cb, m::DRAIN)),
        Target::None,
    );
    out.push(g);

    // --- slab: alloc+free of 64-byte objects, one thread ---------------------------------------
    let mut g = Group::new("slab");
    let sn = sz.slab;
    let plain = ours::cache64("compare-plain-64", false);
    let o = g.subject("ours KmemCache", move || {
        ours::kmem_pairs(plain.as_ref(), sn)
    });
    let typesafe = ours::cache64("compare-typesafe-64", true);
    let ot = g.subject("ours KmemCache typesafe", move || {
        ours::kmem_pairs(typesafe.as_ref(), sn)
    });
    let ok = g.subject("ours kmalloc(64)", move || ours::kmalloc_pairs(sn));
    let bx = g.subject("Rust Box<[u8;64]>", move || anchors::glibc::box_pairs(sn));
    let gm = g.subject("glibc malloc(64)", move || anchors::glibc::malloc_pairs(sn));
    g.row(
        "KmemCache alloc+free 64 B, vs Rust Box",
        Unit::Ns,
        o,
        Some(bx),
        Target::RatioLe(0.5),
    );
    g.row(
        "KmemCache alloc+free 64 B, vs glibc malloc+free",
        Unit::Ns,
        o,
        Some(gm),
        Target::None,
    );
    g.row(
        "KmemCache typesafe alloc+free 64 B, vs plain KmemCache",
        Unit::Ns,
        ot,
        Some(o),
        Target::RatioLe(1.1),
    );
    g.row(
        "kmalloc(64)+kfree, vs glibc malloc(64)+free",
        Unit::Ns,
        ok,
        Some(gm),
        Target::RatioLe(0.8),
    );
    out.push(g);

    // --- slab: producer/consumer (alloc on one thread, free on the other) -------------------------
    let mut g = Group::new("slab_pc");
    let pn = sz.pc;
    let plain = ours::cache64("compare-pc-64", false);
    let o = g.subject("ours KmemCache p/c", move || {
        ours::kmem_producer_consumer(plain.as_ref(), pn)
    });
    let ok = g.subject("ours kmalloc p/c", move || {
        ours::kmalloc_producer_consumer(pn)
    });
    let gm = g.subject("glibc malloc p/c", move || {
        anchors::glibc::malloc_producer_consumer(pn)
    });
    g.row(
        "producer/consumer 64 B, 2 thr: KmemCache vs glibc",
        Unit::Ns,
        o,
        Some(gm),
        Target::RatioLe(1.0),
    );
    g.row(
        "producer/consumer 64 B, 2 thr: kmalloc vs glibc",
        Unit::Ns,
        ok,
        Some(gm),
        Target::RatioLe(1.0),
    );
    out.push(g);

    out
}

/// Runs one child figure (this process was started by [`child::run`]); returns the exit code.
fn child_main(name: &str) -> i32 {
    // A stalled reader is the point of some figures: keep the stall reports off stderr.
    rcu_core::set_stall_hook(Some(|_| {}));
    let mem = match name {
        "kfree" => ours::kfree_mem(false, None),
        "kfree_stall" => ours::kfree_mem(true, None),
        "kfree_stall_16m" => ours::kfree_mem(true, Some(16 << 20)),
        "call_rcu" => Ok(ours::call_rcu_mem()),
        "cb" => Ok(anchors::cb::defer_mem(false)),
        "cb_stall" => Ok(anchors::cb::defer_mem(true)),
        #[cfg(rcu_have_liburcu)]
        "urcu" => Ok(anchors::urcu::call_rcu_mem(false)),
        #[cfg(rcu_have_liburcu)]
        "urcu_stall" => Ok(anchors::urcu::call_rcu_mem(true)),
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
    let opts = parse_args();
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
    // Warm the process up before the first group (page faults, lazy initialisation, CPU
    // frequency), so that the first group is not measured on a cold process.
    warm_up();
    for g in &mut groups {
        g.run(opts.rounds, progress);
        rows.extend(g.results());
        // Let the background workers a group leaves behind (call_rcu and kfree workers finishing
        // their batches) go idle before the next group is timed.
        settle();
    }
    let load_end = loadavg();

    if opts.json {
        println!(
            "{{\"machine\":{{\"nproc\":{},\"kernel\":{},\"cpu\":{},\"loadavg\":{},\"loadavg_end\":{}}},\
             \"rcu_core_mode\":{},\"liburcu\":{},\"liburcu_built_in\":{},\"quick\":{},\"rounds\":{},\
             \"rows\":{}}}",
            m.nproc,
            harness::json_str(&m.kernel),
            harness::json_str(&m.cpu),
            harness::json_str(&m.loadavg),
            harness::json_str(&load_end),
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
        "machine: nproc={}, {}, cpu \"{}\", loadavg at start {}, at end {}",
        m.nproc, m.kernel, m.cpu, m.loadavg, load_end
    );
    println!("rcu-core mode: {mode}; liburcu: {urcu}");
    println!(
        "rounds: {}{} (memory groups: at most 3, one child process each); sizes: {} read pairs, \
         {} sync calls, {} call_rcu, {} barriers, 16x{} syncs, {} kfree_rcu, {} objects per memory \
         child, {} slab pairs, {} producer/consumer objects",
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
        sz.kfree,
        sz.mem,
        sz.slab,
        sz.pc,
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
    println!("kfree_rcu: Box<[u8;32]> x N then kvfree_rcu_barrier (every object freed); crossbeam: pin +");
    println!("  defer_destroy per object, flush every 1024; seize: enter + retire(reclaim::boxed) per object;");
    println!("  crossbeam and seize rates are not end to end (they free lazily, some objects stay pending);");
    println!(
        "  allocator floor: drop(Box::new([u8;32])) x N in the same process (a malloc+free pair)."
    );
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
