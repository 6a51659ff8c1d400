//! Side-by-side alloc+free of 64-byte objects: KmemCache (plain and typesafe), kmalloc, Box, and
//! glibc malloc, single-threaded, in one run; then the same allocators with allocation on one
//! thread and free on another (a producer/consumer pair joined by a small SPSC ring, whose cost
//! is in every figure of that group).
//! `cargo bench -p slab-backend --bench slab`
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use slab_backend::{kfree, kmalloc, KmemCache};

#[derive(Default)]
struct Obj64 {
    _v: [u64; 8],
}

fn alloc_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_free_64B");
    let plain = KmemCache::<Obj64>::builder("bench-plain").build().unwrap();
    g.bench_function("KmemCache", |b| {
        b.iter(|| {
            let p = plain.alloc().unwrap();
            // SAFETY: a live object of `plain`.
            unsafe { plain.free(black_box(p)) };
        })
    });
    let ts = KmemCache::<Obj64>::builder("bench-typesafe")
        .typesafe_by_rcu(true)
        .ctor(Obj64::default)
        .build()
        .unwrap();
    g.bench_function("KmemCache_typesafe", |b| {
        b.iter(|| {
            let p = ts.alloc().unwrap();
            // SAFETY: a live object of `ts`, in its ctor state.
            unsafe { ts.free(black_box(p)) };
        })
    });
    g.bench_function("kmalloc", |b| {
        b.iter(|| {
            let p = kmalloc(64).unwrap();
            // SAFETY: a live kmalloc object.
            unsafe { kfree(black_box(p)) };
        })
    });
    g.bench_function("Box", |b| {
        b.iter(|| drop(black_box(Box::new(Obj64::default()))))
    });
    g.bench_function("glibc_malloc", |b| {
        b.iter(|| {
            // SAFETY: malloc/free pair on a fresh block.
            unsafe { libc::free(black_box(libc::malloc(64))) };
        })
    });
    g.bench_function("current_cpu_only", |b| {
        b.iter(|| black_box(rcu_core::cpu::current_cpu()))
    });
    g.finish();
}

/// A bounded single-producer single-consumer ring of addresses.
struct Ring {
    slots: Box<[AtomicUsize]>,
    head: AtomicUsize, // next slot to read (consumer)
    tail: AtomicUsize, // next slot to write (producer)
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self {
            slots: (0..cap).map(|_| AtomicUsize::new(0)).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }

    fn push(&self, v: usize) {
        let t = self.tail.load(Ordering::Relaxed);
        let mut spins = 0u32;
        while t - self.head.load(Ordering::Acquire) == self.slots.len() {
            backoff(&mut spins);
        }
        self.slots[t % self.slots.len()].store(v, Ordering::Relaxed);
        self.tail.store(t + 1, Ordering::Release);
    }

    fn pop(&self) -> usize {
        let h = self.head.load(Ordering::Relaxed);
        let mut spins = 0u32;
        while self.tail.load(Ordering::Acquire) == h {
            backoff(&mut spins);
        }
        let v = self.slots[h % self.slots.len()].load(Ordering::Relaxed);
        self.head.store(h + 1, Ordering::Release);
        v
    }
}

/// Spins briefly, then yields (the machine may have fewer free CPUs than the pair needs).
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Allocates `iters` objects on this thread and frees them on another one; returns the time.
fn producer_consumer(
    iters: u64,
    alloc: impl Fn() -> usize + Sync,
    free: impl Fn(usize) + Sync,
) -> Duration {
    let ring = Ring::new(1024);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..iters {
                free(ring.pop());
            }
        });
        for _ in 0..iters {
            ring.push(alloc());
        }
    });
    start.elapsed()
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("producer_consumer_64B");
    let plain = KmemCache::<Obj64>::builder("bench-pc-plain")
        .build()
        .unwrap();
    g.bench_function("KmemCache", |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                || plain.alloc().unwrap().as_ptr() as usize,
                // SAFETY: a live object of `plain`, handed over by the ring.
                |a| unsafe { plain.free(std::ptr::NonNull::new(a as *mut Obj64).unwrap()) },
            )
        })
    });
    g.bench_function("kmalloc", |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                || kmalloc(64).unwrap().as_ptr() as usize,
                // SAFETY: a live kmalloc object, handed over by the ring.
                |a| unsafe { kfree(std::ptr::NonNull::new(a as *mut u8).unwrap()) },
            )
        })
    });
    g.bench_function("Box", |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                || Box::into_raw(Box::new(Obj64::default())) as usize,
                // SAFETY: a Box leaked by the producer, handed over by the ring.
                |a| drop(unsafe { Box::from_raw(a as *mut Obj64) }),
            )
        })
    });
    g.bench_function("glibc_malloc", |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                // SAFETY: plain malloc.
                || unsafe { libc::malloc(64) } as usize,
                // SAFETY: a block from malloc, handed over by the ring.
                |a| unsafe { libc::free(a as *mut libc::c_void) },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, alloc_free, cross_thread);
criterion_main!(benches);
