//! The anchors' side: crossbeam-epoch 0.9, seize 0.5, arc-swap 1 and (when built with liburcu)
//! liburcu-memb through the C shim. Loops follow `shared/anchors/rust/src/main.rs` and
//! `shared/anchors/c/urcu_bench.c`, so figures are comparable with `anchors/RESULTS.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use crate::harness::ns_per;

/// crossbeam-epoch 0.9 with its default collector.
pub(crate) mod cb {
    use super::*;
    use crossbeam_epoch::{self as epoch, Owned};

    /// `n` × (`epoch::pin()` + drop); ns/pair.
    pub(crate) fn pin_loop(n: u64) -> f64 {
        ns_per(n, || {
            for _ in 0..n {
                let g = epoch::pin();
                black_box(&g);
                drop(g);
            }
        })
    }

    /// ns/pair after n/10 warm-up pairs.
    pub(crate) fn pin_pairs(n: u64) -> f64 {
        pin_loop(n / 10);
        pin_loop(n)
    }

    /// ns per inner pin while an outer guard is held (re-entrant pin).
    pub(crate) fn pin_nested(n: u64) -> f64 {
        let outer = epoch::pin();
        pin_loop(n / 10);
        let v = pin_loop(n);
        drop(outer);
        v
    }

    /// 32-byte object, like the 32-byte call_rcu object of the C anchor.
    #[allow(dead_code)]
    struct Obj([u64; 4]);

    /// Per object: pin, `Owned::new(32 B)`, `defer_destroy`, unpin; flush every 1024 (the anchor's
    /// `defer_destroy_pin_each`). M objects/s. Not end to end: crossbeam frees lazily.
    pub(crate) fn defer_rate(n: u64) -> f64 {
        let t = Instant::now();
        for i in 0..n {
            let g = epoch::pin();
            let p = Owned::new(Obj([i; 4])).into_shared(&g);
            // SAFETY: `p` was just created and never shared, so no other thread can reach it;
            // destroying it after the epoch advances is sound.
            unsafe { g.defer_destroy(p) };
            if i % 1024 == 0 {
                g.flush();
            }
        }
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    }
}

/// seize 0.5.
pub(crate) mod sz {
    use super::*;
    use seize::Collector;

    /// ns per `Collector::enter()` + drop, after n/10 warm-up.
    pub(crate) fn enter_pairs(c: &Collector, n: u64) -> f64 {
        let one = |k: u64| {
            ns_per(k, || {
                for _ in 0..k {
                    let g = c.enter();
                    black_box(&g);
                    drop(g);
                }
            })
        };
        one(n / 10);
        one(n)
    }
}

/// arc-swap 1.
pub(crate) mod asw {
    use super::*;
    use arc_swap::ArcSwap;

    /// ns per `load()` + deref + drop guard, after n/10 warm-up.
    pub(crate) fn load(s: &ArcSwap<u64>, n: u64) -> f64 {
        let one = |k: u64| {
            ns_per(k, || {
                for _ in 0..k {
                    let g = s.load();
                    black_box(**g);
                }
            })
        };
        one(n / 10);
        one(n)
    }

    /// ns per `store(Arc::new(i))` (allocates the new Arc, frees the old one), no readers.
    pub(crate) fn store(s: &ArcSwap<u64>, n: u64) -> f64 {
        ns_per(n, || {
            for i in 0..n {
                s.store(Arc::new(i));
            }
        })
    }
}

/// liburcu-memb (inline read side) through `benches/shim/urcu_shim.c`.
#[cfg(rcu_have_liburcu)]
pub(crate) mod urcu {
    #[link(name = "urcu_shim", kind = "static")]
    #[link(name = "urcu-memb")]
    #[link(name = "urcu-common")]
    #[link(name = "pthread")]
    extern "C" {
        fn urcu_shim_read_pairs(n: u64) -> f64;
        fn urcu_shim_read_pairs_nested(n: u64) -> f64;
        fn urcu_shim_read_pairs_2thr(n: u64) -> f64;
        fn urcu_shim_sync(calls: u64, with_busy_reader: libc::c_int) -> f64;
        fn urcu_shim_call_rcu(n: u64, enqueue_ns: *mut f64) -> f64;
        fn urcu_shim_barrier_idle(calls: u64) -> f64;
        fn urcu_shim_has_membarrier() -> libc::c_int;
    }

    /// memb read_lock+unlock pairs on the calling thread; ns/pair.
    pub(crate) fn read_pairs(n: u64) -> f64 {
        // SAFETY: the shim function registers the calling thread with liburcu, runs its loop and
        // unregisters; it takes no pointers.
        unsafe { urcu_shim_read_pairs(n) }
    }

    /// Inner pairs while an outer read lock is held; ns/pair.
    pub(crate) fn read_pairs_nested(n: u64) -> f64 {
        // SAFETY: as `read_pairs`; the outer lock is taken and released inside the shim.
        unsafe { urcu_shim_read_pairs_nested(n) }
    }

    /// 2 threads, slower thread's ns/pair.
    pub(crate) fn read_pairs_2thr(n: u64) -> f64 {
        // SAFETY: the shim creates, registers and joins its own threads; no pointers cross.
        unsafe { urcu_shim_read_pairs_2thr(n) }
    }

    /// µs per `synchronize_rcu()`, with or without one busy reader thread.
    pub(crate) fn sync(calls: u64, busy_reader: bool) -> f64 {
        // SAFETY: the calling thread is in no liburcu read-side critical section (it holds none
        // across shim calls); the shim joins its busy reader before returning.
        unsafe { urcu_shim_sync(calls, libc::c_int::from(busy_reader)) }
    }

    /// malloc(32 B) + call_rcu(free) × n, then rcu_barrier(). Returns [end-to-end M/s, enqueue M/s].
    pub(crate) fn call_rcu(n: u64) -> Vec<f64> {
        let mut enq = 0.0f64;
        // SAFETY: `enq` is a valid, writable f64 for the duration of the call.
        let total = unsafe { urcu_shim_call_rcu(n, &mut enq) };
        vec![n as f64 / total * 1e3, n as f64 / enq * 1e3]
    }

    /// µs per idle `rcu_barrier()`.
    pub(crate) fn barrier_idle(calls: u64) -> f64 {
        // SAFETY: no read-side critical section is held by the caller; no pointers cross.
        unsafe { urcu_shim_barrier_idle(calls) }
    }

    /// Whether liburcu-memb uses the membarrier syscall.
    pub(crate) fn has_membarrier() -> bool {
        // SAFETY: initialises liburcu-memb (idempotent) and reads one int.
        unsafe { urcu_shim_has_membarrier() != 0 }
    }
}
