//! OS mechanisms behind small interfaces with portable defaults: the heavy barrier
//! (`membarrier`), the current CPU (rseq / `sched_getcpu`), the futex-based lock and the thread id.
//! Under `rcu_loom` each falls back to a deterministic model (a `SeqCst` fence, CPU 0, a spin lock).

pub(crate) mod cpu;
pub(crate) mod lock;
pub(crate) mod membarrier;

/// The kernel thread id of the caller (for stall reports), `0` where it cannot be had.
pub(crate) fn gettid() -> u32 {
    #[cfg(all(target_os = "linux", not(rcu_loom)))]
    {
        // SAFETY: gettid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as u32 }
    }
    #[cfg(not(all(target_os = "linux", not(rcu_loom))))]
    {
        0
    }
}
