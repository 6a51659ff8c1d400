//! # urcu-compat: liburcu's memb ABI over rcu-kit
//!
//! A C library (`liburcu.so`, SONAME `liburcu.so.8`, and `liburcu.a`) exporting the functions
//! and the data symbol that programs built against liburcu 0.14's default flavour ("memb", the
//! membarrier-based one) call when they are compiled without `_LGPL_SOURCE`: the read side, thread
//! registration, `synchronize_rcu`, `call_rcu` and its `call_rcu_data` handles, `rcu_barrier`,
//! the polled grace-period API, the fork hooks, `defer_rcu`, the out-of-line pointer accessors,
//! the futex fallbacks and `urcu_memb_flavor`. Grace periods, callbacks and barriers are
//! rcu-core's: its per-CPU callback invokers, its stall reports, its sub-millisecond barrier.
//!
//! Programs compiled with `_LGPL_SOURCE` inline liburcu's read side, which reads and writes
//! liburcu's private per-thread reader layout (`urcu_memb_reader`, `urcu_memb_gp`): that is not
//! provided, and such programs must be rebuilt without `_LGPL_SOURCE`.
//!
//! # Implementation
//!
//! * **Readers.** Each C thread gets its own reader record of rcu-core's global domain
//!   ([`rcu_core::raw::Domain::register`]), separate from the record rcu-core's Rust guards use
//!   on the same thread. `urcu_memb_read_lock`/`unlock` are the domain's `read_lock`/
//!   `read_unlock` on it (nesting and async-signal safety are the record's), plus a thread-local
//!   depth counter of this library used for `read_ongoing` and for misuse checks.
//! * **Invariants.**
//!   1. `LOCAL.rec` is null or a record registered by this thread and not yet given back; only
//!      this thread uses it.
//!   2. `LOCAL.depth` equals the nesting of the record's read-side critical section as seen by
//!      the C program (lock and unlock change both; a signal handler's nested pair restores
//!      both before it returns).
//!   3. A record is given back (`unregister`) only at depth 0: by `urcu_memb_unregister_thread`
//!      or by the thread-exit hook (a pthread key destructor, so that a reader in another
//!      library's key destructor, which runs after Rust's thread-local destructors, is covered). A thread that exits inside a section keeps its record, and
//!      grace periods wait for it forever, as with liburcu (a message says so).
//!   4. Callbacks are queued with [`rcu_core::call_rcu_raw`] on the `rcu_head` itself: the head's
//!      16 bytes `{next, func}` are the only memory of the caller written, and the trampoline
//!      reads `func` before calling it and never touches the head afterwards.
//! * **Thread registration is implicit too**: a read lock on a thread that never registered
//!   registers it (liburcu leaves that undefined). Registration is not reentrant (nor is the
//!   engine's initialisation, which the first one runs): a signal handler that takes a read lock
//!   while its thread is inside `register_slow` aborts with a message instead of waiting for
//!   itself.
//! * **Misuse** that would deadlock (`synchronize_rcu` or `rcu_barrier` inside a read-side
//!   critical section of the calling thread, unlock without lock, unregister inside a section)
//!   prints a message naming the call and aborts. A panic of rcu-core (its misuse checks, such as
//!   `rcu_barrier` from a callback) is caught at the boundary, reported, and aborts: no unwind
//!   crosses `extern "C"`.
//! * **When a callback cannot be queued** (no memory, or the lists at their bound), rcu-core's
//!   `call_rcu` waits for a grace period and runs the callback itself; its check for a caller
//!   inside a read-side critical section sees only its own records, so a C thread that calls
//!   `call_rcu` inside its section at that moment waits for itself.
//! * **call_rcu_data** handles are tokens: creating, setting and getting them behaves as in
//!   liburcu (per-thread, per-CPU, default), but every callback runs on rcu-core's invoker of the
//!   CPU the caller runs on, whichever handle applies. Flags and CPU affinity of a handle are
//!   recorded, not acted on; `get_call_rcu_thread` returns 0 (there is no thread per handle).
//! * **fork().** rcu-core's `pthread_atfork` handlers keep grace periods and queued callbacks
//!   working in the child; this library's child handler (installed after rcu-core's, so it runs
//!   after them) gives the forking thread a fresh record with the same depth, since the child
//!   reset frees the records of every thread but rcu-core's own. The `call_rcu_*_fork` hooks
//!   pause callback invocation between two callbacks (`before`) and resume it (`after_*`), as
//!   liburcu's do: a fork between them leaves no callback taken by a callback thread but not
//!   yet entered, which the child would otherwise never run.
//! * **defer_rcu** queues `fct(p)` with [`rcu_core::call_rcu`] (two words: stored without
//!   allocation); `rcu_defer_barrier*` is `rcu_barrier`.
//! * **Memory orderings.** The read side is rcu-core's (its light/heavy barrier pair). The depth
//!   counter is thread-private (a `Cell`). `rcu_set_pointer_sym` is a Release store (pairs with
//!   the dependency-ordered load of `rcu_dereference_sym`'s caller); `rcu_xchg_pointer_sym` and
//!   `rcu_cmpxchg_pointer_sym` are SeqCst, like liburcu's full-barrier `uatomic` operations.

