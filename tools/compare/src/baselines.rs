//! The baselines' side: crossbeam-epoch 0.9, seize 0.5, arc-swap 1 and (when built with liburcu)
//! liburcu-memb through the C shim. Loops follow the reference harness the targets were measured
//! with (a Rust program for the crates, a C program for liburcu), so the figures stay comparable.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::child::{self, m, Mem, Stalled, Tracked, DROPPED};
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

    /// 32-byte object, like the 32-byte call_rcu object of the C baseline.
    #[allow(dead_code)]
    struct Obj([u64; 4]);

    /// Per object: pin, `Owned::new(32 B)`, `defer_destroy`, unpin; flush every 1024 (the baseline's
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

    /// As [`defer_rate`] with 16-, 32- and 64-byte objects in turn (the mixed-type kfree_rcu
    /// figure). M objects/s, not end to end.
    pub(crate) fn defer_mixed_rate(n: u64) -> f64 {
        fn one<T: Send + 'static>(g: &epoch::Guard, v: T) {
            let p = Owned::new(v).into_shared(g);
            // SAFETY: `p` was just created and never shared (see `defer_rate`).
            unsafe { g.defer_destroy(p) };
        }
        let t = Instant::now();
        for i in 0..n {
            let g = epoch::pin();
            match i % 3 {
                0 => one(&g, [i; 2]),
                1 => one(&g, Obj([i; 4])),
                _ => one(&g, [i; 8]),
            }
            if i % 1024 == 0 {
                g.flush();
            }
        }
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    }

    /// Memory child: `child::objects()` 32-byte [`Tracked`] objects through the
    /// [`defer_rate`] loop (pin per object, flush every 1024), optionally while another thread
    /// holds a `pin()` guard; then `pin().flush()` until every object was dropped (crossbeam has
    /// no barrier and no background reclaimer).
    pub(crate) fn defer_mem(stall: bool) -> Mem {
        let n = child::objects();
        let checkpoint = n / 10;
        let mut out = Mem::new();
        // Warm-up outside the figure, as in every memory child (one-time set-up).
        for i in 0..1024u64 {
            let g = epoch::pin();
            g.defer(move || {
                black_box(i);
            });
            g.flush();
        }
        let reader = stall.then(|| Stalled::start(epoch::pin));
        let hwm0 = child::start_peak();
        let rss0 = child::vm_rss();
        let mut peak_pending = 0u64;
        let t = Instant::now();
        for i in 0..n {
            let g = epoch::pin();
            let p = Owned::new(Tracked([i; 4])).into_shared(&g);
            // SAFETY: `p` was just created and never shared (see `defer_rate`).
            unsafe { g.defer_destroy(p) };
            if i % 1024 == 0 {
                g.flush();
            }
            drop(g);
            if i % 4096 == 0 {
                let pending = (i + 1).saturating_sub(DROPPED.load(Ordering::Relaxed));
                peak_pending = peak_pending.max(pending);
            }
            if stall && i + 1 == checkpoint {
                out.set(m::RSS_PER_OBJ, (child::vm_rss() - rss0) / checkpoint as f64);
            }
        }
        let loop_end = Instant::now();
        out.set(m::LOOP, t.elapsed().as_secs_f64() * 1e3);
        peak_pending = peak_pending.max(n.saturating_sub(DROPPED.load(Ordering::Relaxed)));
        if let Some(r) = reader {
            out.set(m::HELD, r.release());
        }
        while DROPPED.load(Ordering::Relaxed) < n && loop_end.elapsed() < Duration::from_secs(20) {
            epoch::pin().flush();
        }
        if DROPPED.load(Ordering::Relaxed) >= n {
            out.set(m::DRAIN, loop_end.elapsed().as_secs_f64() * 1e3);
        }
        out.set(m::PEAK_RSS, (child::vm_hwm() - hwm0) / child::MIB);
        out.set(m::PEAK_PENDING, peak_pending as f64 * 32.0 / child::MIB);
        out
    }
}

/// seize 0.5.
pub(crate) mod sz {
    use super::*;
    use seize::{reclaim, Collector};

    fn retire_one<T>(c: &Collector, v: T) {
        let g = c.enter();
        let p = Box::into_raw(Box::new(v));
        // SAFETY: `p` was just allocated with `Box::new` and never shared, so `reclaim::boxed`
        // may free it whenever seize decides.
        unsafe { c.retire(p, reclaim::boxed::<T>) };
        drop(g);
    }

    /// Per object: `enter()`, `Box::new(32 B)`, `retire(reclaim::boxed)`, drop the guard (the
    /// baseline's `retire_enter_each`). M objects/s, not end to end (seize frees in batches later).
    pub(crate) fn retire_each(c: &Collector, n: u64) -> f64 {
        let t = Instant::now();
        for i in 0..n {
            retire_one(c, [i; 4]);
        }
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    }

    /// As [`retire_each`] with 16-, 32- and 64-byte objects in turn.
    pub(crate) fn retire_mixed(c: &Collector, n: u64) -> f64 {
        let t = Instant::now();
        for i in 0..n {
            match i % 3 {
                0 => retire_one(c, [i; 2]),
                1 => retire_one(c, [i; 4]),
                _ => retire_one(c, [i; 8]),
            }
        }
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    }

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

/// glibc malloc, directly and through Rust's `Box` (the global allocator is `System`).
pub(crate) mod glibc {
    use super::*;
    use std::mem::MaybeUninit;

    fn malloc_loop(n: u64) -> f64 {
        ns_per(n, || {
            for _ in 0..n {
                // SAFETY: malloc/free of a fresh block; free accepts NULL too.
                unsafe { libc::free(black_box(libc::malloc(64))) };
            }
        })
    }

