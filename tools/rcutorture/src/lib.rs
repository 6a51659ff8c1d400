//! The rcutorture engine, the library of the `rcutorture` stress tool: `main.rs` only forwards
//! the arguments to [`main_with_args`]. The integration tests call it too, to run the
//! deliberately broken variant in a child process (the broken code is compiled only under
//! `cfg(test)` or the `torture-broken` feature, which the tests enable for their own build).
//!
//! # Implementation
//!
//! * **Elements and identities** (`elem`, `table`). Readers reach elements through published
//!   cells. Each element carries an identity whose *pipeline age* lives in a table that is never
//!   freed: 0 while published, 1 once removed, +1 for each grace period completed after that, and
//!   "dead" once the element is destroyed. A reader inside a read-side critical section must only
//!   ever see ages 0 and 1, whatever it does (nest, spin, sleep, stall).
//! * **Readers** (`reader`) check the element's memory and its identity at the start and the
//!   end of every section and keep a histogram of the final ages, as liburcu's `rcutorture.h`
//!   (`rcu_stress_count`) and the kernel's rcutorture ("Reader Pipe") do.
//! * **Writers** (`writer`) replace elements and retire the old ones through the mode under
//!   test; helpers drive extra grace periods and check `rcu_barrier` / `kvfree_rcu_barrier`.
//! * **Runs** (`run`) set up a mode, apply the page budget and `RLIMIT_AS` after a warm-up,
//!   print progress, then drain (unpublish, barriers) and check that every element allocated was
//!   freed and every identity ended: nothing lost.
//!
//! Exit status: 0 when every mode passed; 1 on any error, loss, panic or hang; 2 on usage errors.

pub(crate) mod cli;
mod ctx;
mod elem;
mod faults;
mod reader;
mod run;
mod table;
mod writer;

use std::sync::atomic::Ordering;
use std::sync::Once;
use std::time::Duration;

use cli::Mode;

/// Counts panics on every thread (ours and the kit's), keeping the default message.
fn install_panic_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            run::PANICS.fetch_add(1, Ordering::Relaxed);
            prev(info);
        }));
    });
}

/// Counts rcu-core stall reports and prints the first few.
fn stall_hook(r: &rcu_kit::rcu_core::StallReport) {
    if run::STALL_REPORTS.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("rcutorture: stall report (expected with --stall-ms): {r}");
    }
}

/// A fault means memory was released under someone who still used it (or a crash in the kit):
/// say so before dying, instead of a bare "Segmentation fault".
fn install_fault_reporter() {
    extern "C" fn on_fault(sig: libc::c_int) {
        let msg: &[u8] = if sig == libc::SIGSEGV {
            b"\nrcutorture: FATAL: SIGSEGV: memory was unmapped or freed while still in use \
              (a premature free under a reader?), or a crash in the kit\nRESULT pass=0 abort=1\n"
        } else {
            b"\nrcutorture: FATAL: SIGBUS: bad memory access\nRESULT pass=0 abort=1\n"
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is a static buffer.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(1);
        }
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; we then set a handler
    // of the right type (`fn(c_int)`, no SA_SIGINFO) and install it for two signals.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_fault as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSEGV, &sa, core::ptr::null_mut());
        libc::sigaction(libc::SIGBUS, &sa, core::ptr::null_mut());
    }
}

/// Runs rcutorture with `args` (without the program name); returns the exit status.
pub fn main_with_args(args: &[String]) -> i32 {
    let opts = match cli::parse(args) {
        Ok(o) => o,
        Err(e) => {
            // `--help` on stdout (status 0); a usage error, the usage line and a hint to try
            // `--help` on stderr (status 2).
            let _ = e.print();
            return e.exit_code();
        }
    };
    install_panic_counter();
    install_fault_reporter();
    rcu_kit::rcu_core::set_stall_hook(Some(stall_hook));
    if opts.stall_ms > 0 {
        rcu_kit::rcu_core::set_stall_timeout(Duration::from_millis((opts.stall_ms / 2).max(20)));
    }
    table::init(opts.pool);
    faults::arm_all(opts.fail_rate);
    let kcfg = rcu_kit::kfree_batch::config();
    eprintln!(
        "rcutorture: {} mode(s) x {:.1}s, {} readers, {} writers, seed {:#x}, barrier mode {:?}, \
         kfree cap {} drain {:?}",
        opts.modes.len(),
        opts.duration.as_secs_f64(),
        opts.readers,
        opts.writers,
        opts.seed,
        rcu_kit::rcu_core::barrier_mode(),
        kcfg.pending_cap,
        kcfg.drain_delay
    );
    let mut failed: Vec<Mode> = Vec::new();
    for &m in &opts.modes {
        if !run::run_mode(&opts, m).pass {
            failed.push(m);
        }
    }
    if opts.modes.len() > 1 {
        if failed.is_empty() {
            println!("rcutorture: all {} modes PASS", opts.modes.len());
        } else {
            let names: Vec<&str> = failed.iter().map(|m| m.name()).collect();
            println!("rcutorture: FAIL in {}", names.join(", "));
        }
    }
    i32::from(!failed.is_empty())
}
