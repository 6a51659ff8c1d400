//! The heavy side of the asymmetric barrier.
//!
//! # Implementation
//!
//! Readers execute only a *light* barrier (a compiler fence) between publishing their reader word
//! and reading RCU-protected data. A writer that must order its own accesses against every reader's
//! executes the *heavy* barrier: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every
//! running thread of the process execute a full memory barrier before it returns. The pair behaves
//! like a `fence(SeqCst)` on both sides (the contract seize and liburcu-memb rely on too).
//!
//! If membarrier is not available (old kernel, seccomp filter, `RCU_KIT_NO_MEMBARRIER=1`), the mode
//! is [`Mode::Fences`]: readers execute a real `fence(SeqCst)` and so does the writer. The mode is
//! decided once, before the first reader registers, and never changes afterwards, so no reader can
//! run with a light barrier while a writer relies on fences.
//!
//! Under `rcu_loom` (loom has no membarrier): [`Mode::Fences`] is modelled exactly, both sides
//! `fence(SeqCst)`. [`Mode::Membarrier`] is modelled *weaker* than it is: the heavy barrier is the
//! runner's own `fence(SeqCst)` and the light barrier is nothing at all. The real heavy barrier
//! also puts a full barrier somewhere into every running reader, at a point the reader does not
//! choose, so every behaviour of the real pair is a behaviour of the model: a model that passes
//! in this mode passes for real. The converse fails for one pattern only: a reader whose word
//! store precedes the grace period's scan and whose protected loads follow it (store buffering
//! against the scan), which the injected barrier forbids and the model does not. Models use this
//! mode only for readers that begin after they have seen the grace period's start, where no
//! barrier of the reader's is involved (the injected one may land after the whole section).

use crate::primitive::sync::atomic::{fence, Ordering};

/// How readers and writers order themselves against each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Readers: compiler fence. Writers: `membarrier(PRIVATE_EXPEDITED)`.
    Membarrier,
    /// Readers and writers: `fence(SeqCst)` (the liburcu "mb" flavour).
    Fences,
}

#[cfg(all(target_os = "linux", not(rcu_loom)))]
mod imp {
    use super::Mode;

    const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn membarrier(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier(cmd, flags = 0, cpu_id = 0) only reads its integer arguments.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_uint,
                0 as libc::c_int,
            )
        }
    }

    /// Probes and registers; returns the mode the whole process will use.
    pub(super) fn probe() -> Mode {
        if std::env::var_os("RCU_KIT_NO_MEMBARRIER").is_some_and(|v| v != "0" && !v.is_empty()) {
            return Mode::Fences;
        }
        let mask = membarrier(MEMBARRIER_CMD_QUERY);
        let needed = (MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
            as libc::c_long;
        if mask < 0 || mask & needed != needed {
            return Mode::Fences;
        }
        if !register() {
            return Mode::Fences;
        }
        // One trial call: a seccomp filter may allow QUERY and refuse the command itself.
        if membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
            return Mode::Fences;
        }
        Mode::Membarrier
    }

    /// Registers the process (its `mm`) for private expedited membarrier; needed again after fork.
    pub(super) fn register() -> bool {
        membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    /// Issues the heavy barrier; `false` if the kernel refused it.
    pub(super) fn private_expedited() -> bool {
        membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0
    }
}

#[cfg(not(all(target_os = "linux", not(rcu_loom))))]
mod imp {
    use super::Mode;
    pub(super) fn probe() -> Mode {
        Mode::Fences
    }
    pub(super) fn register() -> bool {
        false
    }
    #[cfg_attr(rcu_loom, allow(dead_code))]
    pub(super) fn private_expedited() -> bool {
        false
    }
}

/// Decides the process-wide mode (call once, before any reader registers).
pub(crate) fn probe() -> Mode {
    imp::probe()
}

/// The writer side of the asymmetric barrier. Pairs with [`light`] in every reader: after it
/// returns, every reader's accesses before its last light barrier are visible to the caller, and
/// every reader access after its next light barrier sees everything the caller did before.
#[inline]
pub(crate) fn heavy(mode: Mode) {
    match mode {
        Mode::Fences => fence(Ordering::SeqCst),
        // The model of module docs: the runner's own full barrier only.
        #[cfg(rcu_loom)]
        Mode::Membarrier => fence(Ordering::SeqCst),
        #[cfg(not(rcu_loom))]
        Mode::Membarrier => {
            if imp::private_expedited() {
                return;
            }
            // The only known cause is a fork child whose new mm is not registered yet: register
            // and retry. Readers still run with compiler fences, so there is no safe degradation.
            if imp::register() && imp::private_expedited() {
                return;
            }
            panic!(
                "rcu-core: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after it was \
                 probed successfully; readers rely on it, so no grace period can be proven \
                 (run with RCU_KIT_NO_MEMBARRIER=1 in this environment)"
            );
        }
    }
}

/// The reader side of the asymmetric barrier (see [`heavy`]).
#[inline(always)]
pub(crate) fn light(mode: Mode) {
    match mode {
        // With membarrier the writer's IPI supplies the hardware barrier; only the compiler must be
        // kept from moving accesses across this point.
        #[cfg(not(rcu_loom))]
        Mode::Membarrier => crate::primitive::sync::atomic::compiler_fence(Ordering::SeqCst),
        // The model of module docs: nothing (loom has no compiler fence, and a `fence` here
        // would be a barrier the reader does not execute).
        #[cfg(rcu_loom)]
        Mode::Membarrier => {}
        Mode::Fences => fence(Ordering::SeqCst),
    }
}

/// Registers again after `fork()` (the child has a new `mm`). Async-signal-safe (a syscall).
pub(crate) fn reregister_after_fork(mode: Mode) {
    if mode == Mode::Membarrier {
        let _ = imp::register();
    }
}
