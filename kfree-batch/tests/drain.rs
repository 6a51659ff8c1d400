//! Recycled blocks: ready blocks of types without drop glue are recycled in place on the retiring
//! thread — each `kfree_rcu` puts its object in the slot of a ready one and frees that one after
//! its read-side critical section. These objects have no destructor to mark them dead, so this binary's global allocator recognises a freed [`Plain`] (its size
//! and its self-check word), poisons it and counts it. Readers check the object they hold is not
//! poisoned for as long as they hold it; barriers and thread exits must account for every
//! object; a worker that lags (a `gp_batch` of seconds, in a child process) makes the retiring
//! threads run the grace periods themselves. Bounded in time and count.
#![cfg(not(rcu_loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier, stats};
use test_support::{child_case, run_child, stderr};

mod common;

/// 56 bytes with a self-check word (`check == id ^ MAGIC`).
#[repr(C)]
struct Plain {
    id: u64,
    check: u64,
    pad: [u64; 5],
}
const MAGIC: u64 = 0x5eed_cafe_f00d_0001;
const POISON: u8 = 0xd5;

const _: () = assert!(!core::mem::needs_drop::<Plain>());

fn plain(id: u64) -> Box<Plain> {
    Box::new(Plain {
        id,
        check: id ^ MAGIC,
        pad: [id; 5],
    })
}

fn intact(p: &Plain) -> bool {
    p.check == p.id ^ MAGIC && p.pad[4] == p.id
}

/// Frees of `Plain`-sized allocations (poisoned first).
static PLAIN_FREES: AtomicU64 = AtomicU64::new(0);

struct Poisoning;
// SAFETY: forwards to `System`; the poisoning writes only inside the block being freed.
unsafe impl GlobalAlloc for Poisoning {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if l.size() == core::mem::size_of::<Plain>() && l.align() == 8 {
            // SAFETY: `p` is a live, 8-aligned block of `size_of::<Plain>()` bytes being freed
            // by its owner; any bit pattern is a valid `Plain` to read.
            let o = unsafe { &*p.cast::<Plain>() };
            if intact(o) {
                // SAFETY: as above.
                unsafe { core::ptr::write_bytes(p, POISON, l.size()) };
                PLAIN_FREES.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Poisoning = Poisoning;

/// The tests count global frees: run them one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`readers_writers_barriers`] saw.
struct Run {
    retired: u64,
    inline: u64,
    expedited: u64,
}

#[test]
fn recycled_objects_are_never_freed_inside_a_reader() {
    let _s = serial();
    let r = readers_writers_barriers(Duration::from_millis(15));
    // Long readers and concurrent barriers hold grace periods up and steal blocks, so here the
    // recycling path carries only part of the frees; it must have been exercised.
    assert!(r.inline > 0, "no object was freed from a recycled block");
}

/// With a worker that pauses 5 s between grace periods, the retiring threads find no ready
/// block to recycle while many wait, and run grace periods themselves (without waiting for the
/// readers that are inside sections: those attempts fail and back off). Nothing is freed early,
/// and recycling goes on. Child process: the pause is a process-wide setting.
#[test]
fn lagging_worker_producers_run_grace_periods() {
    if child_case().as_deref() == Some("lagging") {
        let r = readers_writers_barriers(Duration::from_millis(400));
        assert!(
            r.expedited > 0,
            "no producer ran a grace period while the worker paused"
        );
        assert!(
            r.inline > r.retired / 4,
            "recycling stalled: {} of {} freed one per retire",
            r.inline,
            r.retired
        );
        long_reader_across_recycling();
        return;
    }
    if child_case().is_some() {
        return;
    }
    let out = run_child(
        "lagging_worker_producers_run_grace_periods",
        "lagging",
        &[("RCU_KIT_KFREE_GP_BATCH_US", "5000000")],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "child failed:\n{err}");
    for l in err
        .lines()
        .filter(|l| l.starts_with("retired") || l.starts_with("long reader"))
    {
        eprintln!("child: {l}");
    }
}

/// A reader holds an object across a million retires on another thread, which find no ready
/// block while many wait and try to run grace periods themselves: the reader blocks every one of
/// them, so its object must still be intact when it leaves.
fn long_reader_across_recycling() {
    kvfree_rcu_barrier();
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let held = Box::into_raw(plain(1 << 50));
    let slot = std::sync::Arc::new(AtomicPtr::new(held));
    let (inside_tx, inside_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let slot = slot.clone();
        std::thread::spawn(move || {
            let g = rcu_core::rcu_read_lock();
            let p = slot.load(Ordering::Acquire);
            inside_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            // SAFETY: `p` was published when we loaded it inside the section, which is still
            // held: it may be retired but not freed yet.
            let ok = intact(unsafe { &*p });
            drop(g);
            ok
        })
    };
    inside_rx.recv().unwrap();
    let old = slot.swap(Box::into_raw(plain(1 << 51)), Ordering::AcqRel);
    // SAFETY: unpublished by the swap; retired once.
    kfree_rcu(unsafe { Box::from_raw(old) });
    let s0 = stats();
    let n = 1_000_000;
    for i in 0..n {
        kfree_rcu(plain(i));
    }
    let s1 = stats();
    done_tx.send(()).unwrap();
    assert!(
        reader.join().unwrap(),
        "an object was freed while a reader that loaded it was still inside its section"
    );
    kvfree_rcu_barrier();
    assert_eq!(PLAIN_FREES.load(Ordering::Relaxed) - frees0, n + 1);
    eprintln!(
        "long reader: {} grace periods run by the retiring thread during it, {} freed one per \
         retire",
        s1.grace_periods_expedited - s0.grace_periods_expedited,
        s1.freed_inline - s0.freed_inline
    );
    // SAFETY: no thread uses the slot any more.
    drop(unsafe { Box::from_raw(slot.load(Ordering::Relaxed)) });
}

/// Two writers unpublish objects from slots that reader threads read, retiring them (and as many
/// never-published ones) through `kfree_rcu`, while a thread calls `kvfree_rcu_barrier` every
/// `barrier_every`; checks no object was freed under a reader and every one was freed once.
fn readers_writers_barriers(barrier_every: Duration) -> Run {
    kvfree_rcu_barrier();
    const SLOTS: usize = 16;
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let s0 = stats();
    let rd = common::Readers::new(
        (0..SLOTS as u64)
            .map(|i| AtomicPtr::new(Box::into_raw(plain(i))))
            .collect(),
    );
    let readers = common::spawn_readers(&rd, |p| p, |_| (), |o, _| !intact(o));
    let common::Readers {
        slots,
        stop,
        errors,
        reads,
    } = rd;
    // A barrier caller steals open blocks (recycled ones too) while their owners put into them.
    let barriers = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(barrier_every);
                kvfree_rcu_barrier();
                n += 1;
            }
            n
        })
    };
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (slots, stop) = (slots.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let t = Instant::now();
                while n < 1_500_000 && t.elapsed() < Duration::from_millis(1500) {
                    n += 1;
                    let id = (w << 40) | n;
                    let old = slots[(n as usize * 7 + w as usize) % SLOTS]
                        .swap(Box::into_raw(plain(id)), Ordering::AcqRel);
                    // SAFETY: `old` was unpublished by the swap; retired once.
                    kfree_rcu(unsafe { Box::from_raw(old) });
                    // Unpublished objects that are retired at once (no reader can hold them).
                    kfree_rcu(plain(id));
                }
                stop.store(true, Ordering::Relaxed);
                2 * n
            })
        })
        .collect();
    let retired: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let nbarriers = barriers.join().unwrap();
    let s1 = stats();
    kvfree_rcu_barrier();
    let freed = PLAIN_FREES.load(Ordering::Relaxed) - frees0;
    let inline = s1.freed_inline - s0.freed_inline;
    let expedited = s1.grace_periods_expedited - s0.grace_periods_expedited;
    eprintln!(
        "retired {retired}, freed {freed} ({inline} one per retire), {} reads, {nbarriers} \
         concurrent barriers, grace periods: {} ({expedited} run by the retiring threads)",
        reads.load(Ordering::Relaxed),
        s1.grace_periods - s0.grace_periods,
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "an object was freed under a reader"
    );
    assert_eq!(
        freed, retired,
        "every retired object is freed once by the barrier"
    );
    assert!(reads.load(Ordering::Relaxed) > 1000);
    for s in slots.iter() {
        // SAFETY: no thread uses the slots any more.
        drop(unsafe { Box::from_raw(s.load(Ordering::Relaxed)) });
    }
    Run {
        retired,
        inline,
        expedited,
    }
}

