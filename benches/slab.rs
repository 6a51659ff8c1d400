//! Criterion bench of the producer/consumer free pattern (`cargo bench --bench slab`): objects
//! allocated on one thread and freed on another, through a bounded SPSC ring, for `KmemCache`,
//! `kmalloc` and glibc malloc.
//!
//! Single-thread alloc+free of 64-byte objects (KmemCache plain and typesafe, kmalloc, Box, glibc
//! malloc) is benched by slab-backend itself: `cargo bench -p slab-backend --bench slab`; it is not
//! repeated here. Side-by-side figures with targets: `cargo run --release -p compare -- --only
//! slab`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::ptr::NonNull;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slab_backend::{kfree, kmalloc, KmemCache};
use test_support::ring::Ring;

const BATCH: u64 = 20_000;

/// `iters` batches of `BATCH` objects: `alloc` on a producer thread, `free` on this thread.
fn pc<A, F>(iters: u64, alloc: A, free: F) -> Duration
where
    A: Fn() -> usize + Sync,
    F: Fn(usize),
{
    let n = iters * BATCH;
    let ring = Ring::new();
    let bar = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            bar.wait();
            for _ in 0..n {
                ring.push(alloc());
            }
        });
        bar.wait();
        let t = Instant::now();
        for _ in 0..n {
            let p = ring.pop();
            if p != 0 {
                free(p);
            }
        }
        t.elapsed()
    })
}

fn producer_consumer(c: &mut Criterion) {
    let mut g = c.benchmark_group("producer_consumer_64B");
    g.throughput(Throughput::Elements(BATCH));
    let cache = KmemCache::<[u8; 64]>::builder("bench-pc-64")
        .build()
        .expect("cache");
    g.bench_function("KmemCache", |b| {
        b.iter_custom(|iters| {
            pc(
                iters,
                || cache.alloc().map_or(0, |p| p.as_ptr() as usize),
                |p| {
                    // SAFETY: a non-zero object of `cache`, passed through the ring once.
                    unsafe { cache.free(NonNull::new_unchecked(p as *mut [u8; 64])) }
                },
            )
        })
    });
    g.bench_function("kmalloc", |b| {
        b.iter_custom(|iters| {
            pc(
                iters,
                || kmalloc(64).map_or(0, |p| p.as_ptr() as usize),
                |p| {
                    // SAFETY: a non-zero kmalloc object, passed through the ring once.
                    unsafe { kfree(NonNull::new_unchecked(p as *mut u8)) }
                },
            )
        })
    });
    g.bench_function("glibc_malloc", |b| {
        b.iter_custom(|iters| {
            pc(
                iters,
                || {
                    // SAFETY: plain malloc; NULL (0) is skipped by the consumer.
                    unsafe { libc::malloc(64) as usize }
                },
                |p| {
                    // SAFETY: `p` came from malloc and is freed once.
                    unsafe { libc::free(p as *mut libc::c_void) }
                },
            )
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = producer_consumer
}
criterion_main!(benches);
