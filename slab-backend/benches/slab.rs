//! Side-by-side alloc+free of 64-byte objects: KmemCache (plain and typesafe), kmalloc, Box, and
//! glibc malloc, single-threaded, in one run.
//! `cargo bench -p slab-backend --bench slab`
#![allow(missing_docs)]

use std::hint::black_box;

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

criterion_group!(benches, alloc_free);
criterion_main!(benches);
