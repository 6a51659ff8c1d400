//! Double frees and foreign pointers are caught with a clear panic (debug builds by default, or
//! with `.debug(true)` in any build).
#![cfg(not(rcu_loom))]

use slab_backend::KmemCache;

#[test]
#[should_panic(expected = "double free")]
fn double_free_is_detected() {
    let c = KmemCache::<u64>::builder("df-double")
        .debug(true)
        .build()
        .unwrap();
    let p = c.alloc().unwrap();
    // SAFETY: deliberately wrong: the second free is the bug under test, caught before any harm.
    unsafe {
        c.free(p);
        c.free(p);
    }
}

#[test]
#[should_panic(expected = "not a slab object")]
fn heap_pointer_is_detected() {
    let c = KmemCache::<u64>::builder("df-heap")
        .debug(true)
        .build()
        .unwrap();
    let b = Box::new(0u64);
    let p = core::ptr::NonNull::from(&*b);
    // SAFETY: deliberately wrong; the debug check panics before touching the pointer.
    unsafe { c.free(p) };
}

#[test]
#[should_panic(expected = "belongs to another cache")]
fn pointer_of_another_cache_is_detected() {
    let a = KmemCache::<u64>::builder("df-a")
        .debug(true)
        .build()
        .unwrap();
    let b = KmemCache::<u64>::builder("df-b")
        .debug(true)
        .build()
        .unwrap();
    let p = a.alloc().unwrap();
    // SAFETY: deliberately wrong; the debug check panics before the free happens.
    unsafe { b.free(p) };
}

#[test]
#[should_panic(expected = "not the start of an object")]
fn interior_pointer_is_detected() {
    let c = KmemCache::<[u64; 4]>::builder("df-interior")
        .debug(true)
        .build()
        .unwrap();
    let p = c.alloc().unwrap();
    let inner = p.cast::<u64>().as_ptr().wrapping_add(1);
    // SAFETY: deliberately wrong; the debug check panics first.
    unsafe { c.free(core::ptr::NonNull::new(inner.cast()).unwrap()) };
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "kmalloc checks are on in debug builds only"
)]
#[should_panic(expected = "double free")]
fn kfree_double_free_is_detected() {
    let p = slab_backend::kmalloc(32).unwrap();
    // SAFETY: deliberately wrong; caught by the debug state of the object.
    unsafe {
        slab_backend::kfree(p);
        slab_backend::kfree(p);
    }
}
