//! Injected allocation failures in `call_rcu` and `rcu_barrier`: `call_rcu` falls back to
//! waiting for a grace period and running the callback itself (never early), `rcu_barrier`
//! retries, and every callback runs. Each case runs in a child process (fault points are
//! process-wide).
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rcu_core::fault::{self, FaultAttr, Point};
use rcu_core::{call_rcu, rcu_barrier, rcu_read_lock, stats};
use test_support::{child_case, run_child, stderr};

static RAN: AtomicU64 = AtomicU64::new(0);

/// A callback too large to be stored inline (boxed: `call_rcu`'s allocation).
fn big_callback() -> impl FnOnce() + Send + 'static {
    let payload = [7u64; 8];
    move || {
        assert_eq!(payload[7], 7);
        RAN.fetch_add(1, Ordering::SeqCst);
    }
}

fn case_call_rcu() {
    call_rcu(|| {}); // the lists and the worker exist
    rcu_barrier();
    let before = stats();
    fault::arm(Point::CallRcu, FaultAttr::always(5));
    // A reader that began before the first call_rcu: no callback may run before it ends.
    let (started, go) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let g = rcu_read_lock();
        started.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let seen = RAN.load(Ordering::SeqCst);
        drop(g);
        seen
    });
    go.recv().unwrap();
    for _ in 0..20 {
        call_rcu(big_callback());
    }
    assert_eq!(
        reader.join().unwrap(),
        0,
        "a callback ran inside an older reader"
    );
    rcu_barrier();
    let after = stats();
    println!("call_rcu: {before:?} -> {after:?}");
    assert_eq!(RAN.load(Ordering::SeqCst), 20, "callbacks lost");
    assert_eq!(fault::injected(Point::CallRcu), 5);
    assert_eq!(
        after.callbacks_inline_fallback - before.callbacks_inline_fallback,
        5,
        "the no-memory fallback did not run once per injected failure"
    );
}

fn case_barrier() {
    // A reader holds the grace period for 300 ms, so the callbacks stay pending while the
    // barrier's first tries fail (each try on a list with nothing pending would skip the point).
    let (started, go) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        started.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    go.recv().unwrap();
    for _ in 0..50 {
        call_rcu(big_callback());
    }
    fault::arm(Point::Barrier, FaultAttr::always(3));
    rcu_barrier();
    reader.join().unwrap();
    println!("barrier: injected {}", fault::injected(Point::Barrier));
    assert_eq!(RAN.load(Ordering::SeqCst), 50, "rcu_barrier returned early");
    assert_eq!(
        fault::injected(Point::Barrier),
        3,
        "the barrier's allocation never failed"
    );
}

static STOP: AtomicBool = AtomicBool::new(false);

/// A callback that queues itself again until `STOP` (a common pattern: a periodic RCU job).
fn repost() {
    if !STOP.load(Ordering::SeqCst) {
        call_rcu(repost);
    }
}

fn case_barrier_always() {
    // Every barrier allocation fails, for ever, while a self-reposting callback keeps one list
    // busy: the barrier must still return once the callbacks queued before it have run (the
    // kernel's rcu_barrier does not wait for callbacks queued after it).
    call_rcu(repost);
    let (started, go) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        started.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    });
    go.recv().unwrap();
    for _ in 0..20 {
        call_rcu(big_callback());
    }
    fault::arm(Point::Barrier, FaultAttr::always(-1));
    let (done, returned) = mpsc::channel();
    std::thread::spawn(move || {
        rcu_barrier();
        done.send(RAN.load(Ordering::SeqCst)).unwrap();
    });
    let ran = returned.recv_timeout(Duration::from_secs(10));
    STOP.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let ran = ran.expect(
        "rcu_barrier did not return within 10 s with every barrier allocation failing and a \
         self-reposting callback queued",
    );
    assert_eq!(
        ran, 20,
        "rcu_barrier returned before the callbacks queued before it ran"
    );
    assert!(
        fault::injected(Point::Barrier) > 0,
        "the barrier point never failed"
    );
}

fn case_try_call_rcu() {
    call_rcu(|| {}); // the lists and the worker exist
    rcu_barrier();
    fault::arm(Point::CallRcu, FaultAttr::always(-1));
    let g = rcu_read_lock();
    // Boxed and inline closures alike come back, inside a reader too, without waiting.
    let big = rcu_core::try_call_rcu(big_callback())
        .expect_err("queued a boxed closure with every call_rcu allocation failing");
    let mut small = Vec::new();
    for _ in 0..64 {
        if let Err(f) = rcu_core::try_call_rcu(|| {
            RAN.fetch_add(1, Ordering::SeqCst);
        }) {
            small.push(f);
        }
    }
    drop(g);
    fault::disarm(Point::CallRcu);
    assert!(!small.is_empty(), "no inline closure given back");
    let back = small.len() as u64;
    big();
    small.into_iter().for_each(|f| f());
    rcu_barrier();
    assert_eq!(
        RAN.load(Ordering::SeqCst),
        65,
        "a closure lost or run twice"
    );
    assert_eq!(stats().callbacks_inline_fallback, 0, "try_call_rcu waited");
    println!("try_call_rcu: {back} inline closures given back");
}

fn case_in_callback() {
    // Callbacks queued while memory is there; when they run, every call_rcu they make has no
    // memory: each waits for a grace period on the callback thread and runs its callback there,
    // while another thread's rcu_barrier waits for them. Nothing may hang or be lost.
    call_rcu(|| {});
    rcu_barrier();
    let (started, go) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _g = rcu_read_lock();
        started.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    });
    go.recv().unwrap();
    for _ in 0..50 {
        let payload = [1u64; 8];
        call_rcu(move || {
            assert_eq!(payload[0], 1);
            call_rcu(big_callback());
        });
    }
    fault::arm(Point::CallRcu, FaultAttr::always(-1));
    reader.join().unwrap();
    let (done, returned) = mpsc::channel();
    std::thread::spawn(move || {
        rcu_barrier();
        done.send(()).unwrap();
    });
    returned
        .recv_timeout(Duration::from_secs(20))
        .expect("rcu_barrier hung while callbacks fell back to running call_rcu inline");
    fault::disarm(Point::CallRcu);
    rcu_barrier();
    assert_eq!(RAN.load(Ordering::SeqCst), 50, "callbacks lost");
    println!("in_callback: {:?}", stats());
}

#[test]
fn fault_cases() {
    match child_case().as_deref() {
        Some("call_rcu") => return case_call_rcu(),
        Some("barrier") => return case_barrier(),
        Some("barrier_always") => return case_barrier_always(),
        Some("try_call_rcu") => return case_try_call_rcu(),
        Some("in_callback") => return case_in_callback(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    for case in [
        "call_rcu",
        "barrier",
        "barrier_always",
        "try_call_rcu",
        "in_callback",
    ] {
        let o = run_child("fault_cases", case, &[], Duration::from_secs(60));
        assert!(o.status.success(), "case {case}: {}", stderr(&o));
        print!("{}", String::from_utf8_lossy(&o.stdout));
    }
}
