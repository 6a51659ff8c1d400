//! Criterion benches of the kfree_rcu batcher (`cargo bench --bench kfree`).
//!
//! Each iteration retires a batch of 10 000 boxes and waits with `kvfree_rcu_barrier()`, so the
//! figure is end to end (every object freed) and the backlog never grows across samples; the
//! `enqueue` variant leaves the barrier out of the timed span. Short windows keep the file near
//! 15 s. Side-by-side figures against crossbeam-epoch, seize and liburcu:
//! `cargo run --release -p compare -- --only kfree`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kfree_batch::{kfree_rcu, kvfree_rcu_barrier};

const BATCH: u64 = 10_000;

fn one_type(n: u64) {
    for i in 0..n {
        kfree_rcu(black_box(Box::new([i as u8; 32])));
    }
}

fn mixed_types(n: u64) {
    for i in 0..n {
        match i % 3 {
            0 => kfree_rcu(black_box(Box::new([i as u8; 16]))),
            1 => kfree_rcu(black_box(Box::new([i as u8; 32]))),
            _ => kfree_rcu(black_box(Box::new([i as u8; 64]))),
        }
    }
}

fn kfree(c: &mut Criterion) {
    let mut g = c.benchmark_group("kfree_rcu");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("box32_end_to_end", |b| {
        b.iter(|| {
            one_type(BATCH);
            kvfree_rcu_barrier();
        })
    });
    g.bench_function("mixed_16_32_64_end_to_end", |b| {
        b.iter(|| {
            mixed_types(BATCH);
            kvfree_rcu_barrier();
        })
    });
    g.bench_function("box32_enqueue", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                one_type(BATCH);
                d += t.elapsed();
                kvfree_rcu_barrier();
            }
            d
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
    targets = kfree
}
criterion_main!(benches);
