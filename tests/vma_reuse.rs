//! The VMA-reuse example under adversarial settings (few VMAs, many mappers, several mms): no
//! wrong VMA in any mode, reuse races really happen and are caught in typesafe mode, every VMA
//! goes back to its cache, typesafe mode makes no call_rcu per munmap, and skipping the `vm_mm`
//! check (the test-only broken variant) does produce wrong VMAs.
//!
//! The model is the example's own code (`examples/vma_reuse/*.rs`, included below). Each mode
//! runs in a child process (global RCU counters and cache names stay per run; a hang is killed
//! by the deadline). The command line is tested in-process and, when `cargo test` has built the
//! example binary, through the binary (exit codes, JSON).
#![cfg(not(rcu_loom))]

#[path = "../examples/vma_reuse/cli.rs"]
mod cli;
#[path = "../examples/vma_reuse/mapper.rs"]
mod mapper;
#[path = "../examples/vma_reuse/mm.rs"]
mod mm;
#[path = "../examples/vma_reuse/model.rs"]
mod model;

use std::path::PathBuf;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use cli::{parse_args, render_json, Command, Options};
use model::{run_mode, Config, Mode, ModeReport};
use test_support::{child_case, run_child, stderr};

/// Per child process; a round is about one second plus teardown.
const DEADLINE: Duration = Duration::from_secs(180);
/// Rounds a child may take to see a race (each asserts every invariant).
const MAX_ROUNDS: u64 = 12;

fn adversarial(mode: Mode, round: u64) -> Config {
    Config {
        mode,
        // Later rounds oversubscribe the CPUs more: more readers preempted inside the window.
        threads: 3 + round as usize / 3,
        mappers: 3,
        mms: 4,
        vmas: 8,
        seconds: 1.0,
        map_rate: 0,
        seed: 0x5eed + round,
        skip_mm_check: false,
    }
}

fn run(cfg: &Config) -> ModeReport {
    let r = run_mode(cfg, &mut |_, _| {});
    println!("{}", render_json(std::slice::from_ref(&r)));
    r
}

/// What must hold in every mode.
fn check_invariants(r: &ModeReport) {
    let m = r.mode.name();
    assert!(r.fault.faults > 0, "{m}: no faults ran");
    assert!(r.map.freed > 0, "{m}: no VMA was freed");
    assert_eq!(r.fault.wrong_vma, 0, "{m}: wrong-VMA results");
    assert_eq!(
        r.fault.rcu_errors, 0,
        "{m}: VMA reused before a grace period"
    );
    assert_eq!(
        r.vmas_leaked, 0,
        "{m}: VMAs left in the cache after teardown"
    );
    assert_eq!(r.map.allocated, r.map.freed, "{m}: allocations != frees");
}

fn run_case(case: &str) {
    match case {
        "typesafe" => {
            let mut caught = 0;
            for round in 0..MAX_ROUNDS {
                let r = run(&adversarial(Mode::Typesafe, round));
                check_invariants(&r);
                assert_eq!(
                    r.map.vma_call_rcu, 0,
                    "typesafe mode used call_rcu for a VMA"
                );
                assert!(
                    r.call_rcu_calls * 100 <= r.map.freed,
                    "typesafe: {} call_rcu calls for {} freed VMAs (want >= 100x fewer)",
                    r.call_rcu_calls,
                    r.map.freed
                );
                caught += r.fault.reuse_caught;
                if caught > 0 {
                    break;
                }
            }
            assert!(
                caught > 0,
                "no reuse race was caught: the hazard did not show"
            );
        }
        "call-rcu" => {
            let r = run(&adversarial(Mode::CallRcu, 0));
            check_invariants(&r);
            assert_eq!(
                r.map.vma_call_rcu, r.map.freed,
                "a VMA freed without call_rcu"
            );
            assert_eq!(r.fault.reuse_caught, 0, "reuse within a grace period");
        }
        "kfree-rcu" => {
            let r = run(&adversarial(Mode::KfreeRcu, 0));
            check_invariants(&r);
            assert_eq!(r.map.vma_call_rcu, 0);
            assert!(
                r.map.kfree_rcu >= r.map.freed,
                "a VMA freed without kfree_rcu"
            );
            assert_eq!(r.fault.reuse_caught, 0, "reuse within a grace period");
        }
        "broken" => {
            let mut wrong = 0;
            for round in 0..MAX_ROUNDS {
                let mut cfg = adversarial(Mode::Typesafe, round);
                cfg.skip_mm_check = true;
                let r = run(&cfg);
                // Still memory-safe and leak-free: the objects stayed valid Vmas.
                assert_eq!(r.vmas_leaked, 0);
                assert_eq!(r.fault.rcu_errors, 0);
                wrong += r.fault.wrong_vma;
                if wrong > 0 {
                    break;
                }
            }
            assert!(wrong > 0, "skipping the vm_mm check gave no wrong VMA");
            println!("broken variant: {wrong} wrong-VMA results");
        }
        "stalled-gp" => stalled_grace_periods(),
        other => panic!("unknown case {other}"),
    }
}

