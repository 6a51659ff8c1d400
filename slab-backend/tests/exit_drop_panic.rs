//! A cache with a constructor whose `T::drop` panics while a thread that freed its objects
//! exits: the thread cache's exit flush may discard a slab (which drops its `T`s) from a
//! thread-local destructor, where a panic aborts the process.
//!
//! Runs in a child process with a deadline checked from outside.
#![cfg(not(rcu_loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slab_backend::KmemCache;

static ARMED: AtomicBool = AtomicBool::new(false);

struct Bomb {
    _pad: [u64; 8],
}
impl Drop for Bomb {
    fn drop(&mut self) {
        if ARMED.load(Ordering::Relaxed) {
            panic!("Bomb dropped");
        }
    }
}

#[test]
fn a_panicking_discard_at_thread_exit_does_not_abort() {
    test_support::isolated(
        "a_panicking_discard_at_thread_exit_does_not_abort",
        "exit-bomb",
        Duration::from_secs(60),
        || {
            std::panic::set_hook(Box::new(|_| {}));
            let cache = Arc::new(
                KmemCache::<Bomb>::builder("exit-bomb")
                    .ctor(|| Bomb { _pad: [0; 8] })
                    .build()
                    .unwrap(),
            );
            for round in 0..20 {
                let c = Arc::clone(&cache);
                std::thread::spawn(move || {
                    let objs: Vec<NonNull<Bomb>> = (0..2_000 + round * 37)
                        .map(|_| c.alloc().unwrap())
                        .collect();
                    ARMED.store(true, Ordering::Relaxed);
                    for p in objs {
                        // SAFETY: from this cache, freed once, never used again.
                        let _ = catch_unwind(AssertUnwindSafe(|| unsafe { c.free(p) }));
                    }
                })
                .join()
                .unwrap();
                ARMED.store(false, Ordering::Relaxed);
            }
            println!("no abort");
        },
    );
}
