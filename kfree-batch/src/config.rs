//! Configuration and the pending-memory budget.
//!
//! # Implementation
//!
//! **Budget.** `PENDING` counts bytes that may be waiting for a grace period: the heap bytes of
//! every queued, parked or head-linked object (its allocator footprint, `heap_footprint`:
//! `size_of::<T>()` rounded up with glibc's header and granule, or to whole pages for a chunk
//! served by its own mapping, so the cap bounds resident memory; plus the bytes
//! `kfree_rcu_raw_charged` declares it owns), one page per block, and the
//! unspent *reservations*: each CPU slot's and each retiring thread's slice. A CPU reserves
//! budget in chunks (`RESERVE_CHUNK`, or exactly what it needs near the cap) with a CAS that never
//! lets `PENDING` pass the cap, then spends the chunk under its own lock without touching a
//! shared line; a thread does the same with its slice (`local.rs`). Freeing a block returns its
//! bytes and page. Hence
//!
//! * Invariant 1: `PENDING <= cap` at every moment, and
//! * Invariant 2: the real pending memory is `<= PENDING + OVERDRAFT` (reservations only
//!   over-count), where
//! * Invariant 3: `OVERDRAFT` counts the objects retired inside read-side critical sections
//!   while the budget had no room (parked, spilled or head-linked: such a caller can neither
//!   wait nor free early). Outside readers it is zero, so there the real pending memory stays
//!   under the cap. Each such object records where it was charged (`charge_in_reader`'s top
//!   bit, or the head stack it is on) and its free returns the charge to that count.
//!
//! **Reservations go back on demand.** A reservation nobody spends (an idle thread's slice, a
//! slot no thread retires into) would hold the budget for good, and enough of them would fill the
//! cap. When a reserve is refused the retiring thread takes them back before it falls back
//! (`local::reclaim_reservations`): every slot's under its lock, its own slice, and — outside a
//! reader — every other thread's slice, claimed at once and taken after one grace period
//! (`slice.rs`). A barrier does the same around its pass, the shrinker takes the slots' and asks
//! the worker for the slices'.
//!
//! When a reservation cannot be had even so the caller falls back: it waits for a grace period
//! itself and frees its object (`fallback_sync`), or parks it when it is inside a read-side
//! critical section (charged to the budget when it has room, else to the overdraft; past the
//! park slots it spills: `park.rs`). An object parked for want of a page outside a reader is
//! charged like a batched one, and so is a head-linked one (`head.rs`): at the cap the retiring
//! thread takes reservations back and runs one collection pass, which waits for one grace period
//! for every head-linked object, before it charges again — Invariant 1 bounds them too.

use std::sync::OnceLock;
use std::time::Duration;

use crate::primitive::sync::atomic::{AtomicUsize, Ordering};

/// Default delay after which a partially filled block is handed over.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_millis(20);
/// Default pause of the worker between grace periods while blocks keep coming.
pub const DEFAULT_GP_BATCH: Duration = Duration::from_micros(100);
/// Default emergency pages kept per CPU.
pub const DEFAULT_PAGES_PER_CPU: usize = 5;
/// Default cap on pending memory.
pub const DEFAULT_PENDING_CAP: usize = 128 << 20;
/// Budget reserved by a CPU at a time.
pub(crate) const RESERVE_CHUNK: usize = 64 << 10;

