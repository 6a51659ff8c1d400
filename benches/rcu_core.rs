//! Criterion benches of the grace-period engine (`cargo bench --bench rcu_core`).
//!
//! Short measurement windows (2 s, 20 samples) keep the whole run near a minute; for side-by-side
//! figures against the baselines use `cargo run --release -p compare`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rcu_core::{
    call_rcu, get_state_synchronize_rcu, poll_state_synchronize_rcu, rcu_barrier, rcu_read_lock,
    synchronize_rcu, synchronize_rcu_expedited, RcuCell,
};

fn read_side(c: &mut Criterion) {
    c.bench_function("read_lock_unlock", |b| {
        b.iter(|| {
            let g = rcu_read_lock();
            black_box(&g);
            drop(g);
        })
    });
    c.bench_function("read_lock_unlock_nested", |b| {
        let outer = rcu_read_lock();
        b.iter(|| {
            let g = rcu_read_lock();
            black_box(&g);
            drop(g);
        });
        drop(outer);
    });
    let cell = RcuCell::new(Some(Box::new(42u64)));
    c.bench_function("rcucell_read", |b| {
        b.iter(|| {
            let g = rcu_read_lock();
            black_box(cell.read(&g).copied());
            drop(g);
        })
    });
}

fn grace_periods(c: &mut Criterion) {
    c.bench_function("synchronize_rcu_idle", |b| b.iter(synchronize_rcu));
    c.bench_function("synchronize_rcu_expedited_idle", |b| {
        b.iter(synchronize_rcu_expedited)
    });
    c.bench_function("get_state_poll", |b| {
        b.iter(|| {
            let s = get_state_synchronize_rcu();
            black_box(poll_state_synchronize_rcu(black_box(s)))
        })
    });
}

fn callbacks(c: &mut Criterion) {
    // Enqueue cost only: each batch is drained with rcu_barrier() outside the timed span, so the
    // callback queue never grows without bound.
    c.bench_function("call_rcu_enqueue_empty", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                let x = black_box(i);
                call_rcu(move || {
                    black_box(x);
                });
            }
            let d = t.elapsed();
            rcu_barrier();
            d
        })
    });
    c.bench_function("call_rcu_enqueue_box32", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                let bx = black_box(Box::new([i as u8; 32]));
                call_rcu(move || drop(bx));
            }
            let d = t.elapsed();
            rcu_barrier();
            d
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = read_side, grace_periods, callbacks
}
criterion_main!(benches);
