//! rcutorture-style test: writers replace elements and retire the old ones through every path
//! (call_rcu, synchronize_rcu, synchronize_rcu_expedited, polled grace periods, RcuCell); readers
//! — some nested, some sleeping inside their critical section — check that nothing they hold was
//! "freed". A retired element is first poisoned (its `state` set to DEAD and payload scrambled)
//! and only really freed at the end, so a premature free is detected instead of being undefined
//! behaviour. Bounded in time (about 2 s) and count.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcu_core::{
    call_rcu, cond_synchronize_rcu, get_state_synchronize_rcu, poll_state_synchronize_rcu,
    rcu_barrier, rcu_read_lock, start_poll_synchronize_rcu, synchronize_rcu,
    synchronize_rcu_expedited,
};

const ALIVE: u64 = 0xA11CE;
const DEAD: u64 = 0xDEAD;
const RUN: Duration = Duration::from_millis(2000);
const MAX_UPDATES_PER_WRITER: u64 = 200_000;

struct Elem {
    state: AtomicU64,
    id: u64,
    check: AtomicU64,
}

impl Elem {
    fn new(id: u64) -> Box<Elem> {
        Box::new(Elem {
            state: AtomicU64::new(ALIVE),
            id,
            check: AtomicU64::new(id ^ 0x5555),
        })
    }
}

/// Poisoned elements wait here until the end (then really freed).
static GRAVEYARD: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn poison(p: *mut Elem) {
    // SAFETY: `p` is a retired element that stays allocated until the end of the test.
    let e = unsafe { &*p };
    e.state.store(DEAD, Ordering::Relaxed);
    e.check.store(u64::MAX, Ordering::Relaxed);
    GRAVEYARD.lock().unwrap().push(p as usize);
}

#[derive(Clone, Copy, Debug)]
enum Retire {
    CallRcu,
    Sync,
    Expedited,
    Polled,
    Cond,
}

#[test]
fn torture_all_retire_paths() {
    const SLOTS: usize = 8;
    let slots: Arc<Vec<AtomicPtr<Elem>>> = Arc::new(
        (0..SLOTS)
            .map(|i| AtomicPtr::new(Box::into_raw(Elem::new(i as u64))))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(1000));

    let mut readers = Vec::new();
    for r in 0..3 {
        let (slots, stop, errors, reads) =
            (slots.clone(), stop.clone(), errors.clone(), reads.clone());
        readers.push(
            std::thread::Builder::new()
                .name(format!("reader-{r}"))
                .spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let g = rcu_read_lock();
                        let p = slots[(i as usize) % SLOTS].load(Ordering::Acquire);
                        // SAFETY: under the guard the element cannot be freed (that is what we test;
                        // it is never really freed before the end anyway).
                        let e = unsafe { &*p };
                        let ok = |e: &Elem| {
                            e.state.load(Ordering::Relaxed) == ALIVE
                                && e.check.load(Ordering::Relaxed) == e.id ^ 0x5555
                        };
                        if !ok(e) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        if i % 7 == 0 {
                            let inner = rcu_read_lock(); // nested
                            drop(inner);
                        }
                        if r == 2 && i % 500 == 0 {
                            std::thread::sleep(Duration::from_millis(2)); // a long reader
                        } else {
                            for _ in 0..(i % 64) {
                                std::hint::spin_loop();
                            }
                        }
                        if !ok(e) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(g);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .unwrap(),
        );
    }

    let modes = [
        Retire::CallRcu,
        Retire::Sync,
        Retire::Expedited,
        Retire::Polled,
        Retire::Cond,
    ];
    let mut writers = Vec::new();
    for (w, mode) in modes.into_iter().enumerate() {
        let (slots, stop, next_id) = (slots.clone(), stop.clone(), next_id.clone());
        writers.push(std::thread::spawn(move || {
            let mut pending: Vec<(rcu_core::GpState, usize)> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < MAX_UPDATES_PER_WRITER {
                n += 1;
                let slot = &slots[(w + n as usize) % SLOTS];
                let new = Box::into_raw(Elem::new(next_id.fetch_add(1, Ordering::Relaxed)));
                let old = slot.swap(new, Ordering::AcqRel);
                match mode {
                    Retire::CallRcu => {
                        let o = old as usize;
                        call_rcu(move || poison(o as *mut Elem));
                    }
                    Retire::Sync => {
                        synchronize_rcu();
                        poison(old);
                    }
                    Retire::Expedited => {
                        synchronize_rcu_expedited();
                        poison(old);
                    }
                    Retire::Polled => {
                        pending.push((start_poll_synchronize_rcu(), old as usize));
                        pending.retain(|&(s, p)| {
                            if poll_state_synchronize_rcu(s) {
                                poison(p as *mut Elem);
                                false
                            } else {
                                true
                            }
                        });
                        if pending.len() > 1000 {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                    Retire::Cond => {
                        let s = get_state_synchronize_rcu();
                        std::thread::yield_now();
                        cond_synchronize_rcu(s);
                        poison(old);
                    }
                }
            }
            for (s, p) in pending {
                cond_synchronize_rcu(s);
                poison(p as *mut Elem);
            }
            n
        }));
    }

    let start = Instant::now();
    while start.elapsed() < RUN {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let updates: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for r in readers {
        r.join().unwrap();
    }
    rcu_barrier();

    let errs = errors.load(Ordering::Relaxed);
    let reads = reads.load(Ordering::Relaxed);
    eprintln!("torture: reads {reads}, updates per mode {updates:?} ({modes:?}), errors {errs}");
    assert_eq!(errs, 0, "readers saw freed elements");
    assert!(reads > 1000, "readers made no progress: {reads}");
    for (u, m) in updates.iter().zip(modes) {
        assert!(*u > 10, "writer {m:?} made no progress: {u}");
    }
    // Every retired element was poisoned exactly once: nothing lost.
    let total: u64 = updates.iter().sum();
    let mut yard = GRAVEYARD.lock().unwrap();
    assert_eq!(
        yard.len() as u64,
        total,
        "retired elements lost or freed twice"
    );
    yard.sort_unstable();
    yard.dedup();
    assert_eq!(yard.len() as u64, total, "an element was retired twice");
    for p in yard.drain(..) {
        // SAFETY: every graveyard entry is a unique Box::into_raw pointer no longer published.
        drop(unsafe { Box::from_raw(p as *mut Elem) });
    }
    for s in slots.iter() {
        // SAFETY: the live elements, freed once at the end.
        drop(unsafe { Box::from_raw(s.load(Ordering::Relaxed)) });
    }
}