/// Batcher configuration. Set it with [`configure`] before the first `kfree_rcu`, or through the
/// environment (`RCU_KIT_KFREE_DRAIN_MS`, `RCU_KIT_KFREE_GP_BATCH_US`,
/// `RCU_KIT_KFREE_PAGES_PER_CPU`, `RCU_KIT_KFREE_CAP`, which accepts suffixes K, M, G).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a partially filled block may wait before it is handed over.
    pub drain_delay: Duration,
    /// How long the worker lets hand-overs accumulate after a grace period before it drives the
    /// next one while blocks keep coming. Each grace period interrupts every running thread of
    /// the process (one membarrier IPI each), so longer means fewer interruptions; a retiring
    /// thread that runs out of ready blocks to recycle meanwhile runs one itself, without
    /// waiting (see the crate docs).
    pub gp_batch: Duration,
    /// Emergency pages kept per CPU (refilled by the worker, never on the caller's path).
    pub pages_per_cpu: usize,
    /// Hard cap on pending memory (objects waiting for a grace period, charged at their heap
    /// chunk size, plus every page the batcher holds). The batcher keeps its own count under
    /// `pending_cap - pending_cap / 64` ([`counted_cap`]): the last 1/64 is left to the
    /// allocator's fragmentation around the pending objects (freed chunks it has not reused
    /// yet), so that the process's resident memory, not only the batcher's count, grows by at
    /// most the cap (measured overshoot without the headroom: up to 0.3% of a 16 MiB cap).
    pub pending_cap: usize,
}

/// The bound the batcher's pending count keeps under a configured cap (see
/// [`Config::pending_cap`]).
pub const fn counted_cap(pending_cap: usize) -> usize {
    pending_cap - pending_cap / 64
}

impl Default for Config {
    fn default() -> Self {
        Config {
            drain_delay: DEFAULT_DRAIN_DELAY,
            gp_batch: DEFAULT_GP_BATCH,
            pages_per_cpu: DEFAULT_PAGES_PER_CPU,
            pending_cap: DEFAULT_PENDING_CAP,
        }
    }
}

/// Why [`configure`] refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The batcher already started with another configuration.
    AlreadyStarted(Config),
    /// A value is out of range (the message says which).
    Invalid(&'static str),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::AlreadyStarted(c) => {
                write!(
                    f,
                    "kfree-batch already started with {c:?}; configure before the first kfree_rcu"
                )
            }
            ConfigError::Invalid(why) => write!(f, "invalid kfree-batch configuration: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Sets the configuration. Fails if the batcher already runs with a different one, or if a value
/// is out of range (cap below two pages, more than 1024 cached pages per CPU, a delay over 60 s).
pub fn configure(c: Config) -> Result<(), ConfigError> {
    if c.pending_cap < 2 * crate::block::PAGE_SIZE {
        return Err(ConfigError::Invalid(
            "pending_cap must be at least two pages (8 KiB)",
        ));
    }
    if c.pages_per_cpu > 1024 {
        return Err(ConfigError::Invalid("pages_per_cpu must be at most 1024"));
    }
    if c.drain_delay > Duration::from_secs(60) {
        return Err(ConfigError::Invalid("drain_delay must be at most 60 s"));
    }
    if c.gp_batch > Duration::from_secs(60) {
        return Err(ConfigError::Invalid("gp_batch must be at most 60 s"));
    }
    let got = CONFIG.get_or_init(|| c);
    if *got == c {
        Ok(())
    } else {
        Err(ConfigError::AlreadyStarted(*got))
    }
}

/// The configuration in force (from [`configure`], else the environment, else defaults).
pub fn config() -> Config {
    *CONFIG.get_or_init(from_env)
}

fn from_env() -> Config {
    let mut c = Config::default();
    if let Some(ms) = env_num("RCU_KIT_KFREE_DRAIN_MS") {
        c.drain_delay = Duration::from_millis(ms.min(60_000) as u64);
    }
    if let Some(us) = env_num("RCU_KIT_KFREE_GP_BATCH_US") {
        c.gp_batch = Duration::from_micros(us.min(60_000_000) as u64);
    }
    if let Some(n) = env_num("RCU_KIT_KFREE_PAGES_PER_CPU") {
        c.pages_per_cpu = n.min(1024);
    }
    if let Some(cap) = env_num("RCU_KIT_KFREE_CAP") {
        c.pending_cap = cap.max(2 * crate::block::PAGE_SIZE);
    }
    c
}

/// Why [`parse_size`] rejected a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSizeError {
    input: String,
}

impl core::fmt::Display for ParseSizeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "'{}' is not a size (like 4096, 64K, 512M, 2G)",
            self.input
        )
    }
}

impl std::error::Error for ParseSizeError {}