#![allow(unsafe_code)]

use core::cell::Cell;
use core::ffi::{c_int, c_long, c_ulong, c_void};
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use rcu_core::raw::{global_domain, Record};
use rcu_core::{GpSeq, GpState};

/// `struct rcu_head` of liburcu: embedded in the caller's object; 16 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct RcuHead {
    next: *mut RcuHead,
    func: Option<unsafe extern "C" fn(*mut RcuHead)>,
}

/// `struct urcu_gp_poll_state`: an `unsigned long` returned and passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UrcuGpPollState {
    grace_period_id: c_ulong,
}

/// A `struct call_rcu_data *` handle: a token (module docs).
#[derive(Debug)]
pub struct CallRcuData {
    _flags: c_ulong,
    _cpu_affinity: c_int,
}

/// The calling C thread's reader state (Invariants 1 and 2).
struct Local {
    rec: Cell<*const Record>,
    depth: Cell<u32>,
    /// True while `register_slow` runs on this thread: a signal handler that interrupts it
    /// cannot register (the steps are not reentrant) and would wait for itself.
    registering: Cell<bool>,
    crdp: Cell<*mut CallRcuData>,
}

thread_local! {
    /// No destructor, so always accessible, also from other thread-local destructors.
    static LOCAL: Local = const {
        Local {
            rec: Cell::new(ptr::null()),
            depth: Cell::new(0),
            registering: Cell::new(false),
            crdp: Cell::new(ptr::null_mut()),
        }
    };
}

/// Gives the record back when the thread exits (Invariant 3): the destructor of a pthread key,
/// not of a Rust thread-local. Rust's thread-local destructors run before pthread key
/// destructors, so a reader in another library's key destructor would register a record after
/// them and keep it for good (one leaked, forever scanned record per such thread). A key
/// destructor that registers again sets the key again, and the C library then runs this
/// destructor in its next round.
extern "C" fn exit_key_dtor(_: *mut c_void) {
    let _ = LOCAL.try_with(|l| {
        let rec = l.rec.get();
        if rec.is_null() {
            return;
        }
        if l.depth.get() != 0 {
            eprintln!(
                "liburcu (rcu-kit): a thread exited inside an RCU read-side critical section \
                 (nesting depth {}); grace periods will wait for it forever",
                l.depth.get()
            );
            return;
        }
        l.rec.set(ptr::null());
        // SAFETY: Invariant 1: `rec` was registered by this thread and not given back.
        global_domain().unregister(unsafe { &*rec });
    });
}

/// The key of [`exit_key_dtor`]; `None` if none could be created (records then stay
/// registered, quiescent, after their thread exits).
fn exit_key() -> Option<libc::pthread_key_t> {
    static KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();
    *KEY.get_or_init(|| {
        let mut k: libc::pthread_key_t = 0;
        // SAFETY: `k` is a valid out-pointer; the destructor is a plain function.
        let r = unsafe { libc::pthread_key_create(&mut k, Some(exit_key_dtor)) };
        if r != 0 {
            eprintln!(
                "liburcu (rcu-kit): pthread_key_create failed ({r}): records of exiting \
                 threads are not given back"
            );
            return None;
        }
        Some(k)
    })
}

