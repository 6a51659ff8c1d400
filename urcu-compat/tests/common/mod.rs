//! What the C ABI tests share: the freshly built shared object, and a directory where it is
//! found under its SONAME.

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