    /// ns per `malloc(64)` + `free()`, after n/10 warm-up pairs.
    pub(crate) fn malloc_pairs(n: u64) -> f64 {
        malloc_loop(n / 10);
        malloc_loop(n)
    }

    fn box_loop(n: u64) -> f64 {
        ns_per(n, || {
            for _ in 0..n {
                // Uninitialised, like a cache without ctor: the allocator alone is measured.
                drop(black_box(Box::new(MaybeUninit::<[u8; 64]>::uninit())));
            }
        })
    }

    /// ns per `Box::<[u8; 64]>` allocation + drop (no initialisation), after n/10 warm-up.
    pub(crate) fn box_pairs(n: u64) -> f64 {
        box_loop(n / 10);
        box_loop(n)
    }

    /// Producer/consumer: `malloc(64)` on one thread, `free()` on the other; ns/object.
    pub(crate) fn malloc_producer_consumer(n: u64) -> f64 {
        crate::harness::producer_consumer(
            n,
            || {
                // SAFETY: plain malloc; NULL (0) is reported as a failure by the harness.
                unsafe { libc::malloc(64) as usize }
            },
            |p| {
                // SAFETY: `p` came from malloc and is freed exactly once.
                unsafe { libc::free(p as *mut libc::c_void) }
            },
        )
    }
}

/// Controls for the read-side scaling figure: loops with the read side's shape (load the word and
/// store it changed, twice per iteration) that write a thread-private line or one shared line.
pub(crate) mod control {
    use super::*;
    use std::sync::atomic::AtomicU64;

    thread_local! {
        static PRIVATE: rcu_core::CachePadded<AtomicU64> =
            const { rcu_core::CachePadded::new(AtomicU64::new(0)) };
    }
    static SHARED: rcu_core::CachePadded<AtomicU64> = rcu_core::CachePadded::new(AtomicU64::new(0));

    fn stores(x: &AtomicU64, n: u64) {
        for _ in 0..n {
            // The read side's shape: load the word, store it changed (lock), again (unlock); no
            // read-modify-write instruction. Relaxed: the point is the cache-line traffic, not
            // ordering. `black_box` makes each store observable, so none is merged or dropped.
            let v = x.load(Ordering::Relaxed);
            x.store(v.wrapping_add(1), Ordering::Relaxed);
            black_box(x);
            let v = x.load(Ordering::Relaxed);
            x.store(v.wrapping_sub(1), Ordering::Relaxed);
            black_box(x);
        }
    }

    /// `n` iterations writing this thread's own (thread-local, padded) line.
    pub(crate) fn private_line(n: u64) {
        PRIVATE.with(|p| stores(p, n))
    }

    /// `n` iterations writing one line every thread writes.
    pub(crate) fn shared_line(n: u64) {
        stores(&SHARED, n)
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

/// liburcu-memb (inline read side) through `shim/urcu_shim.c`.
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
        fn urcu_shim_enqueue(n: u64);
        fn urcu_shim_barrier();
        fn urcu_shim_stall_start(max_ms: u64) -> *mut libc::c_void;
        fn urcu_shim_stall_stop(h: *mut libc::c_void) -> f64;
    }

    use crate::child::{self, m, Mem, STALL_MAX};
    use std::time::Instant;

    /// Memory child: malloc(32 B) + `call_rcu(free)` × `child::objects()`, optionally while a C
    /// thread holds `rcu_read_lock()` (until the loop ends, at most `STALL_MAX`), then
    /// `rcu_barrier()`.
    pub(crate) fn call_rcu_mem(stall: bool) -> Mem {
        let n = child::objects();
        let checkpoint = n / 10;
        let mut out = Mem::new();
        // Warm-up outside the figure, as in every memory child (one-time set-up: the call_rcu
        // worker thread).
        // SAFETY: queues 1024 malloc'd objects with `free` callbacks, then waits for them.
        unsafe {
            urcu_shim_enqueue(1024);
            urcu_shim_barrier();
        }
        let h = if stall {
            // SAFETY: starts a C thread that registers, takes the read lock and waits; the
            // handle is given back to `urcu_shim_stall_stop` exactly once below.
            let h = unsafe { urcu_shim_stall_start(STALL_MAX.as_millis() as u64) };
            if h.is_null() {
                return out;
            }
            Some(h)
        } else {
            None
        };
        let hwm0 = child::start_peak();
        let rss0 = child::vm_rss();
        let t = Instant::now();
        // SAFETY: the calling thread holds no liburcu read lock; the shim registers it around
        // the loop.
        unsafe { urcu_shim_enqueue(checkpoint) };
        if stall {
            out.set(m::RSS_PER_OBJ, (child::vm_rss() - rss0) / checkpoint as f64);
        }
        // SAFETY: as above.
        unsafe { urcu_shim_enqueue(n - checkpoint) };
        let loop_end = Instant::now();
        out.set(m::LOOP, t.elapsed().as_secs_f64() * 1e3);
        if let Some(h) = h {
            // SAFETY: `h` came from `urcu_shim_stall_start` and is stopped once.
            out.set(m::HELD, unsafe { urcu_shim_stall_stop(h) });
        }
        // SAFETY: no read lock held by this thread; the shim registers it around the barrier.
        unsafe { urcu_shim_barrier() };
        out.set(m::DRAIN, loop_end.elapsed().as_secs_f64() * 1e3);
        out.set(m::PEAK_RSS, (child::vm_hwm() - hwm0) / child::MIB);
        out
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
