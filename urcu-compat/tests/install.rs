//! `urcu-compat/install`: the library, the header and the pkg-config file land under a prefix,
//! and a C program built with `pkg-config --cflags --libs liburcu` runs on the installed library.
//! Skipped (with a message) when there is no C compiler or no pkg-config.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_support::run_with_deadline;

fn tool_missing(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_err()
}

#[test]
fn install_then_build_with_pkg_config() {
    if tool_missing("cc") || tool_missing("pkg-config") {
        eprintln!("no cc or pkg-config: install test skipped");
        return;
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let prefix = profile_dir.join("urcu-compat-prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    // The debug build, in the target directory the other C tests build in (tests/common).
    let out = Command::new(manifest.join("install"))
        .arg(&prefix)
        .arg("--debug")
        .env("CARGO_TARGET_DIR", profile_dir.join("urcu-compat-cdylib"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run urcu-compat/install");
    assert!(
        out.status.success(),
        "install failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "lib/liburcu.so.8",
        "lib/liburcu.so",
        "lib/liburcu.a",
        "include/urcu-compat.h",
        "lib/pkgconfig/liburcu.pc",
    ] {
        assert!(prefix.join(f).exists(), "install did not create {f}");
    }
    let pc = Command::new("pkg-config")
        .args(["--cflags", "--libs", "liburcu"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .env("PKG_CONFIG_LIBDIR", prefix.join("lib/pkgconfig"))
        .output()
        .expect("pkg-config");
    assert!(pc.status.success(), "pkg-config: {pc:?}");
    let flags = String::from_utf8(pc.stdout).expect("utf-8");
    assert!(
        flags.contains(&format!("-I{}", prefix.join("include").display()))
            && flags.contains("-lurcu"),
        "pkg-config flags: {flags}"
    );
    let prog = prefix.join("basic");
    let status = Command::new("cc")
        .args(["-std=gnu11", "-Wall", "-Werror", "-O1"])
        .arg(manifest.join("tests/c/abi.c"))
        .arg("-o")
        .arg(&prog)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-lpthread")
        .status()
        .expect("cc");
    assert!(status.success(), "compiling with pkg-config's flags failed");
    let run = run_with_deadline(Command::new(&prog).arg("basic"), Duration::from_secs(60))
        .expect("run the program");
    assert!(!run.timed_out(), "the program hung: {}", run.stderr_text());
    assert_eq!(run.code(), Some(0), "stderr:\n{}", run.stderr_text());
    assert!(
        run.stdout_text().contains("basic ok"),
        "stdout:\n{}",
        run.stdout_text()
    );
}
