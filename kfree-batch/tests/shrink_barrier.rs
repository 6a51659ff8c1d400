//! The batcher's slab shrinker (`shrink_scan`, run by `slab_backend::shrink_all` and by the page
//! layer's reclaim on any allocating thread, inside readers and destructors too) must run no
//! destructor itself: one calling `kvfree_rcu_barrier` would wait for the collection lock its
//! own thread holds, one inside the caller's read-side critical section cannot wait for a grace
//! period. Destructors run in the worker's pass instead, where `kvfree_rcu_barrier` panics
//! ("would wait forever for the free that runs it"). Child processes with a deadline (a hang is
//! the failure).
#![cfg(not(rcu_loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier, Config};
use test_support::{child_case, run_child, stderr};

static CALLED: AtomicBool = AtomicBool::new(false);
static DROPS: AtomicUsize = AtomicUsize::new(0);
static OUTCOME: Mutex<String> = Mutex::new(String::new());

struct X(#[allow(dead_code)] [u64; 4]);
impl Drop for X {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        if CALLED.swap(true, Ordering::SeqCst) {
            return;
        }
        let who = std::thread::current().name().unwrap_or("?").to_string();
        eprintln!("first drop on thread {who}; calling kvfree_rcu_barrier");
        let r = catch_unwind(AssertUnwindSafe(kvfree_rcu_barrier));
        *OUTCOME.lock().unwrap() = format!(
            "{who}: {}",
            match &r {
                Ok(()) => "returned".to_string(),
                Err(e) => e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
            }
        );
    }
}

fn case_barrier_in_shrink_scan() {
    // Ready blocks wait for their producer (or the drain delay) before the worker frees them.
    kfree_batch::configure(Config {
        drain_delay: Duration::from_secs(60),
        ..Config::default()
    })
    .unwrap();
    for _ in 0..600 {
        kfree_rcu(Box::new(X([0; 4])));
    }
    rcu_core::synchronize_rcu();
    rcu_core::synchronize_rcu();
    std::thread::sleep(Duration::from_millis(200));
    rcu_core::synchronize_rcu();
    eprintln!("drops before shrink: {}", DROPS.load(Ordering::SeqCst));
    std::thread::Builder::new()
        .name("shrinker".into())
        .spawn(slab_backend::shrink_all)
        .unwrap()
        .join()
        .unwrap();
    // The shrinker asked the worker for a pass: wait (bounded) for its first destructor to have
    // tried the barrier.
    let start = Instant::now();
    while OUTCOME.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "drops after shrink: {}; outcome: {}",
        DROPS.load(Ordering::SeqCst),
        OUTCOME.lock().unwrap()
    );
    println!("case done");
}

static IN_READER: AtomicUsize = AtomicUsize::new(0);

/// Records whether its destructor ran inside a read-side critical section.
struct Y(#[allow(dead_code)] [u64; 4]);
impl Drop for Y {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        if rcu_core::rcu_read_lock_held() {
            IN_READER.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn case_shrink_in_reader() {
    kfree_batch::configure(Config {
        drain_delay: Duration::from_secs(60),
        ..Config::default()
    })
    .unwrap();
    for _ in 0..600 {
        kfree_rcu(Box::new(Y([0; 4])));
    }
    rcu_core::synchronize_rcu();
    rcu_core::synchronize_rcu();
    std::thread::sleep(Duration::from_millis(200));
    rcu_core::synchronize_rcu();
    let before = DROPS.load(Ordering::SeqCst);
    {
        // A reclaim pass inside a reader (as the page layer runs one on an allocation there).
        let _g = rcu_core::rcu_read_lock();
        slab_backend::shrink_all();
    }
    eprintln!(
        "drops before shrink: {before}, after: {}, inside the reader: {}",
        DROPS.load(Ordering::SeqCst),
        IN_READER.load(Ordering::SeqCst)
    );
    assert_eq!(
        IN_READER.load(Ordering::SeqCst),
        0,
        "a kfree_rcu destructor ran inside the caller's read-side critical section"
    );
    println!("case done");
}

/// Waits for a grace period in its destructor (legal where the batcher runs destructors: its
/// worker, or a producer outside any reader).
struct Z(#[allow(dead_code)] [u64; 4]);
impl Drop for Z {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        rcu_core::synchronize_rcu();
    }
}

fn case_waiting_destructor_in_reader_shrink() {
    kfree_batch::configure(Config {
        drain_delay: Duration::from_secs(60),
        ..Config::default()
    })
    .unwrap();
    for _ in 0..600 {
        kfree_rcu(Box::new(Z([0; 4])));
    }
    rcu_core::synchronize_rcu();
    rcu_core::synchronize_rcu();
    std::thread::sleep(Duration::from_millis(200));
    rcu_core::synchronize_rcu();
    let r = {
        let _g = rcu_core::rcu_read_lock();
        catch_unwind(slab_backend::shrink_all)
    };
    eprintln!("shrink_all inside a reader panicked: {}", r.is_err());
    // Every retired object is freed by the barrier.
    kvfree_rcu_barrier();
    assert_eq!(
        DROPS.load(Ordering::SeqCst),
        600,
        "kvfree_rcu_barrier returned with retired objects never freed (their destructor ran \
         inside the reclaiming caller's read-side critical section, where it cannot wait)"
    );
    println!("case done");
}

#[test]
fn shrink_barrier_child() {
    match child_case().as_deref() {
        Some("waiting_destructor_in_reader_shrink") => case_waiting_destructor_in_reader_shrink(),
        Some("shrink_in_reader") => case_shrink_in_reader(),
        Some("barrier_in_shrink_scan") => case_barrier_in_shrink_scan(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

/// A reclaim pass over ready objects whose destructor calls `kvfree_rcu_barrier`: the shrinker
/// runs none of them (so never waits for its own collection lock); the worker's pass does, where
/// the barrier panics, never hangs.
#[test]
fn kvfree_rcu_barrier_in_a_destructor_after_the_shrinker_panics() {
    let out = run_child(
        "shrink_barrier_child",
        "barrier_in_shrink_scan",
        &[],
        Duration::from_secs(30),
    );
    let err = stderr(&out);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("case done"),
        "child failed ({}):\n{err}",
        out.status
    );
    assert!(
        !err.contains("first drop on thread shrinker"),
        "the shrinker ran a destructor:\n{err}"
    );
    assert!(
        err.contains("outcome: rcu-kfree: ")
            && err.contains("would wait forever for the free that runs it"),
        "{err}"
    );
}

/// A reclaim pass run inside a read-side critical section must not run `kfree_rcu` destructors
/// there (the batcher's own producer paths never reclaim inside a reader: a destructor may wait
/// for a grace period, or panic doing so, with the collection lock held).
#[test]
fn shrinker_inside_a_reader_runs_no_destructor_there() {
    let out = run_child(
        "shrink_barrier_child",
        "shrink_in_reader",
        &[],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("case done"),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}

/// A reclaim pass inside a reader, over objects whose destructor waits for a grace period: the
/// batcher must keep working afterwards (its barrier returns).
#[test]
fn shrinker_inside_a_reader_leaves_the_batcher_working() {
    let out = run_child(
        "shrink_barrier_child",
        "waiting_destructor_in_reader_shrink",
        &[],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("case done"),
        "child failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
}
