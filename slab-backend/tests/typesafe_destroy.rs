//! Destroying a typesafe cache where `rcu_barrier` may not wait (inside a read-side critical
//! section, or on an RCU callback thread) never frees the cache under its own RCU-deferred slab
//! discards: `destroy()` panics before touching the cache (which stays registered and intact),
//! and `Drop` hands the destroy to a thread that may wait (or, with no thread to be had, leaks
//! the cache with a report). Each case runs in a child process, since the failure guarded
//! against is a use after free on the callback thread (a crash), made reliable by overwriting
//! freed heap memory with junk.
#![cfg(not(rcu_loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slab_backend::{all_cache_stats, KmemCache};
use test_support::{child_case, run_child, stderr};

/// `T`s dropped (slab discards run `drop_obj`, a function pointer read from the cache).
static DROPS: AtomicUsize = AtomicUsize::new(0);

struct Obj {
    magic: u64,
    _payload: [u64; 3],
}

impl Drop for Obj {
    fn drop(&mut self) {
        assert_eq!(
            self.magic, 0x5eed_ca11,
            "dropping something that is not an Obj"
        );
        DROPS.fetch_add(1, Ordering::Relaxed);
    }
}

fn ctor() -> Obj {
    Obj {
        magic: 0x5eed_ca11,
        _payload: [0; 3],
    }
}

/// A typesafe cache with three slabs of objects, all freed again (held in the thread cache,
/// sheaves and slab lists: destroy detaches and discards every slab through `call_rcu`). Returns
/// the cache and how many objects its slabs hold.
fn cache_with_free_slabs(name: &str) -> (KmemCache<Obj>, usize) {
    let cache = KmemCache::<Obj>::builder(name)
        .typesafe_by_rcu(true)
        .ctor(ctor)
        .build()
        .unwrap();
    let per_slab = cache.stats().objects_per_slab;
    let ps: Vec<_> = (0..3 * per_slab).map(|_| cache.alloc().unwrap()).collect();
    // SAFETY: live objects of `cache`, each freed once, still valid `Obj`s.
    unsafe { cache.free_bulk(&ps) };
    let objects = cache.stats().total_objects;
    assert!(objects >= 3 * per_slab);
    (cache, objects)
}

/// Reuses freed heap memory of every small size with a junk pattern, so that a freed cache read
/// by a late slab discard yields a wild function pointer (a crash) rather than stale values.
fn overwrite_freed_memory() -> Vec<Vec<u8>> {
    let mut keep = Vec::new();
    for _ in 0..8 {
        for size in (16..=2048).step_by(8) {
            keep.push(vec![0x41u8; size]);
        }
    }
    keep
}

fn registered(name: &str) -> bool {
    all_cache_stats().iter().any(|s| s.name == name)
}

