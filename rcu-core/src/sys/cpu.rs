//! The current CPU, for per-CPU data.
//!
//! # Implementation
//!
//! glibc 2.35+ registers an rseq area for every thread; the kernel keeps its `cpu_id` field (offset
//! 4) current at every return to user space. Reading it is one load from `thread pointer +
//! __rseq_offset` (0.4 ns here, against 2.7 ns for `sched_getcpu`). The symbols are looked up at run
//! time with `dlsym`, so the library still loads against an older glibc; when glibc did not register
//! rseq (`__rseq_size == 0`, e.g. `GLIBC_TUNABLES=glibc.pthread.rseq=0`) or the architecture has no
//! thread-pointer read here, `sched_getcpu()` is used.
//!
//! The answer is a hint: the thread may migrate right after. Every per-CPU structure in the kit is
//! protected by a try-lock, so a stale CPU number costs a little locality, never correctness.

#[cfg(not(rcu_loom))]
use std::sync::OnceLock;

/// Number of CPU slots per-CPU structures should have: the configured CPUs, at least 1.
pub fn possible_cpus() -> usize {
    #[cfg(not(rcu_loom))]
    {
        static N: OnceLock<usize> = OnceLock::new();
        *N.get_or_init(|| {
            // SAFETY: sysconf only reads its argument.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            // The CPUs this thread may run on, counted without allocating (the first call may
            // come when memory is short; `std::thread::available_parallelism` allocates to read
            // cgroup quotas).
            // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
            // its size into it; CPU_COUNT reads it.
            let avail = unsafe {
                let mut set: libc::cpu_set_t = core::mem::zeroed();
                if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set)
                    == 0
                {
                    libc::CPU_COUNT(&set) as usize
                } else {
                    1
                }
            };
            (n.max(1) as usize).max(avail).min(4096)
        })
    }
    #[cfg(rcu_loom)]
    {
        2
    }
}

/// The CPU the caller runs on (a hint), always `< possible_cpus()`.
#[inline]
pub fn current_cpu() -> usize {
    #[cfg(not(rcu_loom))]
    {
        let cpu = imp::current();
        let n = possible_cpus();
        if cpu < n {
            cpu
        } else {
            cpu % n
        }
    }
    #[cfg(rcu_loom)]
    {
        0
    }
}

#[cfg(not(rcu_loom))]
mod imp {
    use std::sync::atomic::{AtomicIsize, Ordering};

    /// `__rseq_offset` when glibc registered rseq and we can read the thread pointer; else
    /// `NONE`. `UNKNOWN` before the first lookup. Written once (racy duplicates write the same).
    static RSEQ_OFFSET: AtomicIsize = AtomicIsize::new(UNKNOWN);
    const UNKNOWN: isize = isize::MIN;
    const NONE: isize = isize::MIN + 1;

    #[inline]
    pub(super) fn current() -> usize {
        // Relaxed: the value is computed identically by every thread; nothing else is published.
        let off = RSEQ_OFFSET.load(Ordering::Relaxed);
        if off > NONE {
            if let Some(cpu) = read_rseq(off) {
                return cpu;
            }
        } else if off == UNKNOWN {
            RSEQ_OFFSET.store(lookup(), Ordering::Relaxed);
            return current();
        }
        sched_getcpu()
    }

    fn sched_getcpu() -> usize {
        // SAFETY: sched_getcpu has no arguments; a negative return means "unknown".
        let c = unsafe { libc::sched_getcpu() };
        if c < 0 {
            0
        } else {
            c as usize
        }
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn lookup() -> isize {
        // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the results are only
        // dereferenced when non-null, as the types glibc documents (`ptrdiff_t`, `unsigned int`).
        unsafe {
            let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
            let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
            if size.is_null() || off.is_null() || *size < 8 {
                return NONE;
            }
            let o = *off;
            if o <= NONE {
                NONE
            } else {
                o
            }
        }
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    fn lookup() -> isize {
        NONE
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[inline]
    fn read_rseq(off: isize) -> Option<usize> {
        let tp: usize;
        // SAFETY: on x86_64 Linux, fs:0 holds the thread pointer (the TCB's self pointer).
        unsafe {
            core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags));
        }
        let area = (tp as isize).wrapping_add(off) as *const u32;
        // SAFETY: glibc registered this thread's `struct rseq` at tp + __rseq_offset (checked via
        // __rseq_size > 0); cpu_id is the u32 at byte offset 4, written by the kernel, hence the
        // volatile read.
        let cpu = unsafe { core::ptr::read_volatile(area.add(1)) };
        // RSEQ_CPU_ID_UNINITIALIZED (-1) / REGISTRATION_FAILED (-2) read as huge values.
        if cpu < 1 << 20 {
            Some(cpu as usize)
        } else {
            None
        }
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    #[inline]
    fn read_rseq(_off: isize) -> Option<usize> {
        None
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn rseq_matches_sched_getcpu_mostly() {
            // Migration between the two reads is possible; require agreement most of the time.
            let mut agree = 0;
            for _ in 0..1000 {
                if super::current() == super::sched_getcpu() {
                    agree += 1;
                }
            }
            assert!(
                agree > 900,
                "rseq and sched_getcpu agreed only {agree}/1000 times"
            );
        }
    }
}

/// Binds the calling thread to `cpu` if the process may run there (its cpuset allows it);
/// otherwise lets it run on every CPU the process may use. Returns whether it bound. For the
/// engine's per-CPU threads, whose point is to run where their CPU's data is hot. A thread
/// inherits the affinity of the thread that created it, so without this an engine thread started
/// by a pinned application thread would stay on that thread's CPUs.
#[cfg(all(target_os = "linux", not(rcu_loom)))]
pub(crate) fn bind_to(cpu: usize) -> bool {
    const SET: usize = core::mem::size_of::<libc::cpu_set_t>();
    if cpu < 8 * SET {
        // SAFETY: `cpu_set_t` is plain data (all zeroes is the empty set); `CPU_SET` indexes
        // within it (checked above); the syscall reads exactly `SET` bytes of our set.
        let bound = unsafe {
            let mut one: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            libc::sched_setaffinity(0, SET, &one) == 0
        };
        if bound {
            return true;
        }
    }
    unbind();
    false
}

/// Lets the calling thread run on every CPU the process may use (the kernel intersects the
/// full mask with the cpuset), undoing an affinity inherited from the thread that created it.
#[cfg(all(target_os = "linux", not(rcu_loom)))]
pub(crate) fn unbind() {
    const SET: usize = core::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: as in `bind_to`; every byte 0xff is the full set.
    unsafe {
        let mut all: libc::cpu_set_t = core::mem::zeroed();
        core::ptr::write_bytes(core::ptr::addr_of_mut!(all).cast::<u8>(), 0xff, SET);
        libc::sched_setaffinity(0, SET, &all);
    }
}

/// Off Linux: never binds.
#[cfg(not(all(target_os = "linux", not(rcu_loom))))]
pub(crate) fn bind_to(_cpu: usize) -> bool {
    false
}

/// Off Linux: nothing to undo.
#[cfg(not(all(target_os = "linux", not(rcu_loom))))]
pub(crate) fn unbind() {}
