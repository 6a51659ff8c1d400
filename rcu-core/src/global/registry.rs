//! The thread registry of the global domain: a thread's record, cached in a thread-local, and
//! the exit hook that gives it back.
//!
//! # Implementation
//!
//! * **Registration.** A thread's first guard claims a record ([`crate::reader::Registry`]) and
//!   caches it in a `const`-initialised thread-local without destructor (one `fs:`-relative load
//!   on the fast path). A second thread-local with a destructor (the *exit hook*) gives the
//!   record back at thread exit. A thread that takes its first guard while its thread-locals are
//!   being destroyed, or with no heap to register the hook ("Short of memory"), keeps its
//!   record for good (it is then scanned, quiescent, forever; it cannot be reused).
//! * **Exit inside a section.** A guard that was never dropped (leaked, or stored in a
//!   thread-local whose destructor runs after the exit hook) keeps its section open: references
//!   read under a leaked guard are `&'static` and may have left the thread. So the exit hook,
//!   finding nesting above zero, reports the exit once (`StallKind::ExitedInCriticalSection`),
//!   marks the record `exited` and its word (the `EXITED` mark added to the nesting field: the
//!   snapshot and the depth stay as they are) and leaves it owned, with the thread's `LOCAL` as
//!   it is (reader Invariant 5). Grace periods wait for it like for any reader, and the stall
//!   reporter names it while they do. A guard dropped later by another thread-local destructor
//!   unlocks its own record (never another thread's: the record was not handed out), and the
//!   outermost such unlock gives the record back. A leaked guard's section never ends: grace
//!   periods (and the callbacks waiting for them) wait forever, as crossbeam-epoch does for a
//!   leaked guard — never an abort, since storing a guard in a thread-local is legal.
//!
//!   *Exactly one give-back, with signal handlers.* A registered thread's signal handlers may
//!   take guards, also while that late destructor drops the last one. The outermost unlock
//!   (`reader::unlock`) is: U1 load the word (nesting field `EXITED + 1`); U2 clear `exited`;
//!   U3 store `word = 0` (Release: ends the section and removes the mark in one store); then
//!   [`exited_section_ended`]: L1 `LOCAL = null`; a signal fence; R1 `owned = false`
//!   (Release, `Registry::release`); nothing touches the record after R1. A handler that takes
//!   and drops a guard at each boundary:
//!   - before U3: the word is marked with depth 1, so its guard nests (reader Invariant 4) and
//!     its unlock, finding `EXITED + 2`, is not outermost: it gives nothing back;
//!   - between U3 and L1: the word is 0 and unmarked, and the record is still this thread's:
//!     the handler's outermost lock and unlock use it like any section of this thread and find
//!     nesting 1, so they give nothing back;
//!   - between L1 and R1, or after R1: `LOCAL` is null, so the handler never sees the record,
//!     owned or free; its guard registers the thread anew, like a guard on any thread after its
//!     exit hook ran: the new record (possibly this one again once R1 made it free, then claimed
//!     by the CAS like any free record) is kept for good, thread-local teardown being under way.
//!
//!   So the record is given back once, by the interrupted drop, and no thread ever locks a record
//!   it does not own. The decision rests on the word alone, which only single stores change, so
//!   no handler can compete for it (reader Invariant 6); and the fast path's outermost unlock
//!   tests only the word it loaded. One limit, shared with every thread whose exit hook has run:
//!   a guard taken in a handler *after L1* registers, which may allocate (a new record, the
//!   thread's name) and is not async-signal-safe; the guarantee for handlers is for registered
//!   threads.

use core::cell::Cell;

use crate::primitive::rcu_thread_local;
use crate::primitive::sync::atomic::Ordering;
use crate::reader::Record;
use crate::stall::{StallKind, StallReport};

use super::state::DOMAIN;

rcu_thread_local! {
    /// This thread's record, or null before registration. No destructor, so always accessible.
    pub(super) static LOCAL: Cell<*const Record> = const { Cell::new(core::ptr::null()) };
}
rcu_thread_local! {
    /// Gives the record back at thread exit (its destructor).
    static EXIT: ExitHook = const { ExitHook };
}