/// Waits (bounded) until the cache `name` has left the registry, i.e. its destroy finished.
fn wait_destroyed(name: &str) {
    let start = Instant::now();
    while registered(name) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "cache {name} was never destroyed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Keeps the allocator and the RCU engine busy after the destroy, with junk in freed memory.
fn keep_allocating() {
    let other = KmemCache::<[u64; 8]>::builder("tsd-other").build().unwrap();
    let start = Instant::now();
    for _ in 0..50 {
        let _junk = overwrite_freed_memory();
        let ps: Vec<_> = (0..200).map(|_| other.alloc().unwrap()).collect();
        // SAFETY: live objects of `other`, each freed once.
        unsafe { other.free_bulk(&ps) };
        rcu_core::rcu_barrier();
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
}

fn case_drop_in_reader() {
    let (cache, objects) = cache_with_free_slabs("tsd-reader");
    let g = rcu_core::rcu_read_lock();
    let r = catch_unwind(AssertUnwindSafe(move || drop(cache)));
    // On the thread that dropped the cache (glibc reuses a thread's own freed chunks first).
    let _junk = overwrite_freed_memory();
    drop(g);
    rcu_core::rcu_barrier();
    wait_destroyed("tsd-reader");
    rcu_core::rcu_barrier();
    keep_allocating();
    assert!(r.is_ok(), "dropping a cache inside a reader panicked");
    assert_eq!(
        DROPS.load(Ordering::Relaxed),
        objects,
        "every T dropped once"
    );
    println!("case done");
}

fn case_drop_in_callback() {
    let (cache, objects) = cache_with_free_slabs("tsd-callback");
    rcu_core::call_rcu(move || {
        let r = catch_unwind(AssertUnwindSafe(move || drop(cache)));
        // Junk on the callback thread, which dropped the cache, kept until the process ends.
        std::mem::forget(overwrite_freed_memory());
        if r.is_err() {
            eprintln!("dropping the cache in a callback panicked");
        }
    });
    rcu_core::rcu_barrier();
    wait_destroyed("tsd-callback");
    rcu_core::rcu_barrier();
    keep_allocating();
    assert_eq!(
        DROPS.load(Ordering::Relaxed),
        objects,
        "every T dropped once"
    );
    println!("case done");
}

fn case_destroy_in_reader() {
    let (cache, objects) = cache_with_free_slabs("tsd-destroy");
    let g = rcu_core::rcu_read_lock();
    let r = catch_unwind(AssertUnwindSafe(move || cache.destroy()));
    let _junk = overwrite_freed_memory();
    drop(g);
    let msg = match r {
        Ok(res) => panic!("destroy inside a reader returned {res:?}"),
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    println!("destroy panicked: {msg}");
    rcu_core::rcu_barrier();
    keep_allocating();
    assert!(
        msg.contains("tsd-destroy") && msg.contains("read-side critical section"),
        "the panic names the cache and the misuse: {msg}"
    );
    // The cache was left as it was: registered, nothing discarded or dropped.
    assert!(registered("tsd-destroy"), "the cache stays registered");
    assert_eq!(DROPS.load(Ordering::Relaxed), 0);
    let _ = objects;
    println!("case done");
}

fn case_drop_while_unwinding_in_reader() {
    let (cache, objects) = cache_with_free_slabs("tsd-unwind");
    let r = catch_unwind(AssertUnwindSafe(move || {
        let _g = rcu_core::rcu_read_lock();
        // Declared after the guard, so dropped first by the unwind: inside the reader.
        let _cache = cache;
        panic!("a user panic inside a reader");
    }));
    assert!(r.is_err());
    rcu_core::rcu_barrier();
    wait_destroyed("tsd-unwind");
    rcu_core::rcu_barrier();
    keep_allocating();
    assert_eq!(
        DROPS.load(Ordering::Relaxed),
        objects,
        "every T dropped once"
    );
    println!("case done");
}

fn case_destroy_in_callback() {
    let (cache, _objects) = cache_with_free_slabs("tsd-destroy-cb");
    let (tx, rx) = std::sync::mpsc::channel();
    rcu_core::call_rcu(move || {
        let r = catch_unwind(AssertUnwindSafe(move || cache.destroy()));
        std::mem::forget(overwrite_freed_memory());
        let msg = match r {
            Ok(res) => format!("returned {res:?}"),
            Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
        };
        tx.send(msg).unwrap();
    });
    rcu_core::rcu_barrier();
    let msg = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    rcu_core::rcu_barrier();
    keep_allocating();
    assert!(
        msg.contains("tsd-destroy-cb") && msg.contains("callback thread"),
        "the panic names the cache and the misuse: {msg}"
    );
    assert!(registered("tsd-destroy-cb"), "the cache stays registered");
    assert_eq!(DROPS.load(Ordering::Relaxed), 0);
    println!("case done");
}

fn case_drop_in_reader_without_threads() {
    let (cache, _objects) = cache_with_free_slabs("tsd-nothread");
    // No room for another thread's stack: the destroy cannot be handed to a thread.
    test_support::set_rlimit_as(test_support::vm_size() + (256 << 10)).unwrap();
    let g = rcu_core::rcu_read_lock();
    drop(cache);
    drop(g);
    assert!(
        registered("tsd-nothread"),
        "the cache stays registered (leaked)"
    );
    assert_eq!(DROPS.load(Ordering::Relaxed), 0);
    println!("case done");
}

#[test]
fn destroy_child() {
    match child_case().as_deref() {
        Some("drop_in_reader") => case_drop_in_reader(),
        Some("drop_in_callback") => case_drop_in_callback(),
        Some("destroy_in_reader") => case_destroy_in_reader(),
        Some("drop_while_unwinding_in_reader") => case_drop_while_unwinding_in_reader(),
        Some("destroy_in_callback") => case_destroy_in_callback(),
        Some("drop_in_reader_without_threads") => case_drop_in_reader_without_threads(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn expect_ok(case: &str) -> String {
    // No backtrace capture: its allocations would take the freed chunks before the junk does.
    let out = run_child(
        "destroy_child",
        case,
        &[("RUST_BACKTRACE", "0")],
        Duration::from_secs(60),
    );
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        out.status.success() && all.contains("case done"),
        "case {case} failed ({}):\n{all}",
        out.status
    );
    all
}

#[test]
fn dropping_a_typesafe_cache_inside_a_reader_does_not_free_it_under_its_discards() {
    expect_ok("drop_in_reader");
}

#[test]
fn dropping_a_typesafe_cache_in_a_call_rcu_callback_does_not_free_it_under_its_discards() {
    expect_ok("drop_in_callback");
}

#[test]
fn destroy_inside_a_reader_panics_before_touching_the_cache() {
    expect_ok("destroy_in_reader");
}

#[test]
fn dropping_a_typesafe_cache_while_unwinding_inside_a_reader_does_not_abort() {
    expect_ok("drop_while_unwinding_in_reader");
}

#[test]
fn destroy_in_a_call_rcu_callback_panics_before_touching_the_cache() {
    expect_ok("destroy_in_callback");
}

#[test]
fn dropping_a_typesafe_cache_inside_a_reader_with_no_thread_to_spare_leaks_it_with_a_report() {
    let out = expect_ok("drop_in_reader_without_threads");
    assert!(
        out.contains("slab cache tsd-nothread: dropped inside an RCU read-side critical section")
            && out.contains("the cache is leaked"),
        "{out}"
    );
}
