//! The modules of kfree-batch use each other in one direction (the order is in the crate docs,
//! "Implementation: modules"): a `crate::m` path to a module above fails here.

#[test]
fn modules_depend_downwards_only() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = [
        "primitive",
        "lock",
        "block",
        "slice",
        "park_slot",
        "config",
        "head",
        "krc",
        "chan",
        "batcher",
        "park",
        "local",
        "worker",
    ];
    if let Err(e) = test_support::layering::check(&src, &order, &[]) {
        panic!("module layering violated:\n{e}");
    }
}
