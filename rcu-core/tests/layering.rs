//! The modules of rcu-core use each other in one direction (the order is in `global/mod.rs`'s
//! "Modules" and the crate's layering below): a `crate::m` path to a module above fails here.

#[test]
fn modules_depend_downwards_only() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = [
        "primitive",
        "util",
        "seq",
        "sys",
        "lowmem",
        "fault",
        "stall",
        "reader",
        "gp",
        "callback",
        "background",
        "global",
        "cell",
    ];
    if let Err(e) = test_support::layering::check(&src, &order, &[]) {
        panic!("module layering violated:\n{e}");
    }
}