/// Runs `f`, turning a panic into a message and an abort (no unwind crosses `extern "C"`).
#[inline(always)]
fn ffi<R>(name: &str, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => panicked(name, p),
    }
}

#[cold]
#[inline(never)]
fn panicked(name: &str, p: Box<dyn std::any::Any + Send>) -> ! {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    eprintln!("liburcu (rcu-kit): fatal error in {name}(): {msg}; aborting");
    std::process::abort()
}

#[cold]
#[inline(never)]
fn misuse(msg: std::fmt::Arguments<'_>) -> ! {
    eprintln!("liburcu (rcu-kit): {msg}; aborting");
    std::process::abort()
}

/// Aborts if the calling thread is inside a read-side critical section: `what` would wait for it.
fn assert_not_in_reader(what: &str) {
    let d = LOCAL.with(|l| l.depth.get());
    if d != 0 {
        misuse(format_args!(
            "{what}() called inside an RCU read-side critical section (nesting depth {d}): it \
             would wait for the caller's own reader forever"
        ));
    }
}

static FORK_HANDLER: Once = Once::new();

extern "C" fn after_fork_child() {
    let _ = LOCAL.try_with(|l| {
        if l.rec.get().is_null() {
            return;
        }
        // rcu-core's child handler (which ran before this one) freed the record: take a new one
        // and bring it to the same depth.
        let rec = global_domain().register();
        for _ in 0..l.depth.get() {
            global_domain().read_lock(rec);
        }
        l.rec.set(rec);
    });
}

#[cold]
#[inline(never)]
fn register_slow(l: &Local) -> &'static Record {
    if l.registering.get() {
        misuse(format_args!(
            "a signal handler used RCU while its thread was being registered (the \
             registration, or the library's initialisation, is not reentrant and would wait for \
             itself): register the thread with urcu_memb_register_thread() before its signal \
             handlers take read locks"
        ));
    }
    l.registering.set(true);
    let rec = register_slow_inner(l);
    l.registering.set(false);
    rec
}

fn register_slow_inner(l: &Local) -> &'static Record {
    let dom = global_domain(); // installs rcu-core's fork handlers first
    FORK_HANDLER.call_once(|| {
        // SAFETY: registers a plain function with no captured state.
        let r = unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
        if r != 0 {
            eprintln!(
                "liburcu (rcu-kit): pthread_atfork failed ({r}): fork() children may not use RCU"
            );
        }
    });
    let rec = dom.register();
    l.rec.set(rec);
    if let Some(k) = exit_key() {
        // SAFETY: `k` is a key created above; any non-null value makes its destructor run.
        unsafe { libc::pthread_setspecific(k, ptr::NonNull::<c_void>::dangling().as_ptr()) };
    }
    rec
}

#[inline(always)]
fn record(l: &Local) -> &'static Record {
    let p = l.rec.get();
    if p.is_null() {
        return register_slow(l);
    }
    // SAFETY: Invariant 1: registered by this thread, not given back; records live forever.
    unsafe { &*p }
}

// ---------------------------------------------------------------------------------------------
// Read side and registration.

/// `rcu_read_lock()`.
#[no_mangle]
pub extern "C" fn urcu_memb_read_lock() {
    ffi("urcu_memb_read_lock", || {
        LOCAL.with(|l| {
            let rec = record(l);
            global_domain().read_lock(rec);
            l.depth.set(l.depth.get() + 1);
        })
    })
}

/// `rcu_read_unlock()`.
#[no_mangle]
pub extern "C" fn urcu_memb_read_unlock() {
    ffi("urcu_memb_read_unlock", || {
        LOCAL.with(|l| {
            let d = l.depth.get();
            let p = l.rec.get();
            if d == 0 || p.is_null() {
                misuse(format_args!(
                    "urcu_memb_read_unlock() called without a matching urcu_memb_read_lock()"
                ));
            }
            l.depth.set(d - 1);
            // SAFETY: Invariant 1.
            global_domain().read_unlock(unsafe { &*p });
        })
    })
}

