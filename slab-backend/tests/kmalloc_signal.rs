//! `kmalloc_nolock`/`kfree_nolock` from a signal handler that interrupts a thread busy in
//! `kmalloc`/`kfree` (and so sometimes inside the allocator, holding its CPU slot). Bounded in
//! time and in signals sent.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab_backend::{
    kfree, kfree_nolock, kfree_nolock_barrier, kmalloc, kmalloc_nolock, nolock_stats,
};

static HANDLED: AtomicU64 = AtomicU64::new(0);
static OK: AtomicU64 = AtomicU64::new(0);
static NONE: AtomicU64 = AtomicU64::new(0);

extern "C" fn handler(_sig: libc::c_int) {
    let n = HANDLED.fetch_add(1, Ordering::Relaxed);
    let size = [16usize, 64, 100, 256][(n % 4) as usize];
    // Only async-signal-safe work in here: the nolock API and atomics.
    match kmalloc_nolock(size) {
        Some(p) => {
            // SAFETY: `size` bytes of a fresh object, then freed once.
            unsafe {
                p.as_ptr().write_bytes(0xa5, size);
                kfree_nolock(p);
            }
            OK.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            NONE.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn nolock_from_signal_handler_interrupting_kmalloc() {
    slab_backend::kmalloc_init();
    // SAFETY: installing a handler for SIGUSR1 with a zeroed, then filled, sigaction.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
            let mut held = Vec::with_capacity(64);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && i < 50_000_000 {
                let size = [16usize, 64, 96, 256][i % 4];
                if let Some(p) = kmalloc(size) {
                    held.push(p);
                }
                if held.len() >= 48 {
                    for p in held.drain(..) {
                        // SAFETY: live kmalloc objects.
                        unsafe { kfree(p) };
                    }
                }
                i += 1;
            }
            for p in held {
                // SAFETY: live kmalloc objects.
                unsafe { kfree(p) };
            }
        })
    };
    let tid = rx.recv().unwrap() as libc::pthread_t;
    let deadline = Instant::now() + Duration::from_millis(1000);
    let mut sent = 0;
    while Instant::now() < deadline && sent < 20_000 {
        // SAFETY: the worker thread is alive until we set `stop` and join it.
        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
        sent += 1;
        std::thread::sleep(Duration::from_micros(50));
    }
    // Let the last signals land before stopping.
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    kfree_nolock_barrier();
    let (h, ok, none) = (
        HANDLED.load(Ordering::Relaxed),
        OK.load(Ordering::Relaxed),
        NONE.load(Ordering::Relaxed),
    );
    eprintln!(
        "signals sent {sent}, handled {h}, ok {ok}, none {none}, {:?}",
        nolock_stats()
    );
    assert!(h > 0, "the handler ran");
    assert!(ok > 0, "kmalloc_nolock succeeded from the handler");
    assert_eq!(nolock_stats().deferred_pending, 0, "deferred frees drained");
}
