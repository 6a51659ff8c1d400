//! The modules of slab-backend use each other in one direction (the order and the exceptions
//! are in the crate docs, "Implementation: modules"): a `crate::m` path to a module above that
//! is not a listed exception fails here.

#[test]
fn modules_depend_downwards_only() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = [
        "primitive",
        "lock",
        "sanitize",
        "sheaf",
        "page",
        "fork",
        "shrink",
        "cache",
        "typesafe",
        "stats",
        "kmalloc",
        "nolock",
        "test_hooks",
    ];
    // Registrations that lower code triggers and higher code implements (crate docs).
    let allowed = [
        ("page", "shrink"),
        ("fork", "shrink"),
        ("fork", "cache"),
        ("cache", "typesafe"),
        ("cache", "stats"),
    ];
    if let Err(e) = test_support::layering::check(&src, &order, &allowed) {
        panic!("module layering violated:\n{e}");
    }
}