/// `rcu_read_ongoing()`: whether the calling thread is inside a read-side critical section.
#[no_mangle]
pub extern "C" fn urcu_memb_read_ongoing() -> c_int {
    LOCAL.with(|l| (l.depth.get() != 0) as c_int)
}

/// `rcu_register_thread()` (idempotent).
#[no_mangle]
pub extern "C" fn urcu_memb_register_thread() {
    ffi("urcu_memb_register_thread", || {
        LOCAL.with(|l| {
            let _ = record(l);
        })
    })
}

/// `rcu_unregister_thread()`.
#[no_mangle]
pub extern "C" fn urcu_memb_unregister_thread() {
    ffi("urcu_memb_unregister_thread", || {
        LOCAL.with(|l| {
            let p = l.rec.get();
            if p.is_null() {
                return;
            }
            if l.depth.get() != 0 {
                misuse(format_args!(
                    "urcu_memb_unregister_thread() called inside an RCU read-side critical \
                     section (nesting depth {})",
                    l.depth.get()
                ));
            }
            l.rec.set(ptr::null());
            // SAFETY: Invariant 1; quiescent (depth 0, Invariant 3).
            global_domain().unregister(unsafe { &*p });
        })
    })
}

/// `rcu_init()`: optional; the library initialises itself on first use.
#[no_mangle]
pub extern "C" fn urcu_memb_init() {
    ffi("urcu_memb_init", || {
        let _ = global_domain();
    })
}

/// `rcu_exit()`: nothing to release.
#[no_mangle]
pub extern "C" fn urcu_memb_exit() {}

// ---------------------------------------------------------------------------------------------
// Grace periods.

/// `synchronize_rcu()`.
#[no_mangle]
pub extern "C" fn urcu_memb_synchronize_rcu() {
    ffi("urcu_memb_synchronize_rcu", || {
        assert_not_in_reader("urcu_memb_synchronize_rcu");
        rcu_core::synchronize_rcu();
    })
}

/// `start_poll_synchronize_rcu()`.
#[no_mangle]
pub extern "C" fn urcu_memb_start_poll_synchronize_rcu() -> UrcuGpPollState {
    ffi("urcu_memb_start_poll_synchronize_rcu", || UrcuGpPollState {
        grace_period_id: rcu_core::start_poll_synchronize_rcu().seq().raw(),
    })
}

/// `poll_state_synchronize_rcu(state)`.
#[no_mangle]
pub extern "C" fn urcu_memb_poll_state_synchronize_rcu(state: UrcuGpPollState) -> bool {
    ffi("urcu_memb_poll_state_synchronize_rcu", || {
        let s = GpState::from_seq(GpSeq::from_raw(state.grace_period_id));
        rcu_core::poll_state_synchronize_rcu(s)
    })
}

// ---------------------------------------------------------------------------------------------
// call_rcu and barriers.

/// Runs the C callback of a queued head (Invariant 4).
///
/// # Safety
/// `data` is the `rcu_head` given to `urcu_memb_call_rcu`, with `func` set by it.
unsafe fn run_head(data: *mut ()) {
    let head = data as *mut RcuHead;
    // SAFETY: the head is the caller's, untouched since `call_rcu` (its contract); `func` is read
    // before the call, and the head is not touched after it.
    let func = unsafe { (*head).func };
    if let Some(f) = func {
        // SAFETY: the C caller's contract: `func(head)` may run after a grace period.
        unsafe { f(head) }
    }
}

/// `call_rcu(head, func)`: `func(head)` runs after a grace period.
///
/// # Safety
/// `head` points to a writable `struct rcu_head` that stays valid until `func` runs.
#[no_mangle]
pub unsafe extern "C" fn urcu_memb_call_rcu(
    head: *mut RcuHead,
    func: Option<unsafe extern "C" fn(*mut RcuHead)>,
) {
    ffi("urcu_memb_call_rcu", || {
        // SAFETY: the caller's contract; only the head's 16 bytes are written (Invariant 4).
        unsafe {
            ptr::addr_of_mut!((*head).next).write(ptr::null_mut());
            ptr::addr_of_mut!((*head).func).write(func);
        }
        // SAFETY: `run_head` reads the head just written and calls `func` once, after a grace
        // period, which the caller's contract allows from any thread.
        unsafe { rcu_core::call_rcu_raw(run_head, head as *mut ()) };
    })
}

