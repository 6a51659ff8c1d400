//! The library through its C ABI: a C program (`tests/c/abi.c`) is compiled with the system C
//! compiler against the built `liburcu.so` and run in a child process with a deadline; the test
//! checks its exit status and output from outside. Skipped (with a message) when no C compiler is
//! found.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

mod common;

/// Compiles the C program once; `None` when there is no C compiler.
fn program() -> Option<&'static PathBuf> {
    static PROG: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROG.get_or_init(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = common::soname_dir("urcu-compat-abi");
        let out = dir.join("abi");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(&cc)
            .arg("-std=gnu11")
            .arg("-Wall")
            .arg("-Werror")
            .arg("-O1")
            .arg("-I")
            .arg(manifest.join("include"))
            .arg(manifest.join("tests/c/abi.c"))
            .arg("-o")
            .arg(&out)
            .arg(format!("-L{}", dir.display()))
            .arg(format!("-Wl,-rpath,{}", dir.display()))
            .arg("-lurcu")
            .arg("-lpthread")
            .status();
        match status {
            Ok(s) if s.success() => Some(out),
            Ok(s) => panic!("compiling tests/c/abi.c failed: {s}"),
            Err(e) => {
                eprintln!("no C compiler ({cc}: {e}): C ABI tests skipped");
                None
            }
        }
    })
    .as_ref()
}

/// Runs the C program's `case`; returns (exit code, stdout, stderr).
fn run(case: &str) -> Option<common::Ran> {
    program().map(|prog| common::run_case(prog, case))
}

#[test]
fn register_read_call_rcu_synchronize_barrier_poll_defer() {
    let Some((code, out, err)) = run("basic") else {
        return;
    };
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("basic ok freed=320 deferred=5"),
        "stdout:\n{out}"
    );
}

#[test]
fn the_flavour_table_has_liburcus_layout() {
    let Some((code, out, err)) = run("flavor") else {
        return;
    };
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("flavor ok"), "stdout:\n{out}");
}

#[test]
fn fork_hooks_and_callbacks_across_fork() {
    let Some((code, out, err)) = run("fork") else {
        return;
    };
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("child ok freed=55"), "stdout:\n{out}");
    assert!(out.contains("parent ok freed=50"), "stdout:\n{out}");
}

/// Misuse aborts (SIGABRT: no exit code) with a message naming the call.
fn assert_aborts(case: &str, needle: &str) {
    common::assert_aborted(case, needle, run(case));
}

#[test]
fn synchronize_inside_reader_aborts_with_a_message() {
    assert_aborts(
        "sync_in_reader",
        "urcu_memb_synchronize_rcu() called inside an RCU read-side critical section",
    );
}

#[test]
fn unlock_without_lock_aborts_with_a_message() {
    assert_aborts(
        "unlock_without_lock",
        "urcu_memb_read_unlock() called without a matching urcu_memb_read_lock()",
    );
}

#[test]
fn rust_panic_in_a_callback_does_not_unwind_into_c() {
    assert_aborts(
        "barrier_in_callback",
        "fatal error in urcu_memb_barrier(): rcu_barrier() called from a call_rcu callback",
    );
}
