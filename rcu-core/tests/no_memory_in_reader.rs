//! `call_rcu` inside a read-side critical section when its callback cannot be queued (the list
//! is full because no grace period can end): it panics, and the callback's captures must not be
//! dropped by that unwind — they may be what readers still use (the closure frees them after a
//! grace period). Runs in a child process: it fills a callback list to its bound.
#![cfg(not(rcu_loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcu_core::*;
use test_support::{child_case, run_child, stderr};

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Tracked;
impl Drop for Tracked {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Binds the calling thread to the CPU it runs on (so `call_rcu` keeps using one list).
fn pin_here() {
    let cpu = rcu_core::cpu::current_cpu();
    if cpu >= 1024 {
        return;
    }
    // SAFETY: plain-data cpu_set_t; CPU_SET within bounds (cpu < 1024); the call reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Queues small (inline, allocation-free) callbacks inside the caller's section until
/// `call_rcu` refuses one; bounded in count and time.
fn fill_until_refused() {
    // The per-list bound is 2^20 callbacks; a thread that migrates may spread over every list.
    let limit = (rcu_core::cpu::possible_cpus() as u64 + 1) << 20;
    let start = Instant::now();
    for i in 0..limit {
        match catch_unwind(|| call_rcu(|| ())) {
            Ok(()) => {}
            Err(e) => {
                let msg = panic_text(&*e);
                assert!(
                    msg.contains("no memory") && msg.contains("read-side critical section"),
                    "unexpected panic: {msg}"
                );
                return;
            }
        }
        if i % 4096 == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "call_rcu never refused a callback"
            );
        }
    }
    panic!("call_rcu never refused a callback after {limit} of them");
}

fn child_refused_in_reader() {
    pin_here();
    call_rcu(|| ());
    rcu_barrier(); // the worker runs
    let g = rcu_read_lock();
    // Our own section keeps the worker's grace period from ending, so it stops harvesting and
    // the list fills up.
    let mut checked = false;
    for _ in 0..5 {
        fill_until_refused();
        // A closure larger than two words is boxed: its captures live in that box.
        let payload = (Tracked, [7usize; 3]);
        let before = DROPPED.load(Ordering::SeqCst);
        let r = catch_unwind(AssertUnwindSafe(move || {
            call_rcu(move || {
                std::hint::black_box(&payload.1);
                drop(payload.0);
            })
        }));
        match r {
            Ok(()) => continue, // queued on another CPU's list after a migration: again
            Err(e) => {
                let msg = panic_text(&*e);
                assert!(msg.contains("read-side critical section"), "{msg}");
                assert_eq!(
                    DROPPED.load(Ordering::SeqCst),
                    before,
                    "call_rcu dropped the callback's captures on the unwind of its no-memory \
                     panic, inside a reader, before any grace period"
                );
                checked = true;
                break;
            }
        }
    }
    assert!(checked, "could not make call_rcu refuse a boxed callback");
    drop(g);
    rcu_barrier(); // the engine goes on; the refused callback was leaked, never run
    eprintln!("refused callback leaked; stats: {:?}", stats());
}

#[test]
fn no_memory_in_reader_child() {
    match child_case().as_deref() {
        Some("refused") => child_refused_in_reader(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn call_rcu_refused_inside_a_reader_never_drops_the_callback() {
    // The refused callback is forgotten, by design: no leak report in sanitizer builds.
    let out = run_child(
        "no_memory_in_reader_child",
        "refused",
        &[("ASAN_OPTIONS", "detect_leaks=0")],
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "child case failed:\n{}", stderr(&out));
}