/// `rcu_barrier()`: waits until every callback queued before it has run.
#[no_mangle]
pub extern "C" fn urcu_memb_barrier() {
    ffi("urcu_memb_barrier", || {
        assert_not_in_reader("urcu_memb_barrier");
        rcu_core::rcu_barrier();
    })
}

/// The default handle.
static DEFAULT_CRD: CallRcuData = CallRcuData {
    _flags: 0,
    _cpu_affinity: -1,
};

fn default_crd() -> *mut CallRcuData {
    ptr::addr_of!(DEFAULT_CRD) as *mut CallRcuData
}

/// Per-CPU handles, `possible_cpus()` slots.
fn cpu_table() -> &'static [AtomicPtr<CallRcuData>] {
    static T: OnceLock<Box<[AtomicPtr<CallRcuData>]>> = OnceLock::new();
    T.get_or_init(|| {
        (0..rcu_core::cpu::possible_cpus())
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect()
    })
}

/// `create_call_rcu_data(flags, cpu_affinity)`: a new handle (a token, module docs).
#[no_mangle]
pub extern "C" fn urcu_memb_create_call_rcu_data(
    flags: c_ulong,
    cpu_affinity: c_int,
) -> *mut CallRcuData {
    ffi("urcu_memb_create_call_rcu_data", || {
        Box::into_raw(Box::new(CallRcuData {
            _flags: flags,
            _cpu_affinity: cpu_affinity,
        }))
    })
}

/// `call_rcu_data_free(crdp)`: callbacks queued through it still run (they are the invokers').
///
/// # Safety
/// `crdp` is null, the default handle, or a handle created here, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn urcu_memb_call_rcu_data_free(crdp: *mut CallRcuData) {
    if crdp.is_null() || crdp == default_crd() {
        return;
    }
    // SAFETY: the caller's contract: created by `Box::into_raw` above, freed once. Handles are
    // never dereferenced by `call_rcu`, so a concurrent one holding it is harmless.
    drop(unsafe { Box::from_raw(crdp) });
}

/// `get_default_call_rcu_data()`.
#[no_mangle]
pub extern "C" fn urcu_memb_get_default_call_rcu_data() -> *mut CallRcuData {
    default_crd()
}

/// `get_cpu_call_rcu_data(cpu)`: null when none was set for `cpu`.
#[no_mangle]
pub extern "C" fn urcu_memb_get_cpu_call_rcu_data(cpu: c_int) -> *mut CallRcuData {
    ffi("urcu_memb_get_cpu_call_rcu_data", || {
        let t = cpu_table();
        match usize::try_from(cpu).ok().and_then(|c| t.get(c)) {
            // Acquire pairs with the Release stores that publish a handle.
            Some(slot) => slot.load(Ordering::Acquire),
            None => ptr::null_mut(),
        }
    })
}

/// `set_cpu_call_rcu_data(cpu, crdp)`: 0, or -1 with `errno` EINVAL (no such CPU) or EEXIST (a
/// handle is already set and `crdp` is not null).
#[no_mangle]
pub extern "C" fn urcu_memb_set_cpu_call_rcu_data(cpu: c_int, crdp: *mut CallRcuData) -> c_int {
    ffi("urcu_memb_set_cpu_call_rcu_data", || {
        let t = cpu_table();
        let Some(slot) = usize::try_from(cpu).ok().and_then(|c| t.get(c)) else {
            set_errno(libc::EINVAL);
            return -libc::EINVAL;
        };
        if crdp.is_null() {
            slot.store(ptr::null_mut(), Ordering::Release);
            return 0;
        }
        // Release: publishes the handle's fields to `get_cpu_call_rcu_data`.
        match slot.compare_exchange(ptr::null_mut(), crdp, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => 0,
            Err(_) => {
                set_errno(libc::EEXIST);
                -libc::EEXIST
            }
        }
    })
}

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// `create_all_cpu_call_rcu_data(flags)`: a handle for every CPU that has none; 0.
#[no_mangle]
pub extern "C" fn urcu_memb_create_all_cpu_call_rcu_data(flags: c_ulong) -> c_int {
    ffi("urcu_memb_create_all_cpu_call_rcu_data", || {
        for (cpu, slot) in cpu_table().iter().enumerate() {
            if !slot.load(Ordering::Acquire).is_null() {
                continue;
            }
            let h = urcu_memb_create_call_rcu_data(flags, cpu as c_int);
            if slot
                .compare_exchange(ptr::null_mut(), h, Ordering::Release, Ordering::Relaxed)
                .is_err()
            {
                // SAFETY: `h` was never published.
                unsafe { urcu_memb_call_rcu_data_free(h) };
            }
        }
        0
    })
}

