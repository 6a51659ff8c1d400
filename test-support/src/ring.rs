//! A bounded single-producer single-consumer ring of words, shared by the compare binary's
//! producer/consumer figures and `benches/slab.rs` (included there with `#[path]`).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bounded single-producer single-consumer ring of non-zero words (pointers as `usize`), used by
/// the producer/consumer figures: the producer allocates and pushes, the consumer pops and frees.
pub(crate) struct Ring {
    buf: Box<[AtomicUsize]>,
    /// Next slot to pop; written by the consumer only.
    head: rcu_core::CachePadded<AtomicUsize>,
    /// Next slot to push; written by the producer only.
    tail: rcu_core::CachePadded<AtomicUsize>,
}

const RING_CAP: usize = 256;

/// Spins a little, then yields: on a 2-vCPU machine the other side may not be running.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl Ring {
    pub(crate) fn new() -> Ring {
        Ring {
            buf: (0..RING_CAP).map(|_| AtomicUsize::new(0)).collect(),
            head: rcu_core::CachePadded::new(AtomicUsize::new(0)),
            tail: rcu_core::CachePadded::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn push(&self, v: usize) {
        // Relaxed: only the producer writes `tail`.
        let t = self.tail.load(Ordering::Relaxed);
        let mut spins = 0;
        // Acquire pairs with the consumer's Release store of `head`: the slot was read before
        // we overwrite it.
        while t.wrapping_sub(self.head.load(Ordering::Acquire)) >= RING_CAP {
            backoff(&mut spins);
        }
        self.buf[t % RING_CAP].store(v, Ordering::Relaxed);
        // Release pairs with the consumer's Acquire load of `tail`: the slot's value (and the
        // object it points to) is visible before the slot is.
        self.tail.store(t.wrapping_add(1), Ordering::Release);
    }

    pub(crate) fn pop(&self) -> usize {
        // Relaxed: only the consumer writes `head`.
        let h = self.head.load(Ordering::Relaxed);
        let mut spins = 0;
        // Acquire pairs with the producer's Release store of `tail`.
        while self.tail.load(Ordering::Acquire) == h {
            backoff(&mut spins);
        }
        let v = self.buf[h % RING_CAP].load(Ordering::Relaxed);
        // Release pairs with the producer's Acquire load of `head`.
        self.head.store(h.wrapping_add(1), Ordering::Release);
        v
    }
}
