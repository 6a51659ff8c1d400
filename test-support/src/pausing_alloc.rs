//! A global allocator that holds one chosen thread inside its next allocation, so that a test
//! can act (fork, say) while that thread is in the middle of some first-time initialisation.
//!
//! A test binary installs it with
//! `#[global_allocator] static A: test_support::pausing_alloc::PausingAlloc = PausingAlloc;`,
//! then calls [`hold_in_first_allocation`] and, once done, [`release`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// 0: allocations go through; 1: the next allocation of an armed thread pauses (the value
/// becomes 2 while it waits, until [`release`] stores 0). Relaxed throughout: the waits only
/// sleep and poll, and the threads' own work is ordered by the joins and forks around them.
static PAUSE: AtomicU32 = AtomicU32::new(0);

std::thread_local! {
    /// Whether this thread's allocations may pause (const, no destructor: no allocation).
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// The allocator (forwards to `System`; an armed thread's next allocation waits while paused).
#[derive(Debug)]
pub struct PausingAlloc;

// SAFETY: forwards to `System`; the pause only sleeps.
unsafe impl GlobalAlloc for PausingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ARMED.try_with(Cell::get).unwrap_or(false)
            && PAUSE
                .compare_exchange(1, 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            while PAUSE.load(Ordering::Relaxed) == 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(p, l) }
    }
}

/// Runs `f` on a new thread whose first allocation inside `f` pauses, and returns once the
/// thread is held there. Panics with `what` if `f` has not allocated within 10 s.
pub fn hold_in_first_allocation(what: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    PAUSE.store(1, Ordering::Relaxed);
    let t = std::thread::spawn(move || {
        ARMED.with(|a| a.set(true));
        f();
        ARMED.with(|a| a.set(false));
    });
    let t0 = Instant::now();
    while PAUSE.load(Ordering::Relaxed) != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what} never allocated"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t
}

/// Lets the held thread go on.
pub fn release() {
    PAUSE.store(0, Ordering::Relaxed);
}