/// Retires `n` objects on a fresh thread that then stays alive (holding whatever open block, a
/// recycled one most likely, it has) until the returned sender is dropped.
fn idle_producer(n: u64) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        for i in 0..n {
            kfree_rcu(plain(i));
        }
        done_tx.send(()).unwrap();
        let _ = rx.recv();
    });
    done_rx.recv().unwrap();
    (tx, h)
}

#[test]
fn barrier_frees_an_idle_threads_recycled_block() {
    let _s = serial();
    kvfree_rcu_barrier();
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let inline0 = stats().freed_inline;
    let n = 200_000;
    let (tx, h) = idle_producer(n);
    // With no reader holding grace periods up, a lone producer frees most objects itself, one
    // per retire (it most likely holds a half-recycled block now).
    let inline = stats().freed_inline - inline0;
    eprintln!("{inline} of {n} freed one per retire before the barrier");
    assert!(
        inline > n / 2,
        "a lone producer should recycle most ready blocks itself ({inline} of {n})"
    );
    kvfree_rcu_barrier();
    assert_eq!(
        PLAIN_FREES.load(Ordering::Relaxed) - frees0,
        n,
        "kvfree_rcu_barrier returned with objects of an idle thread unfreed"
    );
    drop(tx);
    h.join().unwrap();
}

#[test]
fn idle_threads_recycled_block_is_freed_after_the_delay() {
    let _s = serial();
    kvfree_rcu_barrier();
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let n = 200_000;
    let (tx, h) = idle_producer(n);
    // No barrier: the worker must collect the idle thread's open block after the drain delay
    // (20 ms by default).
    let t = Instant::now();
    while PLAIN_FREES.load(Ordering::Relaxed) - frees0 < n && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let freed = PLAIN_FREES.load(Ordering::Relaxed) - frees0;
    assert_eq!(freed, n, "an idle thread's objects stayed pending");
    eprintln!(
        "all {n} freed {:?} after the producer went idle",
        t.elapsed()
    );
    drop(tx);
    h.join().unwrap();
}

#[test]
fn exiting_thread_hands_its_recycled_block_over() {
    let _s = serial();
    kvfree_rcu_barrier();
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let n = 100_000;
    let (tx, h) = idle_producer(n);
    drop(tx);
    h.join().unwrap();
    kvfree_rcu_barrier();
    assert_eq!(PLAIN_FREES.load(Ordering::Relaxed) - frees0, n);
    let s = stats();
    assert_eq!(
        s.freed, s.queued,
        "statistics account for every object: {s:?}"
    );
}
