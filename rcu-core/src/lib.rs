//! # rcu-core: the grace-period engine of rcu-kit
//!
//! Read-copy update (RCU) lets readers traverse shared data with no locks and no atomic
//! read-modify-write, while writers publish new versions and free old ones only after a **grace
//! period**: a span of time by whose end every reader that could have seen the old version has
//! left its **read-side critical section**.
//!
//! * Readers: [`rcu_read_lock`] returns an [`RcuReadGuard`]; the critical section lasts until it is
//!   dropped. Guards nest, are not `Send`, and cost about as much as liburcu-memb's inlined read
//!   side (a thread-local word, a compiler fence; the writer pays with `membarrier`).
//! * Waiting: [`synchronize_rcu`] / [`synchronize_rcu_expedited`] block until a grace period has
//!   passed; concurrent callers share one.
//! * Deferring: [`call_rcu`] runs a closure after a grace period on a callback thread bound to
//!   the caller's CPU;
//!   [`rcu_barrier`] waits until every earlier callback has run.
//! * Polling: [`get_state_synchronize_rcu`], [`start_poll_synchronize_rcu`],
//!   [`poll_state_synchronize_rcu`], [`cond_synchronize_rcu`] (lock-free, no allocation once the
//!   callback worker thread runs; the first `start_poll_synchronize_rcu` of a process may start
//!   it).
//! * Owning pointers: [`RcuCell`] — [`RcuCell::read`]/[`RcuCell::load`] under a guard,
//!   [`RcuCell::replace`], [`RcuCell::take`], [`RcuCell::compare_exchange`] (retiring through
//!   `call_rcu`), [`RcuCell::replace_sync`] (waiting), and `*_with` variants taking a [`Retire`]
//!   strategy ([`RetireByCallRcu`], [`RetireBySync`]; the `rcu-kit` facade adds one for
//!   `kfree_rcu` and an `update(|old| new)` built on it).
//! * Per-CPU helpers: [`cpu::current_cpu`], [`cpu::possible_cpus`].
//!
//! Retiring an unpublished object: wait with [`synchronize_rcu`] and drop it; defer code with
//! [`call_rcu`]; or, one layer up, batch frees with `kfree_batch::kfree_rcu` (bounded memory) or
//! reuse objects at once from a `SLAB_TYPESAFE_BY_RCU` cache (`slab_backend`). The facade crate's
//! `guide` module compares the four.
//!
//! Misuse is an error, not a hang: blocking calls inside a critical section panic with a message
//! naming the "read-side critical section" ([`may_block`] tells beforehand); readers that stall
//! grace periods are reported through [`set_stall_hook`]; a thread that exits inside a critical
//! section is reported once, and its section stays open until its guard is dropped (never, for a
//! leaked guard: grace periods then wait forever, as for any reader that never unlocks).
//!
//! ```
//! use rcu_core::{rcu_read_lock, synchronize_rcu, RcuCell};
//! let config = RcuCell::new(Some(Box::new(1u32)));
//! let g = rcu_read_lock();
//! assert_eq!(config.read(&g), Some(&1));
//! drop(g);
//! let old = config.replace_sync(Some(Box::new(2)));
//! assert_eq!(old.as_deref(), Some(&1));
//! synchronize_rcu();
//! ```
//!
//! If `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` is unavailable, or `RCU_KIT_NO_MEMBARRIER=1`
//! is set, readers use real fences instead ([`barrier_mode`]). `fork()` children keep working.
//!
//! # Implementation: modules
//!
//! Bottom to top; a module uses the ones above it in this list, never one below it
//! (`tests/layering.rs` checks it):
//!
//! 1. `primitive` (std or loom), `util`, `seq` (grace-period sequence numbers), `sys` (futex
//!    locks, `membarrier`, CPU numbers), `lowmem` (thread start and reports without allocating),
//!    `fault` (fault injection), `stall` (stall reports).
//! 2. `reader` (reader records and the read side), `gp` (the [`raw::Domain`]: grace periods),
//!    `callback` (callback lists). The loom models run these alone.
//! 3. `background`: a lazily started, fork-aware background thread ([`raw::BackgroundThread`],
//!    also used by kfree-batch).
//! 4. `global`: the process-wide engine; its own modules, bottom to top: `state`, `invoker`,
//!    `registry`, `worker`, `fork`, then `global` itself with `init` and the free functions.
//! 5. `cell`: [`RcuCell`] over the free functions.

