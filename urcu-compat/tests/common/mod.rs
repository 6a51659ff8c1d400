//! What the C ABI tests share: the freshly built shared object, a directory where it is found
//! under its SONAME, and running a case of a C test program.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The directory of this test binary's profile (`target/<profile>`, the parent of `deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Builds the library and returns the directory holding `liburcu.so`, once per test binary.
/// The test runs `cargo build` itself, in a target directory of its own (the outer build's may
/// still be locked) and without the outer build's RUSTFLAGS: a sanitizer build of the tests must
/// still give a plain shared object that a C program loads (an ASan-instrumented Rust `cdylib`
/// needs the ASan runtime in the executable). `cargo build` is incremental, so the object is
/// never stale after an edit.
pub(crate) fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = profile_dir().join("urcu-compat-cdylib");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "-p", "urcu-compat", "--lib"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .expect("run cargo build for the shared object");
        assert!(
            out.status.success(),
            "cargo build -p urcu-compat failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = target.join("debug");
        assert!(
            dir.join("liburcu.so").exists(),
            "{} has no liburcu.so after cargo build -p urcu-compat",
            dir.display()
        );
        dir
    })
}

/// A directory of its own (`name`, under the build's directory) where `liburcu.so` and its
/// SONAME `liburcu.so.8` link to the built library, so the system's liburcu is never picked up.
pub(crate) fn soname_dir(name: &str) -> PathBuf {
    let lib = lib_dir();
    let dir = lib.join(name);
    std::fs::create_dir_all(&dir).expect("library directory");
    for link in ["liburcu.so", "liburcu.so.8"] {
        let link = dir.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join("liburcu.so"), &link).expect("symlink");
    }
    dir
}

/// What a case of a C test program did: exit code (`None` when a signal ended it), stdout,
/// stderr.
pub(crate) type Ran = (Option<i32>, String, String);

/// Runs case `case` of the C test program `prog`, with a deadline (a hang fails the test).
pub(crate) fn run_case(prog: &Path, case: &str) -> Ran {
    let mut cmd = Command::new(prog);
    cmd.arg(case).env("RUST_BACKTRACE", "0");
    let f = test_support::run_with_deadline(&mut cmd, std::time::Duration::from_secs(60))
        .expect("spawn the C program");
    assert!(
        !f.timed_out(),
        "case {case} hung\nstdout:\n{}\nstderr:\n{}",
        f.stdout_text(),
        f.stderr_text()
    );
    (f.code(), f.stdout_text(), f.stderr_text())
}

/// Misuse aborts (SIGABRT: no exit code) with a message naming the call. `None` (the program
/// could not be built here) passes.
pub(crate) fn assert_aborted(case: &str, needle: &str, ran: Option<Ran>) {
    let Some((code, out, err)) = ran else {
        return;
    };
    assert_eq!(
        code, None,
        "case {case} should abort\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(!out.contains("not reached"), "stdout:\n{out}");
    assert!(
        err.contains(needle),
        "stderr of {case} lacks {needle:?}:\n{err}"
    );
}