/// Cap on memory waiting for a grace period in the stalled-grace-period case (the example's).
const STALL_CAP: usize = model::KFREE_PENDING_CAP;
/// Peak RSS growth allowed on top of [`STALL_CAP`]: thread stacks, allocator arenas, the
/// batcher's own pages and the fragmentation around pending arrays (measured: the whole growth,
/// cap included, about 30 MiB).
const STALL_SLACK: usize = 32 << 20;
/// Mapper operations (each retires one 256-entry VMA array of about 8 KiB).
const STALL_OPS: u64 = 20_000;
/// How long the reader holds its section at most (the grace-period stall).
const STALL_HOLD: Duration = Duration::from_secs(2);
/// How long the mapper runs at most.
const STALL_MAX: Duration = Duration::from_secs(20);

/// A typesafe-mode mapper churns VMAs flat out while one reader holds its read-side critical
/// section, so no grace period ends: the retired VMA arrays (not the typesafe VMA cache) pile
/// up. Peak RSS may grow by the kfree_rcu pending cap plus [`STALL_SLACK`], no more.
fn stalled_grace_periods() {
    rcu_kit::kfree_batch::configure(rcu_kit::kfree_batch::Config {
        pending_cap: STALL_CAP,
        ..Default::default()
    })
    .expect("configure the kfree_rcu batcher");
    let vmas = 256;
    let alloc = mm::VmaAlloc::new(Mode::Typesafe);
    let mm = std::sync::Arc::new(mm::Mm::new(vmas * mm::PAGES_PER_VMA));
    let mut m = mapper::Mapper {
        alloc: &alloc,
        rng: model::Rng::new(7, 0),
        target_vmas: vmas,
        st: model::MapStats::default(),
        last_freed: None,
    };
    {
        let w = mm.mmap_write_lock();
        while mapper::Mapper::entries(&w).len() < vmas {
            m.mmap(&w, mapper::Mapper::entries(&w));
        }
    }
    rcu_kit::kvfree_rcu_barrier();
    let base = test_support::start_peak_rss();
    let done = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let ops = std::thread::scope(|s| {
        s.spawn(|| {
            let g = rcu_kit::rcu_read_lock();
            while !done.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < STALL_HOLD {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(g);
        });
        let mut ops = 0;
        while ops < STALL_OPS && start.elapsed() < STALL_MAX {
            let w = mm.mmap_write_lock();
            m.op(&w);
            drop(w);
            ops += 1;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        ops
    });
    let growth = test_support::peak_rss().saturating_sub(base);
    m.exit_mmap(&mm);
    rcu_kit::rcu_barrier();
    rcu_kit::kvfree_rcu_barrier();
    let k = rcu_kit::kfree_stats();
    let c = alloc.cache.stats();
    println!(
        "stalled grace period: {ops} ops in {:.2?}, peak RSS growth {} KiB, kfree_rcu peak \
         pending {} KiB (cap {} KiB), fallback_sync {}; typesafe VMA cache: {} slabs created, \
         {} freed, {} pending discard",
        start.elapsed(),
        growth >> 10,
        k.peak_pending_bytes >> 10,
        k.pending_cap >> 10,
        k.fallback_sync,
        c.slabs_created,
        c.slabs_freed,
        c.rcu_pending_slabs
    );
    assert!(
        growth <= STALL_CAP + STALL_SLACK,
        "peak RSS grew by {} KiB while a reader stalled grace periods (bound {} KiB: the \
         kfree_rcu pending cap {} KiB + {} KiB); kfree_rcu peak pending charge {} KiB",
        growth >> 10,
        (STALL_CAP + STALL_SLACK) >> 10,
        STALL_CAP >> 10,
        STALL_SLACK >> 10,
        k.peak_pending_bytes >> 10
    );
}

#[test]
fn vma_reuse_child() {
    if let Some(case) = child_case() {
        run_case(&case);
    }
}

fn expect_ok(case: &str) {
    let t = Instant::now();
    let out = run_child("vma_reuse_child", case, &[], DEADLINE);
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "case {case} failed\nstdout:\n{so}\nstderr:\n{}",
        stderr(&out)
    );
    println!("case {case} ({:.1?}):\n{so}", t.elapsed());
}

#[test]
fn typesafe_mode_catches_reuse_without_call_rcu() {
    expect_ok("typesafe");
}

#[test]
fn call_rcu_mode_is_correct() {
    expect_ok("call-rcu");
}

#[test]
fn kfree_rcu_mode_is_correct() {
    expect_ok("kfree-rcu");
}

#[test]
fn stalled_grace_periods_keep_peak_rss_bounded() {
    if cfg!(rcu_sanitize) {
        // AddressSanitizer's quarantine keeps freed heap memory resident: the RSS bound holds
        // only without it.
        eprintln!("skipped under AddressSanitizer: its quarantine inflates the peak RSS");
        return;
    }
    expect_ok("stalled-gp");
}

#[test]
fn skipping_the_mm_check_gives_wrong_vmas() {
    expect_ok("broken");
}

fn args(a: &[&str]) -> Result<Command, String> {
    parse_args(a.iter().map(|s| s.to_string()))
}

#[test]
fn command_line() {
    let Ok(Command::Run(d)) = args(&[]) else {
        panic!("no arguments must run the defaults");
    };
    assert_eq!(d, Options::default());
    assert_eq!(d.modes, Mode::ALL.to_vec());
    let Ok(Command::Run(o)) = args(&[
        "--mode",
        "call-rcu",
        "--threads=3",
        "--mappers",
        "0",
        "--mms",
        "2",
        "--vmas",
        "10",
        "--seconds",
        "0.5",
        "--seed",
        "0x10",
        "--map-rate=0",
        "--rounds",
        "2",
        "--json",
    ]) else {
        panic!("valid arguments rejected");
    };
    assert_eq!(o.modes, vec![Mode::CallRcu]);
    assert_eq!((o.threads, o.mappers, o.mms, o.vmas), (3, 0, 2, 10));
    assert_eq!((o.seconds, o.seed, o.json), (0.5, 16, true));
    assert_eq!((o.map_rate, o.rounds), (0, 2));
    assert_eq!(args(&["-h"]), Ok(Command::Help));
    for bad in [
        &["--threads", "0"][..],
        &["--threads", "x"],
        &["--mms", "0"],
        &["--vmas", "-1"],
        &["--seconds", "0"],
        &["--seconds", "nan"],
        &["--seed", "0xzz"],
        &["--mode", "fast"],
        &["--rounds", "0"],
        &["--map-rate", "-5"],
        &["--json=1"],
        &["--threads"],
        &["--bogus"],
    ] {
        let e = args(bad).expect_err(&format!("{bad:?} accepted"));
        assert!(!e.is_empty());
    }
}

#[test]
fn json_has_the_specified_keys() {
    let r = ModeReport {
        mode: Mode::KfreeRcu,
        seconds: 2.0,
        fault: model::FaultStats {
            faults: 10,
            ..Default::default()
        },
        map: model::MapStats::default(),
        call_rcu_calls: 3,
        grace_periods: 4,
        peak_rss_bytes: 5,
        peak_cache_bytes: 6,
        vmas_leaked: 0,
    };
    let j = render_json(&[r.clone(), r]);
    assert!(
        j.starts_with("{\"modes\": [{\"mode\": \"kfree-rcu\""),
        "{j}"
    );
    assert!(j.ends_with("}]}"), "{j}");
    let keys = [
        "\"mode\"",
        "\"faults\"",
        "\"faults_per_sec\": 5.0",
        "\"lock_fallbacks\"",
        "\"reuse_caught\"",
        "\"wrong_vma\"",
        "\"call_rcu_calls\": 3",
        "\"kfree_rcu_calls\"",
        "\"grace_periods\": 4",
        "\"peak_rss_bytes\": 5",
        "\"peak_cache_bytes\": 6",
    ];
    let mut at = 0;
    for k in keys {
        let i = j[at..]
            .find(k)
            .unwrap_or_else(|| panic!("{k} missing or out of order in {j}"));
        at += i + k.len();
    }
    assert_eq!(j.matches('{').count(), j.matches('}').count());
    assert_eq!(j.matches("\"mode\":").count(), 2);
}

/// The example binary `cargo test` built next to this test, if it is there and newer than the
/// example's sources (`cargo test --test vma_reuse` alone does not build examples).
fn example_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe
        .parent()?
        .parent()?
        .join("examples")
        .join(format!("vma_reuse{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&bin).ok()?.modified().ok()?;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    for f in [
        "vma_reuse.rs",
        "vma_reuse/model.rs",
        "vma_reuse/mm.rs",
        "vma_reuse/mapper.rs",
        "vma_reuse/cli.rs",
    ] {
        if std::fs::metadata(src.join(f)).ok()?.modified().ok()? > built {
            return None;
        }
    }
    Some(bin)
}

#[test]
fn example_binary_exit_codes_and_json() {
    let Some(bin) = example_binary() else {
        eprintln!(
            "example binary not built (or stale): binary checks skipped; `cargo test` builds it"
        );
        return;
    };
    let out = Process::new(&bin)
        .args(["--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error must exit 2");
    assert!(stderr(&out).contains("--threads"), "{}", stderr(&out));

    let out = Process::new(&bin).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--broken-skip-mm-check"));

    let out = Process::new(&bin)
        .args(["--seconds", "0.3", "--vmas", "8", "--json"])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{so}\n{}", stderr(&out));
    let line = so.trim();
    assert!(
        line.starts_with("{\"modes\": [") && line.ends_with("]}"),
        "{line}"
    );
    for m in ["typesafe", "call-rcu", "kfree-rcu"] {
        assert!(line.contains(&format!("\"mode\": \"{m}\"")), "{line}");
    }
    assert!(line.contains("\"wrong_vma\": 0,"), "{line}");

    // The broken variant must make the binary fail (exit 1) once it produces a wrong VMA.
    let mut codes = Vec::new();
    for seed in 0..6 {
        let out = Process::new(&bin)
            .args([
                "--mode",
                "typesafe",
                "--broken-skip-mm-check",
                "--vmas",
                "8",
                "--threads",
                "3",
                "--mappers",
                "3",
                "--seconds",
                "1",
                "--map-rate",
                "0",
                "--json",
                "--seed",
            ])
            .arg(seed.to_string())
            .output()
            .unwrap();
        let so = String::from_utf8_lossy(&out.stdout).into_owned();
        let wrong = !so.contains("\"wrong_vma\": 0,");
        assert_eq!(
            out.status.code(),
            Some(if wrong { 1 } else { 0 }),
            "exit status must follow wrong_vma: {so}\n{}",
            stderr(&out)
        );
        codes.push(out.status.code());
        if wrong {
            return;
        }
    }
    panic!("broken variant never produced a wrong VMA through the binary: {codes:?}");
}
