//! Drain blocks: ready blocks of types without drop glue are freed one object per `kfree_rcu` on
//! the retiring thread, inside its read-side critical section. These objects have no destructor
//! to mark them dead, so this binary's global allocator recognises a freed [`Plain`] (its size
//! and its self-check word), poisons it and counts it. Readers check the object they hold is not
//! poisoned for as long as they hold it; barriers and thread exits must account for every
//! object. Bounded in time and count.
#![cfg(not(rcu_loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kfree_batch::{kfree_rcu, kvfree_rcu_barrier, stats};

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

#[test]
fn drained_objects_are_never_freed_inside_a_reader() {
    let _s = serial();
    kvfree_rcu_barrier();
    const SLOTS: usize = 16;
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let inline0 = stats().freed_inline;
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
    // A barrier caller steals drain blocks (and open blocks) while their owners drain them.
    let barriers = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(15));
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
    kvfree_rcu_barrier();
    let freed = PLAIN_FREES.load(Ordering::Relaxed) - frees0;
    let inline = stats().freed_inline - inline0;
    eprintln!(
        "retired {retired}, freed {freed} ({inline} one per retire), {} reads, {nbarriers} \
         concurrent barriers",
        reads.load(Ordering::Relaxed)
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
    // Long readers and concurrent barriers hold grace periods up and steal blocks, so here the
    // drain path carries only part of the frees; it must have been exercised.
    assert!(inline > 0, "no object was freed through a drain block");
    assert!(reads.load(Ordering::Relaxed) > 1000);
    for s in slots.iter() {
        // SAFETY: no thread uses the slots any more.
        drop(unsafe { Box::from_raw(s.load(Ordering::Relaxed)) });
    }
}

/// Retires `n` objects on a fresh thread that then stays alive (holding whatever drain and open
/// blocks it has) until the returned sender is dropped.
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
fn barrier_frees_an_idle_threads_drain_block() {
    let _s = serial();
    kvfree_rcu_barrier();
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let inline0 = stats().freed_inline;
    let n = 200_000;
    let (tx, h) = idle_producer(n);
    // With no reader holding grace periods up, a lone producer frees most objects itself, one
    // per retire (it most likely holds a half-drained block now).
    let inline = stats().freed_inline - inline0;
    eprintln!("{inline} of {n} freed one per retire before the barrier");
    assert!(
        inline > n / 2,
        "a lone producer should drain most ready blocks itself ({inline} of {n})"
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
fn idle_threads_drain_block_is_freed_after_the_delay() {
    let _s = serial();
    kvfree_rcu_barrier();
    let frees0 = PLAIN_FREES.load(Ordering::Relaxed);
    let n = 200_000;
    let (tx, h) = idle_producer(n);
    // No barrier: the worker must collect the idle thread's drain and open blocks after the
    // drain delay (20 ms by default).
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
fn exiting_thread_frees_its_drain_block() {
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
