//! Gives the shared object liburcu's SONAME, so that a program linked against liburcu runs on
//! this library through `LD_LIBRARY_PATH` (or a symlink named `liburcu.so.8`).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liburcu.so.8");
    println!("cargo:rerun-if-changed=build.rs");
}