/// `free_all_cpu_call_rcu_data()`.
#[no_mangle]
pub extern "C" fn urcu_memb_free_all_cpu_call_rcu_data() {
    ffi("urcu_memb_free_all_cpu_call_rcu_data", || {
        for slot in cpu_table() {
            let h = slot.swap(ptr::null_mut(), Ordering::AcqRel);
            // SAFETY: taken out of the table, so freed once; handles are tokens (see the free).
            unsafe { urcu_memb_call_rcu_data_free(h) };
        }
    })
}

/// `get_thread_call_rcu_data()`.
#[no_mangle]
pub extern "C" fn urcu_memb_get_thread_call_rcu_data() -> *mut CallRcuData {
    LOCAL.with(|l| l.crdp.get())
}

/// `set_thread_call_rcu_data(crdp)`.
#[no_mangle]
pub extern "C" fn urcu_memb_set_thread_call_rcu_data(crdp: *mut CallRcuData) {
    LOCAL.with(|l| l.crdp.set(crdp))
}

/// `get_call_rcu_data()`: the thread's handle, else its CPU's, else the default.
#[no_mangle]
pub extern "C" fn urcu_memb_get_call_rcu_data() -> *mut CallRcuData {
    let t = urcu_memb_get_thread_call_rcu_data();
    if !t.is_null() {
        return t;
    }
    let c = urcu_memb_get_cpu_call_rcu_data(rcu_core::cpu::current_cpu() as c_int);
    if !c.is_null() {
        return c;
    }
    default_crd()
}

/// `get_call_rcu_thread(crdp)`: 0, as no thread belongs to a handle (module docs).
#[no_mangle]
pub extern "C" fn urcu_memb_get_call_rcu_thread(_crdp: *mut CallRcuData) -> libc::pthread_t {
    0
}

/// `call_rcu_before_fork()`: pauses the callback threads between two callbacks, as liburcu
/// does, so that a `fork()` before the matching `after_fork` hook finds no callback taken but not
/// yet entered (one would run in neither process's copy of the child); rcu-core's own
/// `pthread_atfork` handlers do the rest.
#[no_mangle]
pub extern "C" fn urcu_memb_call_rcu_before_fork() {
    ffi(
        "urcu_memb_call_rcu_before_fork",
        rcu_core::raw::pause_callbacks,
    )
}

/// `call_rcu_after_fork_parent()`: resumes the callback threads.
#[no_mangle]
pub extern "C" fn urcu_memb_call_rcu_after_fork_parent() {
    ffi(
        "urcu_memb_call_rcu_after_fork_parent",
        rcu_core::raw::resume_callbacks,
    )
}

/// `call_rcu_after_fork_child()`: resumes callback invocation in the child.
#[no_mangle]
pub extern "C" fn urcu_memb_call_rcu_after_fork_child() {
    ffi(
        "urcu_memb_call_rcu_after_fork_child",
        rcu_core::raw::resume_callbacks,
    )
}

// ---------------------------------------------------------------------------------------------
// defer_rcu.

/// A C callback and its argument, moved to an invoker thread.
struct Deferred(unsafe extern "C" fn(*mut c_void), *mut c_void);

// SAFETY: `defer_rcu`'s contract: `fct(p)` may run on another thread.
unsafe impl Send for Deferred {}

