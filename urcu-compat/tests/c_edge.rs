//! Edge cases of the C ABI (`tests/c/edge.c`): a reader of another C thread holds back
//! callbacks and polled states, threads that read without registering and exit, callbacks that
//! queue callbacks or wait, `fork()` inside a read-side critical section and while callbacks
//! run, the `rcu_head` rule under AddressSanitizer, the flavour table's pointers, and misuse
//! that must abort with a message. Each case runs in a child process with a deadline. Skipped
//! (with a message) when no C compiler is found.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

mod common;

/// Compiles `tests/c/edge.c` once per variant (`extra` flags, e.g. AddressSanitizer); `None`
/// when there is no C compiler (or, for a sanitizer variant, the compiler cannot build it).
fn compile(variant: &str, extra: &[&str]) -> Option<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = common::soname_dir("urcu-compat-edge");
    let out = tmp.join(format!("edge-{variant}"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-O1", "-g"])
        .args(extra)
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/edge.c"))
        .arg("-o")
        .arg(&out)
        .arg(format!("-L{}", tmp.display()))
        .arg(format!("-Wl,-rpath,{}", tmp.display()))
        .arg("-lurcu")
        .arg("-lpthread")
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) if extra.is_empty() => panic!("compiling tests/c/edge.c failed: {s}"),
        Ok(s) => {
            eprintln!("compiling tests/c/edge.c with {extra:?} failed ({s}): variant skipped");
            None
        }
        Err(e) => {
            eprintln!("no C compiler ({cc}: {e}): C ABI tests skipped");
            None
        }
    }
}

fn plain() -> Option<&'static PathBuf> {
    static P: OnceLock<Option<PathBuf>> = OnceLock::new();
    P.get_or_init(|| compile("plain", &[])).as_ref()
}

fn asan() -> Option<&'static PathBuf> {
    static P: OnceLock<Option<PathBuf>> = OnceLock::new();
    P.get_or_init(|| compile("asan", &["-fsanitize=address", "-fno-omit-frame-pointer"]))
        .as_ref()
}

/// Runs `case` of `prog`; returns (exit code, stdout, stderr).
fn run(prog: Option<&PathBuf>, case: &str) -> Option<common::Ran> {
    prog.map(|prog| common::run_case(prog, case))
}

fn assert_ok(prog: Option<&PathBuf>, case: &str) {
    let Some((code, out, err)) = run(prog, case) else {
        return;
    };
    assert_eq!(code, Some(0), "case {case}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("{case} ok")), "stdout:\n{out}");
}

/// Misuse aborts (SIGABRT: no exit code) with a message naming the call.
fn assert_aborts(case: &str, needle: &str) {
    common::assert_aborted(case, needle, run(plain(), case));
}

#[test]
fn a_reader_of_another_thread_holds_back_callbacks_and_polled_states() {
    assert_ok(plain(), "cross_reader");
}

#[test]
fn threads_that_read_without_registering_exit_cleanly() {
    assert_ok(plain(), "implicit_exit");
}

#[test]
fn a_callback_may_queue_the_next_callback() {
    assert_ok(plain(), "call_in_cb");
    assert_ok(asan(), "call_in_cb");
}

#[test]
fn fork_inside_a_read_side_critical_section() {
    assert_ok(plain(), "fork_in_reader");
}

#[test]
fn callbacks_never_touch_the_head_after_freeing_it() {
    assert_ok(plain(), "head_reuse");
    assert_ok(asan(), "head_reuse");
}

#[test]
fn callbacks_of_exited_threads_run() {
    assert_ok(plain(), "exit_pending");
    assert_ok(asan(), "exit_pending");
}

#[test]
fn defer_rcu_never_runs_in_the_callers_section() {
    assert_ok(plain(), "defer_in_reader");
}

#[test]
fn the_flavour_table_points_at_the_exported_functions() {
    assert_ok(plain(), "flavor_ptrs");
}

#[test]
fn unregister_inside_a_section_aborts_with_a_message() {
    assert_aborts(
        "unregister_in_reader",
        "urcu_memb_unregister_thread() called inside an RCU read-side critical section",
    );
}

#[test]
fn defer_barrier_from_a_callback_aborts_with_a_message() {
    assert_aborts(
        "defer_barrier_in_cb",
        "rcu_barrier() called from a call_rcu callback",
    );
}

#[test]
fn barrier_inside_a_section_aborts_with_a_message() {
    assert_aborts(
        "barrier_in_reader",
        "urcu_memb_barrier() called inside an RCU read-side critical section",
    );
}

#[test]
fn fork_between_the_hooks_while_callbacks_run_loses_none() {
    // Several runs: the fork must land while an invoker is between two callbacks.
    for _ in 0..10 {
        assert_ok(plain(), "fork_running");
    }
}

#[test]
fn the_after_fork_hooks_without_before_fork_are_harmless() {
    assert_ok(plain(), "unmatched_hooks");
}

#[test]
fn readers_in_pthread_key_destructors_do_not_leak_records() {
    assert_ok(plain(), "key_dtor_reader");
    assert_ok(plain(), "key_dtor_leak");
}

#[test]
fn polled_states_wait_for_the_callers_own_section() {
    assert_ok(plain(), "poll_own_reader");
}

#[test]
fn readers_never_see_a_freed_node() {
    assert_ok(plain(), "early_free");
    assert_ok(asan(), "early_free");
}

#[test]
fn fork_while_another_thread_reads() {
    assert_ok(plain(), "fork_other_reader");
}

#[test]
fn a_signal_handler_reading_during_the_first_registration_never_hangs() {
    // The handler may interrupt the thread's first registration (and the library's
    // initialisation): then it aborts with a message; otherwise the case succeeds. Many
    // processes, since the window is the first use of each.
    for _ in 0..20 {
        let Some((code, out, err)) = run(plain(), "signal_at_first_use") else {
            return;
        };
        if code == Some(0) {
            assert!(out.contains("signal_at_first_use ok"), "stdout:\n{out}");
        } else {
            assert_eq!(code, None, "stdout:\n{out}\nstderr:\n{err}");
            assert!(
                err.contains("a signal handler used RCU while its thread was being registered"),
                "stderr:\n{err}"
            );
        }
    }
}

#[test]
fn a_signal_handler_reading_during_the_first_call_rcu_never_hangs() {
    // The thread's first call_rcu() initialises the engine; a handler that reads then aborts
    // with a message, else the case succeeds.
    for _ in 0..20 {
        let Some((code, out, err)) = run(plain(), "signal_at_first_call_rcu") else {
            return;
        };
        if code == Some(0) {
            assert!(
                out.contains("signal_at_first_call_rcu ok"),
                "stdout:\n{out}"
            );
        } else {
            assert_eq!(code, None, "stdout:\n{out}\nstderr:\n{err}");
            assert!(
                err.contains("interrupted this thread's initialisation of the engine"),
                "stderr:\n{err}"
            );
        }
    }
}

#[test]
fn a_callback_may_read_and_wait_for_grace_periods() {
    assert_ok(plain(), "sync_in_cb");
}