/// Registers the calling thread (`init` has run): claims a record, names it, touches the exit
/// hook and caches the record in `LOCAL`.
pub(super) fn register() -> &'static Record {
    let rec = DOMAIN.register();
    let mut name = [0u8; 17];
    rec.set_identity(crate::sys::gettid(), thread_name(&mut name));
    // Touch the exit hook so its destructor is registered; during thread-local teardown this
    // fails and the record simply stays owned (module docs). The C library aborts the process
    // if it cannot allocate its record of the destructor, so with no heap to spare the hook is
    // not touched at all, and the record stays owned the same way (`super` module docs, "Short of
    // memory").
    if crate::lowmem::heap_headroom(EXIT_HOOK_HEADROOM) {
        let _ = EXIT.try_with(|_| ());
    }
    LOCAL.with(|c| c.set(rec));
    rec
}

/// Heap the calling thread must be able to allocate before it touches the exit hook (whose
/// first touch makes the C library allocate its record of the destructor).
const EXIT_HOOK_HEADROOM: usize = 1024;

/// The calling thread's name from the kernel (works during thread-local teardown, unlike std).
fn thread_name(buf: &mut [u8; 17]) -> Option<&str> {
    // SAFETY: PR_GET_NAME writes at most 16 bytes including the NUL into a 16-byte buffer.
    let r = unsafe {
        libc::prctl(
            libc::PR_GET_NAME,
            buf.as_mut_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(16);
    // The kernel cuts names at 15 bytes, possibly inside a character: keep the valid prefix.
    let name = &buf[..end];
    Some(match core::str::from_utf8(name) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&name[..e.valid_up_to()]).unwrap_or_default(),
    })
}

/// Destructor of `EXIT`: gives the record back, unless the thread is inside a section (module
/// docs, "Exit inside a section").
struct ExitHook;
impl Drop for ExitHook {
    fn drop(&mut self) {
        let p = LOCAL.with(|c| c.get());
        if p.is_null() {
            return;
        }
        // SAFETY: as in `local_record`.
        let rec = unsafe { &*p };
        let nesting = rec.nesting();
        if nesting != 0 {
            // The section stays open and the record owned (reader Invariant 5); `LOCAL` keeps
            // pointing at it, so later thread-local destructors nest on it. Relaxed: read only by
            // this thread (its guards' drops) and by a single-threaded fork child.
            rec.exited.store(true, Ordering::Relaxed);
            crate::reader::mark_exited(rec);
            crate::stall::report(&StallReport {
                kind: StallKind::ExitedInCriticalSection,
                thread_name: rec.name(),
                tid: rec.tid.load(Ordering::Relaxed),
                duration: std::time::Duration::ZERO,
                gp: DOMAIN.current(),
                nesting,
            });
            return;
        }
        LOCAL.with(|c| c.set(core::ptr::null()));
        DOMAIN.unregister(rec);
    }
}

/// The outermost guard of a thread that exited inside its section was dropped (by a
/// thread-local destructor after the exit hook): the section is over, give the record back.
/// Called once per such section (`reader::unlock` found the exit mark in the word). Detaches
/// `LOCAL` first, then gives the record back: a signal handler that runs in between finds no
/// record and never the freed one (module docs, "Exit inside a section").
#[cold]
#[inline(never)]
pub(super) fn exited_section_ended(rec: &'static Record) {
    LOCAL.with(|c| {
        debug_assert!(
            core::ptr::eq(c.get(), rec),
            "an exited thread's record changed"
        );
        c.set(core::ptr::null());
    });
    // Signal fence: the store to `LOCAL` above is done before the record can be seen free (by
    // its next owner, or by a handler of this thread). Without it a handler could find `LOCAL`
    // still pointing at a record that another thread owns, and lock that thread's word. (The
    // Release store in `unregister` orders it for other threads already.)
    crate::primitive::sync::atomic::compiler_fence(Ordering::SeqCst);
    DOMAIN.unregister(rec);
}