/// Parses `123`, `64K`, `512M`, `2G` (binary units).
pub fn parse_size(s: &str) -> Result<usize, ParseSizeError> {
    let err = || ParseSizeError {
        input: s.to_string(),
    };
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last().ok_or_else(err)? {
        b'k' | b'K' => (&t[..t.len() - 1], 1usize << 10),
        b'm' | b'M' => (&t[..t.len() - 1], 1 << 20),
        b'g' | b'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

fn env_num(key: &str) -> Option<usize> {
    std::env::var(key).ok().and_then(|v| parse_size(&v).ok())
}

/// glibc's mmap threshold at its default: requests whose chunk reaches it get a mapping of
/// their own, page-rounded.
const MMAP_THRESHOLD: usize = 128 << 10;

/// Bytes an allocation of `size` bytes aligned to `align` really occupies in glibc's heap: a
/// chunk of `max(32, round_up(size + 8, 16))` (8 bytes of header, 16-byte granules), plus the
/// alignment slack `memalign` takes for `align > 16`; a chunk at or above the mmap threshold is
/// a mapping of its own, `round_up(chunk + 8, page)`. Other allocators have similar or smaller
/// overheads, so the estimate is conservative.
pub(crate) const fn heap_footprint(size: usize, align: usize) -> usize {
    if size == 0 {
        return 0;
    }
    let mut chunk = (size + 8 + 15) & !15;
    if chunk < 32 {
        chunk = 32;
    }
    if align > 16 {
        chunk += align;
    }
    if chunk >= MMAP_THRESHOLD {
        let page = crate::block::PAGE_SIZE;
        (chunk + 8 + page - 1) & !(page - 1)
    } else {
        chunk
    }
}

/// Marks an encoded charge ([`Budget::charge_in_reader`]) as an overdraft.
const OVERDRAFT_BIT: usize = 1 << (usize::BITS - 1);

/// Whether an encoded charge went to the overdraft.
pub(crate) const fn is_overdraft(charge: usize) -> bool {
    charge & OVERDRAFT_BIT != 0
}

/// The process-wide pending counter (Invariants 1 and 2) and the overdraft of read-side
/// critical sections (Invariant 3).
#[derive(Debug)]
pub(crate) struct Budget {
    pending: AtomicUsize,
    peak: AtomicUsize,
    /// Bytes retired inside read-side critical sections while the budget had no room (held
    /// anyway: such a caller cannot wait).
    overdraft: AtomicUsize,
    overdraft_peak: AtomicUsize,
    /// Rounds that took unspent reservations back (statistics).
    reclaims: AtomicUsize,
}

impl Budget {
    #[cfg(not(rcu_loom))]
    pub(crate) const fn new() -> Self {
        Budget {
            pending: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            overdraft: AtomicUsize::new(0),
            overdraft_peak: AtomicUsize::new(0),
            reclaims: AtomicUsize::new(0),
        }
    }
    #[cfg(rcu_loom)]
    pub(crate) fn new() -> Self {
        Budget {
            pending: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            overdraft: AtomicUsize::new(0),
            overdraft_peak: AtomicUsize::new(0),
            reclaims: AtomicUsize::new(0),
        }
    }

    /// Reserves between `need` and `want` bytes without passing `cap`; returns what it got.
    pub(crate) fn reserve(&self, need: usize, want: usize, cap: usize) -> Option<usize> {
        // Relaxed: a budget word; nothing is published through it (Invariant 1 needs atomicity
        // only).
        let mut cur = self.pending.load(Ordering::Relaxed);
        loop {
            let room = cap.checked_sub(cur)?;
            if room < need {
                return None;
            }
            let take = want.max(need).min(room);
            match self.pending.compare_exchange_weak(
                cur,
                cur + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(cur + take, Ordering::Relaxed);
                    return Some(take);
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Returns `bytes` to the budget.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let old = self.pending.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(old >= bytes, "kfree-batch budget underflow");
    }

    /// Sets the charge to `bytes`: in a `fork()` child, what the child really holds (the
    /// parent's other threads' slices and private blocks do not exist there).
    pub(crate) fn reset_after_fork(&self, bytes: usize) {
        self.pending.store(bytes, Ordering::Relaxed);
    }

    /// Charges `bytes` for an object retired inside a read-side critical section: to the budget
    /// when it has room, else to the overdraft (Invariant 3). Returns the encoded charge for
    /// [`Budget::uncharge`].
    pub(crate) fn charge_in_reader(&self, bytes: usize, cap: usize) -> usize {
        if self.reserve(bytes, bytes, cap).is_some() {
            return bytes;
        }
        // Relaxed: a statistic and a counter; nothing is published through it.
        let now = self.overdraft.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.overdraft_peak.fetch_max(now, Ordering::Relaxed);
        bytes | OVERDRAFT_BIT
    }

    /// Returns a charge encoded by [`Budget::charge_in_reader`] (or a plain one).
    pub(crate) fn uncharge(&self, charge: usize) {
        if charge & OVERDRAFT_BIT != 0 {
            self.release_overdraft(charge & !OVERDRAFT_BIT);
        } else if charge != 0 {
            self.release(charge);
        }
    }

    /// Returns `bytes` to the overdraft (objects held past the budget were freed).
    pub(crate) fn release_overdraft(&self, bytes: usize) {
        if bytes != 0 {
            let old = self.overdraft.fetch_sub(bytes, Ordering::Relaxed);
            debug_assert!(old >= bytes, "kfree-batch overdraft underflow");
        }
    }

    /// Bytes held past the budget inside read-side critical sections now, and the most seen.
    pub(crate) fn overdraft(&self) -> (usize, usize) {
        (
            self.overdraft.load(Ordering::Relaxed),
            self.overdraft_peak.load(Ordering::Relaxed),
        )
    }

    /// Counts a round that took reservations back.
    pub(crate) fn count_reclaim(&self) {
        self.reclaims.fetch_add(1, Ordering::Relaxed);
    }

    /// Rounds that took reservations back.
    pub(crate) fn reclaims(&self) -> usize {
        self.reclaims.load(Ordering::Relaxed)
    }

    /// Bytes currently charged.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Highest charge seen.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(rcu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size(" 8m "), Ok(8 << 20));
        assert!(parse_size("x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert_eq!(
            parse_size("12Q").unwrap_err().to_string(),
            "'12Q' is not a size (like 4096, 64K, 512M, 2G)"
        );
    }

    #[test]
    fn footprints_follow_glibc() {
        assert_eq!(heap_footprint(0, 1), 0);
        assert_eq!(heap_footprint(1, 1), 32);
        assert_eq!(heap_footprint(32, 8), 48);
        assert_eq!(heap_footprint(8208, 8), 8224);
        // Served by a mapping of its own: whole pages, header included.
        assert_eq!(heap_footprint((128 << 10) + 8, 8), 135_168);
        assert_eq!(heap_footprint(1 << 20, 8), (1 << 20) + 4096);
        // memalign's slack for a large alignment.
        assert_eq!(heap_footprint(64, 64), 80 + 64);
    }

    #[test]
    fn overdraft_is_counted_apart() {
        let b = Budget::new();
        assert_eq!(b.charge_in_reader(100, 150), 100);
        let over = b.charge_in_reader(100, 150);
        assert!(is_overdraft(over));
        assert_eq!((b.pending(), b.overdraft()), (100, (100, 100)));
        b.uncharge(over);
        b.uncharge(100);
        assert_eq!((b.pending(), b.overdraft()), (0, (0, 100)));
    }

    #[test]
    fn budget_never_passes_cap() {
        let b = Budget::new();
        assert_eq!(b.reserve(10, 100, 150), Some(100));
        assert_eq!(b.reserve(10, 100, 150), Some(50));
        assert_eq!(b.reserve(1, 100, 150), None);
        b.release(60);
        assert_eq!(b.reserve(60, 60, 150), Some(60));
        assert_eq!(b.pending(), 150);
        assert_eq!(b.peak(), 150);
    }
}
