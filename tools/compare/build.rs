//! Build script of the `compare` tool.
//!
//! Its only job: when liburcu (the `memb` flavour) is installed, compile the C shim
//! `shim/urcu_shim.c` used by the `compare` binary and set `--cfg rcu_have_liburcu`.
//! When liburcu is missing (or `RCU_KIT_NO_LIBURCU=1`), it prints a warning and emits nothing, so
//! the package still builds everywhere; the comparison then simply has no liburcu rows.
//!
//! The shim is compiled with `-D_LGPL_SOURCE`, so liburcu's read side is inlined into the C loops
//! (the usual C usage, and the reference harness's `inline` build), and with `-O2`. Only the
//! `compare` binary links it: its `extern "C"` block names the static library `urcu_shim` and the
//! liburcu shared libraries, so no other target (the benches) depends on liburcu, and no
//! other package of the workspace runs this script.

use std::path::Path;
use std::process::Command;

const SHIM: &str = "shim/urcu_shim.c";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-env-changed=RCU_KIT_NO_LIBURCU");
    println!("cargo::rustc-check-cfg=cfg(rcu_have_liburcu)");

    if std::env::var_os("RCU_KIT_NO_LIBURCU").is_some_and(|v| !v.is_empty() && v != "0") {
        println!(
            "cargo:warning=RCU_KIT_NO_LIBURCU is set: the comparison is built without liburcu"
        );
        return;
    }
    let Some(include_dir) = find_liburcu() else {
        println!(
            "cargo:warning=liburcu (memb flavour) not found: the comparison is built without \
             liburcu rows (install liburcu-dev to get them)"
        );
        return;
    };

    let mut build = cc::Build::new();
    build
        .file(SHIM)
        .define("_LGPL_SOURCE", None)
        .define("_GNU_SOURCE", None)
        .opt_level(2)
        // cc builds position-independent code, whose default TLS model for liburcu's extern
        // `__thread` reader record is global-dynamic: a `__tls_get_addr` call on every
        // read_lock/unlock (~10 ns instead of ~1.4 ns). The shim is only ever linked into an
        // executable that loads liburcu at startup, so the initial-exec model (what a plain gcc
        // build of an executable uses, as in the reference harness) is valid.
        .flag_if_supported("-ftls-model=initial-exec")
        .warnings(true)
        // Only the compare binary links the shim (through `#[link]` on its extern block);
        // letting cc emit `rustc-link-lib` would bundle it into every target of the package.
        .cargo_metadata(false);
    if let Some(dir) = include_dir {
        build.include(dir);
    }
    if let Err(e) = build.try_compile("urcu_shim") {
        println!(
            "cargo:warning=could not compile {SHIM} ({e}): the comparison is built without liburcu"
        );
        return;
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    println!("cargo:rustc-link-search=native={out_dir}");
    println!("cargo:rustc-cfg=rcu_have_liburcu");
}

/// Returns `Some(extra include dir)` when the liburcu-memb headers and library are installed.
fn find_liburcu() -> Option<Option<String>> {
    // pkg-config knows the multiarch include directory (e.g. /usr/include/x86_64-linux-gnu).
    let pkg = Command::new("pkg-config")
        .args(["--cflags-only-I", "liburcu-memb"])
        .output();
    if let Ok(out) = pkg {
        if out.status.success() {
            let flags = String::from_utf8_lossy(&out.stdout);
            let dir = flags
                .split_whitespace()
                .find_map(|f| f.strip_prefix("-I"))
                .map(str::to_owned);
            return Some(dir);
        }
    }
    // No pkg-config: look for the header where Debian-like systems and source installs put it.
    let candidates = [
        "/usr/include",
        "/usr/local/include",
        "/usr/include/x86_64-linux-gnu",
        "/usr/include/aarch64-linux-gnu",
    ];
    candidates
        .iter()
        .find(|d| Path::new(d).join("urcu/urcu-memb.h").exists())
        .map(|d| Some((*d).to_owned()))
}