/// `defer_rcu(fct, p)`: `fct(p)` runs after a grace period.
///
/// # Safety
/// `fct(p)` must be sound to call once, from another thread, after a grace period.
#[no_mangle]
pub unsafe extern "C" fn urcu_memb_defer_rcu(
    fct: Option<unsafe extern "C" fn(*mut c_void)>,
    p: *mut c_void,
) {
    let Some(fct) = fct else { return };
    ffi("urcu_memb_defer_rcu", || {
        let d = Deferred(fct, p);
        rcu_core::call_rcu(move || {
            let d = d;
            // SAFETY: the caller's contract.
            unsafe { (d.0)(d.1) }
        });
    })
}

/// `rcu_defer_register_thread()`: 0 (nothing per thread to set up).
#[no_mangle]
pub extern "C" fn urcu_memb_defer_register_thread() -> c_int {
    0
}

/// `rcu_defer_unregister_thread()`: the thread's deferred callbacks run as queued.
#[no_mangle]
pub extern "C" fn urcu_memb_defer_unregister_thread() {}

/// `rcu_defer_barrier()`: every `defer_rcu` callback queued before it has run.
#[no_mangle]
pub extern "C" fn urcu_memb_defer_barrier() {
    urcu_memb_barrier()
}

/// `rcu_defer_barrier_thread()`: as [`urcu_memb_defer_barrier`].
#[no_mangle]
pub extern "C" fn urcu_memb_defer_barrier_thread() {
    urcu_memb_barrier()
}

/// `rcu_defer_exit()`: nothing to release.
#[no_mangle]
pub extern "C" fn urcu_memb_defer_exit() {}

// ---------------------------------------------------------------------------------------------
// Out-of-line pointer accessors (liburcu's `*_sym` functions).

/// `rcu_dereference_sym(p)`: `p` (the caller's load carries the dependency).
#[no_mangle]
pub extern "C" fn rcu_dereference_sym(p: *mut c_void) -> *mut c_void {
    p
}

/// `rcu_set_pointer_sym(p, v)`: publishes `v` in `*p` (Release); returns `v`.
///
/// # Safety
/// `p` is valid, aligned, and accessed atomically by others.
#[no_mangle]
pub unsafe extern "C" fn rcu_set_pointer_sym(p: *mut *mut c_void, v: *mut c_void) -> *mut c_void {
    // SAFETY: the caller's contract; `AtomicPtr` has the layout of a pointer.
    unsafe { AtomicPtr::from_ptr(p) }.store(v, Ordering::Release);
    v
}

/// `rcu_xchg_pointer_sym(p, v)`: stores `v`, returns the old value (full barrier).
///
/// # Safety
/// As [`rcu_set_pointer_sym`].
#[no_mangle]
pub unsafe extern "C" fn rcu_xchg_pointer_sym(p: *mut *mut c_void, v: *mut c_void) -> *mut c_void {
    // SAFETY: as in `rcu_set_pointer_sym`.
    unsafe { AtomicPtr::from_ptr(p) }.swap(v, Ordering::SeqCst)
}

/// `rcu_cmpxchg_pointer_sym(p, old, new)`: stores `new` if `*p == old`; returns the value found.
///
/// # Safety
/// As [`rcu_set_pointer_sym`].
#[no_mangle]
pub unsafe extern "C" fn rcu_cmpxchg_pointer_sym(
    p: *mut *mut c_void,
    old: *mut c_void,
    new: *mut c_void,
) -> *mut c_void {
    // SAFETY: as in `rcu_set_pointer_sym`.
    match unsafe { AtomicPtr::from_ptr(p) }.compare_exchange(
        old,
        new,
        Ordering::SeqCst,
        Ordering::SeqCst,
    ) {
        Ok(v) | Err(v) => v,
    }
}

// ---------------------------------------------------------------------------------------------
// Futex fallbacks (liburcu calls them when the futex system call is missing; here it is not).

