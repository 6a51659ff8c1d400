//! The modules of rcu-kit use each other in one direction: a `crate::m` path to a module above
//! fails here.

#[test]
fn modules_depend_downwards_only() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = [
        "primitive",
        "writer_lock",
        "ptr",
        "link",
        "cell",
        "cell_ext",
        "list",
        "typesafe",
        "map_typesafe",
        "map",
    ];
    if let Err(e) = test_support::layering::check(&src, &order, &[]) {
        panic!("module layering violated:\n{e}");
    }
}
