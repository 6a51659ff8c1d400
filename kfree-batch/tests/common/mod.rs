//! Shared by kfree-batch's torture tests: the reader threads that hold published objects and
//! check they are not freed while held.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcu_core::rcu_read_lock;

/// What the readers share with the test: the published slots, the stop flag and the counters.
pub(crate) struct Readers<T> {
    pub(crate) slots: Arc<Vec<AtomicPtr<T>>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) errors: Arc<AtomicU64>,
    pub(crate) reads: Arc<AtomicU64>,
}

impl<T> Readers<T> {
    /// Readers' shared state over `slots` (not stopped, no reads, no errors yet).
    pub(crate) fn new(slots: Vec<AtomicPtr<T>>) -> Readers<T> {
        Readers {
            slots: Arc::new(slots),
            stop: Arc::new(AtomicBool::new(false)),
            errors: Arc::new(AtomicU64::new(0)),
            reads: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Starts two readers over `r.slots`. Each read-side critical section loads one slot, turns the
/// stored pointer into the object with `untag`, takes `snap` of it and checks `bad(object,
/// snap)` at the start and the end of the section; the second reader holds every 64th object for
/// about 5 ms, checking all along, so a block freed before its grace period is caught while it
/// is held. Every failed check counts one error.
pub(crate) fn spawn_readers<T: 'static, K: 'static>(
    r: &Readers<T>,
    untag: fn(*mut T) -> *const T,
    snap: fn(&T) -> K,
    bad: fn(&T, &K) -> bool,
) -> Vec<JoinHandle<()>> {
    (0..2)
        .map(|who| {
            let (slots, stop, errors, reads) = (
                r.slots.clone(),
                r.stop.clone(),
                r.errors.clone(),
                r.reads.clone(),
            );
            std::thread::spawn(move || {
                let n = slots.len();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let g = rcu_read_lock();
                    // Acquire pairs with the writers' publishing swap: the object is initialised.
                    let p = untag(slots[i % n].load(Ordering::Acquire));
                    // SAFETY: published objects are freed only after a grace period, which this
                    // guard holds off (the property under test).
                    let o = unsafe { &*p };
                    let k = snap(o);
                    if bad(o, &k) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if who == 1 && i % 64 == 0 {
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_millis(5) {
                            if bad(o, &k) {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    } else {
                        for _ in 0..(i % 32) {
                            std::hint::spin_loop();
                        }
                    }
                    if bad(o, &k) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(g);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}
