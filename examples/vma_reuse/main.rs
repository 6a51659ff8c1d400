//! The main job: per-VMA locks over a `SLAB_TYPESAFE_BY_RCU` VMA cache.
//!
//! A model of the kernel's page-fault path after "reimplement per-vma lock as a refcount" and
//! "mm: make vma cache SLAB_TYPESAFE_BY_RCU" (2025): several address spaces, VMAs in an
//! RCU-protected copy-on-write array, fault threads running `lock_vma_under_rcu`, mapper threads
//! that munmap/mmap/split/merge/mprotect so VMA objects are freed and reused — possibly in another
//! mm — while readers hold pointers to them. Readers revalidate (`vm_lock_seq`, detached
//! refcount, `vm_mm`, range) and fall back to the mm-wide lock; every fault checks that the VMA it
//! got really maps the address in its mm.
//!
//! ```sh
//! cargo run --release --example vma_reuse               # all three modes, ~10 s, a table
//! cargo run --release --example vma_reuse -- --json     # {"modes": [...]}
//! cargo run --release --example vma_reuse -- --help
//! cargo run --release --example vma_reuse -- --explain  # what each row of the table means
//! cargo test -p rcu-kit --example vma_reuse             # the model's tests (`tests.rs`)
//! ```
//!
//! Modes: `typesafe` (free straight back to a typesafe cache: no call_rcu per VMA), `call-rcu`
//! (the old kernel: a call_rcu per freed VMA), `kfree-rcu` (batched through `kfree_rcu_cache`).
//! The model lives in `model.rs`, `mm.rs` and `mapper.rs`, the command line and output in
//! `cli.rs`, the tests in `tests.rs` (built by `cargo test`: the example is declared with
//! `test = true`).
//!
//! The `peak RSS (process)` row (`peak_rss_bytes`) is the whole process's high-water mark during
//! the mode (reset when the mode starts, after the allocator's free memory left by an earlier
//! mode has been given back to the OS with `malloc_trim`). The VMA cache is a small part of it,
//! shown in the next row (`peak_cache_bytes`: its slabs, including those waiting for a grace
//! period, which a typesafe cache caps at 4 MiB): a few slabs, under 1 MiB, in every mode. Most
//! of it is the allocator's heap: thread arenas, and the VMA arrays retired with kfree_rcu and
//! waiting for a grace period — about 2 KiB each at 64 VMAs, tens of thousands per second. That
//! backlog follows the grace-period latency, so on a loaded machine (readers preempted inside
//! their sections, the batcher's worker starved) it varies from run to run and from mode to mode
//! (typesafe mode has no per-VMA callbacks, so fewer grace periods and larger batches). It is
//! bounded: each array is charged with its entry buffer (`kfree_rcu_raw_charged`) against a
//! kfree_rcu pending cap of 32 MiB (`RCU_KIT_KFREE_CAP` sets another); past it a mapper waits
//! for a grace period instead of growing memory. (In call-rcu mode the per-VMA callbacks are
//! not capped: `call_rcu` has no bound.)

mod cli;
mod mapper;
mod mm;
mod model;
#[cfg(all(test, not(rcu_loom)))]
mod tests;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use cli::{legend, parse_args, render_json, render_table, verdict, Progress};
use model::{configure_kfree, run_mode, Config, ModeReport};

fn main() -> ExitCode {
    ExitCode::from(app(std::env::args_os().skip(1)))
}

/// The whole program: runs with the arguments after the program name and returns the exit
/// status (0 pass, 1 fail, 2 usage error). The tests call it in a child process.
fn app(args: impl IntoIterator<Item = OsString>) -> u8 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            // `--help` on stdout (status 0); a usage error, its usage line and a hint to try
            // `--help` on stderr (status 2).
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    if opts.explain {
        print!("{}", legend());
        return 0;
    }
    configure_kfree();
    if opts.broken_skip_mm_check {
        eprintln!(
            "vma_reuse: --broken-skip-mm-check is a TEST-ONLY switch: the vm_mm revalidation is \
             skipped and wrong-VMA results are expected"
        );
    }
    let mut progress = Progress::new();
    let mut reports: Vec<ModeReport> = Vec::new();
    // With --rounds, the modes alternate (A B C A B C ...) so that load changes on the machine
    // hit every mode alike; each mode's rounds are summed.
    for round in 0..opts.rounds {
        for (i, &mode) in opts.modes.iter().enumerate() {
            let cfg = Config {
                mode,
                threads: opts.threads,
                mappers: opts.mappers,
                mms: opts.mms,
                vmas: opts.vmas,
                seconds: opts.seconds,
                map_rate: opts.map_rate,
                seed: opts.seed.wrapping_add(round),
                skip_mm_check: opts.broken_skip_mm_check,
            };
            let total = Duration::from_secs_f64(opts.seconds);
            let report = run_mode(&cfg, &mut |elapsed, live| {
                progress.tick(mode, elapsed, total, live)
            });
            progress.finish();
            match reports.get_mut(i) {
                Some(r) => r.merge(&report),
                None => reports.push(report),
            }
        }
    }
    let verdict = verdict(&reports);
    if opts.json {
        println!("{}", render_json(&reports));
        eprintln!("vma_reuse: {verdict}");
    } else {
        print!("{}", render_table(&opts, &reports));
        println!("{verdict}");
    }
    if reports.iter().any(ModeReport::failed) {
        1
    } else {
        0
    }
}
