//! The VMA-reuse example under adversarial settings (few VMAs, many mappers, several mms): no
//! wrong VMA in any mode, reuse races really happen and are caught in typesafe mode, every VMA
//! goes back to its cache, typesafe mode makes no call_rcu per munmap, and skipping the `vm_mm`
//! check (the test-only broken variant) does produce wrong VMAs.
//!
//! These tests are part of the example (`cargo test -p rcu-kit --example vma_reuse`). Each mode
//! runs in a child process (global RCU counters and cache names stay per run; a hang is killed
//! by the deadline). The command line is tested in-process and through [`app`] run in a child
//! process, as the binary would run it (exit codes, help, JSON).

use std::time::{Duration, Instant};

use crate::cli::{parse_args, render_json, verdict, Options};
use crate::model::{self, run_mode, Config, Mode, ModeReport};
use crate::{app, mapper, mm};
use test_support::{child_case, run_child, stderr};

/// The name of the test that runs a child case, as the test harness knows it.
const CHILD_TEST: &str = "tests::vma_reuse_child";
/// Arguments of the `app` child case, separated by newlines.
const APP_ARGS_ENV: &str = "VMA_REUSE_TEST_ARGS";

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
        "app" => {
            let args = std::env::var(APP_ARGS_ENV).unwrap_or_default();
            let code = app(args.lines().filter(|a| !a.is_empty()).map(Into::into));
            std::process::exit(code.into());
        }
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
    let out = run_child(CHILD_TEST, case, &[], DEADLINE);
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

fn args(a: &[&str]) -> Result<Options, clap::Error> {
    parse_args(a.iter().copied())
}

#[test]
fn command_line() {
    let d = args(&[]).expect("no arguments must run the defaults");
    assert_eq!(d, Options::default());
    assert_eq!(d.modes, Mode::ALL.to_vec());
    let o = args(&[
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
    ])
    .expect("valid arguments rejected");
    assert_eq!(o.modes, vec![Mode::CallRcu]);
    assert_eq!((o.threads, o.mappers, o.mms, o.vmas), (3, 0, 2, 10));
    assert_eq!((o.seconds, o.seed, o.json), (0.5, 16, true));
    assert_eq!((o.map_rate, o.rounds), (0, 2));
    let help = args(&["-h"]).expect_err("-h is not a run");
    assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    assert_eq!(help.exit_code(), 0);
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
        assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
    }
}

fn report(mode: Mode) -> ModeReport {
    ModeReport {
        mode,
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
    }
}

#[test]
fn json_has_the_specified_keys() {
    let j = render_json(&[report(Mode::KfreeRcu), report(Mode::Typesafe)]);
    let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
    let modes = v["modes"].as_array().expect("a modes array");
    assert_eq!(modes.len(), 2);
    let m = modes[0].as_object().expect("an object per mode");
    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
    let want = [
        "mode",
        "faults",
        "faults_per_sec",
        "lock_fallbacks",
        "reuse_caught",
        "wrong_vma",
        "call_rcu_calls",
        "kfree_rcu_calls",
        "grace_periods",
        "peak_rss_bytes",
        "peak_cache_bytes",
    ];
    for k in want {
        assert!(keys.contains(&k), "{k} missing in {j}");
    }
    assert_eq!(m["mode"], "kfree-rcu");
    assert_eq!(m["faults_per_sec"], 5.0);
    assert_eq!(m["call_rcu_calls"], 3);
    assert_eq!(m["grace_periods"], 4);
    assert_eq!(m["peak_rss_bytes"], 5);
    assert_eq!(m["peak_cache_bytes"], 6);
    assert_eq!(modes[1]["mode"], "typesafe");
}

#[test]
fn verdict_line() {
    let ok = verdict(&[report(Mode::Typesafe), report(Mode::CallRcu)]);
    assert!(ok.starts_with("PASS: "), "{ok}");
    let mut bad = report(Mode::CallRcu);
    bad.fault.wrong_vma = 7;
    let v = verdict(&[report(Mode::Typesafe), bad]);
    assert!(
        v.starts_with("FAIL: call-rcu mode: 7 wrong-VMA results"),
        "{v}"
    );
}

/// Runs [`app`] with `a` in a child process; returns its exit status, stdout and stderr.
fn run_app(a: &[&str]) -> (Option<i32>, String, String) {
    let joined = a.join("\n");
    let out = run_child(CHILD_TEST, "app", &[(APP_ARGS_ENV, &joined)], DEADLINE);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

/// The `{"modes": ...}` document of the output (the test harness prints its own text too, and
/// the start of its `test ... ` line precedes the document).
fn json_line(stdout: &str) -> Option<serde_json::Value> {
    let at = stdout.find("{\"modes\":")?;
    let line = stdout[at..].lines().next()?;
    serde_json::from_str(line).ok()
}

#[test]
fn app_exit_codes_help_and_json() {
    let (code, _, err) = run_app(&["--threads", "0"]);
    assert_eq!(code, Some(2), "usage error must exit 2: {err}");
    assert!(err.contains("--threads"), "{err}");
    assert!(
        err.contains("--help"),
        "a usage error hints at --help: {err}"
    );
    assert!(
        !err.contains("--broken-skip-mm-check"),
        "a usage error does not print the whole help: {err}"
    );

    let (code, out, err) = run_app(&["--help"]);
    assert_eq!(code, Some(0), "{err}");
    for opt in [
        "--mode",
        "--threads",
        "--mappers",
        "--mms",
        "--vmas",
        "--seconds",
        "--map-rate",
        "--rounds",
        "--seed",
        "--json",
        "--explain",
        "--broken-skip-mm-check",
    ] {
        assert!(out.contains(opt), "--help does not describe {opt}:\n{out}");
    }

    let (code, out, err) = run_app(&["--explain"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("wrong-VMA results"), "{out}");

    let (code, out, err) = run_app(&["--seconds", "0.3", "--vmas", "8", "--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let v = json_line(&out).unwrap_or_else(|| panic!("no JSON line in {out}"));
    let modes: Vec<&str> = v["modes"]
        .as_array()
        .expect("modes")
        .iter()
        .map(|m| m["mode"].as_str().expect("mode name"))
        .collect();
    assert_eq!(modes, ["typesafe", "call-rcu", "kfree-rcu"]);
    for m in v["modes"].as_array().expect("modes") {
        assert_eq!(m["wrong_vma"], 0, "{v}");
    }
    assert!(err.contains("vma_reuse: PASS"), "{err}");

    let (code, out, err) = run_app(&["--seconds", "0.2", "--vmas", "8", "--mode", "typesafe"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let last = out
        .lines()
        .rfind(|l| !l.is_empty() && !l.starts_with("test "))
        .unwrap_or("");
    assert!(
        last.starts_with("PASS: "),
        "the table ends with PASS: {out}"
    );

    // The broken variant must make the program fail (exit 1) once it produces a wrong VMA.
    let mut codes = Vec::new();
    for seed in 0..6 {
        let seed = seed.to_string();
        let (code, out, err) = run_app(&[
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
            &seed,
        ]);
        let v = json_line(&out).unwrap_or_else(|| panic!("no JSON line in {out}\n{err}"));
        let wrong = v["modes"][0]["wrong_vma"] != 0;
        assert_eq!(
            code,
            Some(if wrong { 1 } else { 0 }),
            "exit status must follow wrong_vma: {out}\n{err}"
        );
        if wrong {
            assert!(err.contains("vma_reuse: FAIL: typesafe mode"), "{err}");
            return;
        }
        codes.push(code);
    }
    panic!("broken variant never produced a wrong VMA through the program: {codes:?}");
}