/// `compat_futex_noasync(...)`: the futex system call; -1 with `errno` on failure.
///
/// # Safety
/// As for `futex(2)`.
#[no_mangle]
pub unsafe extern "C" fn compat_futex_noasync(
    uaddr: *mut i32,
    op: c_int,
    val: i32,
    timeout: *const libc::timespec,
    uaddr2: *mut i32,
    val3: i32,
) -> c_int {
    // SAFETY: the caller's contract.
    unsafe { libc::syscall(libc::SYS_futex, uaddr, op, val, timeout, uaddr2, val3) as c_int }
}

/// `compat_futex_async(...)`: as [`compat_futex_noasync`].
///
/// # Safety
/// As for `futex(2)`.
#[no_mangle]
pub unsafe extern "C" fn compat_futex_async(
    uaddr: *mut i32,
    op: c_int,
    val: i32,
    timeout: *const libc::timespec,
    uaddr2: *mut i32,
    val3: i32,
) -> c_int {
    // SAFETY: the caller's contract.
    unsafe { compat_futex_noasync(uaddr, op, val, timeout, uaddr2, val3) }
}

// ---------------------------------------------------------------------------------------------
// The flavour table.

/// `struct rcu_flavor_struct` of liburcu 0.14 (`urcu/flavor.h`), field for field.
#[repr(C)]
#[derive(Debug)]
pub struct RcuFlavorStruct {
    read_lock: extern "C" fn(),
    read_unlock: extern "C" fn(),
    read_ongoing: extern "C" fn() -> c_int,
    read_quiescent_state: extern "C" fn(),
    update_call_rcu: unsafe extern "C" fn(*mut RcuHead, Option<unsafe extern "C" fn(*mut RcuHead)>),
    update_synchronize_rcu: extern "C" fn(),
    update_defer_rcu: unsafe extern "C" fn(Option<unsafe extern "C" fn(*mut c_void)>, *mut c_void),
    thread_offline: extern "C" fn(),
    thread_online: extern "C" fn(),
    register_thread: extern "C" fn(),
    unregister_thread: extern "C" fn(),
    barrier: extern "C" fn(),
    register_rculfhash_atfork: extern "C" fn(*mut c_void),
    unregister_rculfhash_atfork: extern "C" fn(*mut c_void),
    update_start_poll_synchronize_rcu: extern "C" fn() -> UrcuGpPollState,
    update_poll_state_synchronize_rcu: extern "C" fn(UrcuGpPollState) -> bool,
}

/// memb has no quiescent states or offline periods (they are no-ops in liburcu too).
extern "C" fn nop() {}

/// The hash table's fork hooks: rcu-core's own fork handling covers the callbacks they guard.
extern "C" fn nop_atfork(_: *mut c_void) {}

/// `urcu_memb_flavor` (`rcu_flavor`): the flavour table that liburcu's data structures
/// (`cds_lfht` and friends) are given.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static urcu_memb_flavor: RcuFlavorStruct = RcuFlavorStruct {
    read_lock: urcu_memb_read_lock,
    read_unlock: urcu_memb_read_unlock,
    read_ongoing: urcu_memb_read_ongoing,
    read_quiescent_state: nop,
    update_call_rcu: urcu_memb_call_rcu,
    update_synchronize_rcu: urcu_memb_synchronize_rcu,
    update_defer_rcu: urcu_memb_defer_rcu,
    thread_offline: nop,
    thread_online: nop,
    register_thread: urcu_memb_register_thread,
    unregister_thread: urcu_memb_unregister_thread,
    barrier: urcu_memb_barrier,
    register_rculfhash_atfork: nop_atfork,
    unregister_rculfhash_atfork: nop_atfork,
    update_start_poll_synchronize_rcu: urcu_memb_start_poll_synchronize_rcu,
    update_poll_state_synchronize_rcu: urcu_memb_poll_state_synchronize_rcu,
};

// Layout checks against liburcu's ABI.
const _: () = assert!(core::mem::size_of::<RcuHead>() == 16);
const _: () = assert!(core::mem::size_of::<UrcuGpPollState>() == core::mem::size_of::<c_ulong>());
const _: () = assert!(core::mem::size_of::<RcuFlavorStruct>() == 16 * 8);
const _: () = assert!(core::mem::size_of::<c_long>() == 8);
