//! A bounded single-producer single-consumer ring of words, for producer/consumer figures: the
//! `compare` tool's and the kit's `benches/slab.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bounded single-producer single-consumer ring of non-zero words (pointers as `usize`), used by
/// the producer/consumer figures: the producer allocates and pushes, the consumer pops and frees.
///
/// One producer thread calls [`Ring::push`] and one consumer thread calls [`Ring::pop`]; a second
/// producer or consumer breaks the ring (values lost or duplicated), not memory safety.
#[derive(Debug)]
pub struct Ring {
    buf: Box<[AtomicUsize]>,
    /// Next slot to pop; written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Next slot to push; written by the producer only.
    tail: CachePadded<AtomicUsize>,
}

/// Keeps `head` and `tail` on separate cache lines (128 bytes: adjacent-line prefetch pairs).
#[derive(Debug)]
#[repr(align(128))]
struct CachePadded<T>(T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl Default for Ring {
    fn default() -> Ring {
        Ring::new()
    }
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
    /// An empty ring of 256 slots.
    pub fn new() -> Ring {
        Ring {
            buf: (0..RING_CAP).map(|_| AtomicUsize::new(0)).collect(),
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
        }
    }

    /// Pushes `v` (non-zero), waiting while the ring is full. Producer side only.
    pub fn push(&self, v: usize) {
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

    /// Pops the oldest value, waiting while the ring is empty. Consumer side only.
    pub fn pop(&self) -> usize {
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