#![deny(unsafe_op_in_unsafe_fn)]
// Models compile only the raw core; the global layer and its helpers are out of the build.
#![cfg_attr(rcu_loom, allow(dead_code))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "rcu-core supports Linux only: it needs the membarrier(2) and futex(2) system calls, \
     sched_getcpu(3), gettid(2) and prctl(2)"
);

mod callback;
pub mod fault;
mod gp;
#[doc(hidden)]
pub mod lowmem;
mod primitive;
mod reader;
mod seq;
mod stall;
mod sys;
mod util;

#[cfg(not(rcu_loom))]
mod background;
#[cfg(not(rcu_loom))]
mod cell;
#[cfg(not(rcu_loom))]
mod global;

/// CPU numbers for per-CPU data (rseq when glibc registered it, else `sched_getcpu`).
pub mod cpu {
    pub use crate::sys::cpu::{current_cpu, possible_cpus};

    /// Lets the calling thread run on every CPU the process may use, undoing an affinity it
    /// inherited from the thread that created it (for background threads of the kit: a worker
    /// started by a pinned application thread must not stay on that thread's CPUs).
    pub fn unbind_thread() {
        crate::sys::cpu::unbind()
    }
}

pub use seq::GpSeq;
pub use stall::{
    report_stall, set_stall_hook, set_stall_timeout, stall_timeout, StallKind, StallReport,
    ThreadName, DEFAULT_STALL_TIMEOUT,
};
pub use sys::membarrier::Mode;
pub use util::CachePadded;

#[cfg(not(rcu_loom))]
pub use cell::{CompareExchangeError, RcuCell, Retire, RetireByCallRcu, RetireBySync};
#[cfg(not(rcu_loom))]
pub use global::{
    barrier_mode, call_rcu, call_rcu_raw, cond_synchronize_rcu, get_state_synchronize_rcu,
    may_block, poll_state_synchronize_rcu, rcu_barrier, rcu_read_lock, rcu_read_lock_held,
    start_poll_synchronize_rcu, stats, synchronize_rcu, synchronize_rcu_expedited, try_call_rcu,
    GpState, GpStats, RcuReadGuard,
};

/// The raw core, for loom models and white-box tests: a [`raw::Domain`] with explicit reader
/// records and callback lists, the same code the global functions run.
#[doc(hidden)]
pub mod raw {
    #[cfg(not(rcu_loom))]
    pub use crate::background::BackgroundThread;
    pub use crate::callback::CbList;
    #[cfg(not(rcu_loom))]
    pub use crate::global::{
        enter_no_barrier, global_domain, heavy_barrier, no_barrier_reason, pause_callbacks,
        resume_callbacks, NoBarrierScope,
    };
    pub use crate::gp::Domain;
    pub use crate::reader::Record;
    pub use crate::seq::newer;
    pub use crate::sys::lock::{futex_wait, futex_wake, futex_wake_all};
    pub use crate::util::monotonic_ns;
}

#[cfg(not(rcu_loom))]
impl GpState {
    /// The cookie whose sequence value is `seq` (the inverse of [`GpState::seq`]), for layers
    /// that carry a cookie as a plain integer, such as a C interface: `GpState::from_seq(
    /// GpSeq::from_raw(s.seq().raw()))` polls like `s`. A value that no call returned polls true
    /// once the sequence has passed it, like any cookie.
    pub fn from_seq(seq: GpSeq) -> GpState {
        GpState(seq)
    }
}
