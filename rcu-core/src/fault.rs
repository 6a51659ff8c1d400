//! Fault injection: make the kit's allocations fail on purpose, to prove every fallback.
//!
//! Modelled on the kernel's `failslab` and `fail_page_alloc` (Documentation/fault-injection):
//! each named [`Point`] is one kind of allocation the kit makes when memory may be short, and
//! each can be *armed* with the kernel's knobs. An armed point makes some allocation attempts
//! report failure without trying; the site then takes exactly the path it takes when the
//! allocator or the OS refuses (its fallback), and the point counts the failures it injected
//! ([`injected`], [`stats`]).
//!
//! | knob          | meaning (as in the kernel)                                                  |
//! |---------------|-----------------------------------------------------------------------------|
//! | `probability` | percent of eligible attempts that fail (`0`–`100`, one decimal: `0.5`)        |
//! | `per_mille`   | the same in thousandths (`0`–`1000`); the last of the two given wins          |
//! | `interval`    | only every `interval`-th eligible attempt may fail (default `1`: all)         |
//! | `times`       | at most this many failures, then the point is inert; `-1` = no limit          |
//! | `space`       | the first `space` bytes of attempts succeed (size-weighted grace)             |
//! | `verbose`     | `1`: one line on stderr per injected failure                                 |
//! | `filter`      | `all` (default) or `tagged`: only threads marked with [`tag_current_thread`]  |
//! | `cache`       | only slab caches of this name (the slab page refill; other sites never fail)  |
//!
//! Arm by API ([`arm`], [`FaultAttr`], [`parse`]) or by environment, one variable per point,
//! read at the first allocation that consults any point (or at [`init_from_env`]):
//!
//! ```text
//! RCU_KIT_FAIL_PAGES=probability=10,interval=1,times=-1
//! RCU_KIT_FAIL_CALL_RCU=probability=100,times=5,filter=tagged
//! RCU_KIT_FAIL_PAGES=per_mille=5,space=1048576,cache=inode_cache,verbose=1
//! ```
//!
//! The syntax is `key=value` pairs separated by commas (no spaces); unknown keys, values out of
//! range and missing `=` are errors. A malformed variable is never ignored: [`init_from_env`]
//! returns the error, and the lazy read at first use writes it on stderr and aborts the process
//! (it may run on an allocation path holding locks, where a panic could not unwind safely).
//!
//! ```
//! use rcu_core::fault::{self, Point};
//! let attr = fault::parse("probability=100,times=2").unwrap();
//! fault::arm(Point::Heap, attr);
//! assert!(fault::should_fail(Point::Heap, 64));
//! assert!(fault::should_fail(Point::Heap, 64));
//! assert!(!fault::should_fail(Point::Heap, 64)); // `times` spent
//! assert_eq!(fault::injected(Point::Heap), 2);
//! fault::disarm(Point::Heap);
//! ```
//!
//! # Implementation
//!
//! One word, `STATE`, says whether anything may fail: bit `ENV_UNREAD` until the environment
//! was read, and bit `p` while point `p` is armed. A site asks [`should_fail`], whose fast path
//! is one Relaxed load of `STATE` compared with zero; it is called only on allocation (slow)
//! paths of the kit, never on `rcu_read_lock`/`rcu_read_unlock` or on a retire's fast put.
//! The slow path reads the environment once, then evaluates the point's knobs in the kernel's
//! order (`should_fail_ex`): filter, `times` exhausted, `space`, `interval`, `probability`;
//! a failure decrements `times` (unless `-1`) with a CAS that never goes below zero.
//!
//! The random numbers come from a per-thread xorshift64* generator (a `const` thread-local
//! without destructor, seeded from the thread's address, the clock and a global counter through
//! splitmix64), so the slow path takes no lock and allocates nothing: it may run in a signal
//! handler (the page layer's `try_alloc_pages` is async-signal-safe) and in a `fork()` child.
//!
//! Invariants:
//! 1. A point injects at most `times` failures after it was armed (when `times >= 0`).
//! 2. Bit `p` of `STATE` is set only after point `p`'s knobs were stored, so a site that sees
//!    the bit (Acquire, in the slow path) reads knobs of that arming or a later one.
//! 3. The environment is applied at most once per process, before any API arming (an API call
//!    reads it first), so a program's own arming always wins over the environment.
//!
//! ## Memory orderings
//!
//! `STATE` is loaded Relaxed on the fast path: a site racing with [`arm`] may miss the arming
//! for that one attempt, which only delays the first injected failure. Arming stores the knobs
//! Relaxed and sets the bit with a Release RMW; the slow path loads `STATE` with Acquire (pairs
//! with it, Invariant 2). Counters and the `times`/`space` budgets are Relaxed RMWs: nothing
//! is published through them. The environment read is claimed by a CAS on `ENV_OWNER` (the
//! claimer's pid and tid; a waiter in a `fork()` child, whose pid differs, takes it over, so a
//! fork in the middle of the read cannot leave the child waiting forever; a signal handler
//! interrupting the claimer's own read does not wait for it); its end is published by the
//! Release clear of `ENV_UNREAD`, paired with the waiters' Acquire loads.

#[cfg(not(rcu_loom))]
pub use imp::*;

/// A place where the kit allocates and has a fallback for failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Point {
    /// Every run of the page layer (`slab_backend::page`): slab refills, kfree-batch block pages,
    /// emergency-cache pages, park arrays. Honours the `cache` filter for slab refills.
    Pages = 0,
    /// The kit's own fallible heap allocations: per-thread fronts (kfree-batch), sheaves and
    /// thread-cache blocks (slab-backend).
    Heap = 1,
    /// kfree-batch's page for a new block (fallback: the emergency cache, then the object's
    /// `RcuHead`, park slots, or a synchronous grace period). Also starves the emergency refill,
    /// whose pages are the next blocks.
    Block = 2,
    /// kfree-batch's refill of the per-CPU emergency page caches (fallback: none needed; the
    /// refill stops and is retried on the next pass).
    Emergency = 3,
    /// kfree-batch's per-thread park array (fallback: "no slots"; retires go to the other paths).
    Park = 4,
    /// `call_rcu`'s allocations: the box of a large closure and the growth of a callback list
    /// (fallback: the caller waits for a grace period and runs the callback itself;
    /// `try_call_rcu` gives the closure back instead).
    CallRcu = 5,
    /// `rcu_barrier`'s allocation of room for its barrier callback (fallback: retry, and stop
    /// waiting on a list once every callback it held at the first failure has finished; with
    /// no worker thread, run the worker's passes meanwhile).
    Barrier = 6,
}

/// Number of [`Point`]s.
pub const NPOINTS: usize = 7;

impl Point {
    /// Every point, in order.
    pub const ALL: [Point; NPOINTS] = [
        Point::Pages,
        Point::Heap,
        Point::Block,
        Point::Emergency,
        Point::Park,
        Point::CallRcu,
        Point::Barrier,
    ];

    /// Short name (`pages`, `heap`, `block`, `emergency`, `park`, `call_rcu`, `barrier`).
    pub const fn name(self) -> &'static str {
        match self {
            Point::Pages => "pages",
            Point::Heap => "heap",
            Point::Block => "block",
            Point::Emergency => "emergency",
            Point::Park => "park",
            Point::CallRcu => "call_rcu",
            Point::Barrier => "barrier",
        }
    }

    /// The environment variable that arms this point (`RCU_KIT_FAIL_` and the upper-case name).
    pub const fn env_var(self) -> &'static str {
        let s = self.env_var_nul();
        // The NUL-terminated name without its NUL.
        match s.split_last() {
            Some((_, name)) => match core::str::from_utf8(name) {
                Ok(n) => n,
                Err(_) => "",
            },
            None => "",
        }
    }

    const fn env_var_nul(self) -> &'static [u8] {
        match self {
            Point::Pages => b"RCU_KIT_FAIL_PAGES\0",
            Point::Heap => b"RCU_KIT_FAIL_HEAP\0",
            Point::Block => b"RCU_KIT_FAIL_BLOCK\0",
            Point::Emergency => b"RCU_KIT_FAIL_EMERGENCY\0",
            Point::Park => b"RCU_KIT_FAIL_PARK\0",
            Point::CallRcu => b"RCU_KIT_FAIL_CALL_RCU\0",
            Point::Barrier => b"RCU_KIT_FAIL_BARRIER\0",
        }
    }
}

/// Under loom nothing fails: the models explore interleavings, not allocation failures.
#[cfg(rcu_loom)]
#[inline(always)]
pub fn should_fail(_point: Point, _size: usize) -> bool {
    false
}

#[cfg(not(rcu_loom))]
mod imp {
    use core::fmt;

    use super::{Point, NPOINTS};
    use crate::primitive::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

    /// Bit of `STATE` set until the environment was read.
    pub(super) const ENV_UNREAD: u32 = 1 << 31;

    /// Bit `p`: point `p` armed; `ENV_UNREAD`: environment not read yet.
    static STATE: AtomicU32 = AtomicU32::new(ENV_UNREAD);
    /// `pid << 32 | tid` of the thread reading the environment (0: nobody).
    static ENV_OWNER: AtomicU64 = AtomicU64::new(0);
    /// Seeds handed out to threads (mixed with their address and the clock).
    static SEEDS: AtomicU64 = AtomicU64::new(0);

    /// Which threads a point may fail on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Filter {
        /// Every thread.
        #[default]
        All,
        /// Only threads marked with [`tag_current_thread`].
        Tagged,
    }

    /// The knobs of one point (see the module docs for their meaning).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FaultAttr {
        /// Thousandths of eligible attempts that fail (`0..=1000`).
        pub per_mille: u32,
        /// Only every `interval`-th eligible attempt may fail (`>= 1`).
        pub interval: u64,
        /// Failures left; `-1` = no limit.
        pub times: i64,
        /// Bytes of attempts that succeed before failures may start.
        pub space: u64,
        /// One line on stderr per injected failure.
        pub verbose: bool,
        /// Thread filter.
        pub filter: Filter,
        /// Only slab caches whose name hashes to this ([`cache_key`]); `0` = no cache filter.
        pub cache: u64,
    }

    impl Default for FaultAttr {
        /// Never fails (probability 0, no limit otherwise).
        fn default() -> Self {
            FaultAttr {
                per_mille: 0,
                interval: 1,
                times: -1,
                space: 0,
                verbose: false,
                filter: Filter::All,
                cache: 0,
            }
        }
    }

    impl FaultAttr {
        /// Fails every eligible attempt, `times` times at most (`-1`: always).
        pub fn always(times: i64) -> Self {
            FaultAttr {
                per_mille: 1000,
                times,
                ..FaultAttr::default()
            }
        }

        /// Fails `percent` % of eligible attempts, without limit.
        pub fn percent(percent: u32) -> Self {
            FaultAttr {
                per_mille: percent.min(100) * 10,
                ..FaultAttr::default()
            }
        }

        /// Only on threads marked with [`tag_current_thread`].
        pub fn tagged(self) -> Self {
            FaultAttr {
                filter: Filter::Tagged,
                ..self
            }
        }

        /// Only for slab caches named `name` (the `cache` knob).
        pub fn for_cache(self, name: &str) -> Self {
            FaultAttr {
                cache: cache_key(name),
                ..self
            }
        }
    }

    /// The key of a cache name for [`FaultAttr::cache`] (FNV-1a; never 0).
    pub fn cache_key(name: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in name.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h.max(1)
    }

    /// A malformed fault specification: what is wrong and at which byte of the text.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ParseError {
        /// What is wrong.
        pub msg: &'static str,
        /// Byte offset of the offending `key=value` pair in the text.
        pub at: usize,
    }

    impl fmt::Display for ParseError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "{} (at byte {}); expected key=value[,key=value...] with keys probability \
                 (percent, 0-100, one decimal), per_mille (0-1000), interval (>= 1), times \
                 (-1 or >= 0), space (bytes), verbose (0/1), filter (all/tagged), cache (a slab \
                 cache name)",
                self.msg, self.at
            )
        }
    }

    impl std::error::Error for ParseError {}

    /// An environment variable of a point is malformed ([`init_from_env`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EnvError {
        /// The point whose variable is malformed.
        pub point: Point,
        /// What is wrong with it.
        pub error: ParseError,
    }

    impl fmt::Display for EnvError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "rcu-kit: malformed {}: {}",
                self.point.env_var(),
                self.error
            )
        }
    }

    impl std::error::Error for EnvError {}

    /// Parses a fault specification (module docs). The empty text is [`FaultAttr::default`]
    /// (never fails).
    pub fn parse(spec: &str) -> Result<FaultAttr, ParseError> {
        let mut a = FaultAttr::default();
        let mut at = 0;
        for pair in spec.split(',') {
            let here = at;
            at += pair.len() + 1;
            if pair.is_empty() {
                if spec.is_empty() {
                    break;
                }
                return Err(ParseError {
                    msg: "empty key=value pair",
                    at: here,
                });
            }
            let err = |msg| ParseError { msg, at: here };
            let (k, v) = pair.split_once('=').ok_or(err("missing '='"))?;
            match k {
                "probability" => a.per_mille = parse_percent(v).ok_or(err("bad probability"))?,
                "per_mille" => {
                    a.per_mille = v
                        .parse()
                        .ok()
                        .filter(|&m| m <= 1000)
                        .ok_or(err("bad per_mille"))?
                }
                "interval" => {
                    a.interval = v
                        .parse()
                        .ok()
                        .filter(|&i| i >= 1)
                        .ok_or(err("bad interval"))?
                }
                "times" => {
                    a.times = v
                        .parse()
                        .ok()
                        .filter(|&t| t >= -1)
                        .ok_or(err("bad times"))?
                }
                "space" => a.space = v.parse().map_err(|_| err("bad space"))?,
                "verbose" => {
                    a.verbose = match v {
                        "0" => false,
                        "1" => true,
                        _ => return Err(err("bad verbose")),
                    }
                }
                "filter" => {
                    a.filter = match v {
                        "all" => Filter::All,
                        "tagged" => Filter::Tagged,
                        _ => return Err(err("bad filter")),
                    }
                }
                "cache" => {
                    if v.is_empty() {
                        return Err(err("empty cache name"));
                    }
                    a.cache = cache_key(v)
                }
                _ => return Err(err("unknown key")),
            }
        }
        Ok(a)
    }

    /// `"10"`, `"10%"`, `"0.5"` → thousandths.
    fn parse_percent(v: &str) -> Option<u32> {
        let v = v.strip_suffix('%').unwrap_or(v);
        let (int, frac) = v.split_once('.').unwrap_or((v, "0"));
        if int.is_empty() || frac.len() != 1 || !int.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i: u32 = int.parse().ok()?;
        let f: u32 = frac.parse().ok()?;
        let m = i.checked_mul(10)?.checked_add(f)?;
        (m <= 1000).then_some(m)
    }

    /// One point's knobs (Relaxed words; Invariant 2) and counters.
    struct Slot {
        per_mille: AtomicU32,
        interval: AtomicU64,
        times: AtomicI64,
        space: AtomicI64,
        flags: AtomicU32,
        cache: AtomicU64,
        /// Eligible attempts seen (for `interval`).
        calls: AtomicU64,
        /// Attempts evaluated while armed.
        checked: AtomicU64,
        /// Failures injected.
        injected: AtomicU64,
    }

    const VERBOSE: u32 = 1;
    const TAGGED: u32 = 2;

    impl Slot {
        const fn new() -> Slot {
            Slot {
                per_mille: AtomicU32::new(0),
                interval: AtomicU64::new(1),
                times: AtomicI64::new(-1),
                space: AtomicI64::new(0),
                flags: AtomicU32::new(0),
                cache: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                checked: AtomicU64::new(0),
                injected: AtomicU64::new(0),
            }
        }
    }

    static SLOTS: [Slot; NPOINTS] = [const { Slot::new() }; NPOINTS];

    crate::primitive::rcu_thread_local! {
        /// xorshift64* state of this thread (0: not seeded yet).
        static RNG: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
        /// Marked by [`tag_current_thread`].
        static TAG: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    }

    /// Arms `point` with `attr` (replacing an earlier arming; the counters keep counting).
    pub fn arm(point: Point, attr: FaultAttr) {
        ensure_env();
        store(point, attr);
    }

    fn store(point: Point, attr: FaultAttr) {
        let s = &SLOTS[point as usize];
        s.per_mille
            .store(attr.per_mille.min(1000), Ordering::Relaxed);
        s.interval.store(attr.interval.max(1), Ordering::Relaxed);
        s.times.store(attr.times.max(-1), Ordering::Relaxed);
        s.space
            .store(attr.space.min(i64::MAX as u64) as i64, Ordering::Relaxed);
        let flags = if attr.verbose { VERBOSE } else { 0 }
            | if attr.filter == Filter::Tagged {
                TAGGED
            } else {
                0
            };
        s.flags.store(flags, Ordering::Relaxed);
        s.cache.store(attr.cache, Ordering::Relaxed);
        s.calls.store(0, Ordering::Relaxed);
        // Release: the knobs above are visible to a site that sees the bit (Invariant 2).
        STATE.fetch_or(1 << point as u32, Ordering::Release);
    }

    /// Disarms `point` (its counters are kept).
    pub fn disarm(point: Point) {
        ensure_env();
        STATE.fetch_and(!(1 << point as u32), Ordering::Relaxed);
    }

    /// Disarms every point.
    pub fn disarm_all() {
        ensure_env();
        STATE.fetch_and(ENV_UNREAD, Ordering::Relaxed);
    }

    /// Whether `point` is armed.
    pub fn is_armed(point: Point) -> bool {
        STATE.load(Ordering::Relaxed) & (1 << point as u32) != 0
    }

    /// Marks (or unmarks) the calling thread for points armed with [`Filter::Tagged`].
    pub fn tag_current_thread(on: bool) {
        TAG.with(|t| t.set(on));
    }

    /// Failures `point` injected since the start of the process.
    pub fn injected(point: Point) -> u64 {
        SLOTS[point as usize].injected.load(Ordering::Relaxed)
    }

    /// Failures injected at every point.
    pub fn total_injected() -> u64 {
        Point::ALL.iter().map(|&p| injected(p)).sum()
    }

    /// Counters of one point ([`stats`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PointStats {
        /// The point.
        pub point: Point,
        /// Whether it is armed now.
        pub armed: bool,
        /// Attempts evaluated while it was armed.
        pub checked: u64,
        /// Failures it injected.
        pub injected: u64,
    }

    /// The counters of every point, in [`Point::ALL`] order.
    pub fn stats() -> [PointStats; NPOINTS] {
        Point::ALL.map(|p| {
            let s = &SLOTS[p as usize];
            PointStats {
                point: p,
                armed: is_armed(p),
                checked: s.checked.load(Ordering::Relaxed),
                injected: s.injected.load(Ordering::Relaxed),
            }
        })
    }

    /// Reads the points' environment variables now (module docs), unless they were read already.
    /// Returns the first malformed one; the points before it are armed, the rest are not.
    pub fn init_from_env() -> Result<(), EnvError> {
        if STATE.load(Ordering::Acquire) & ENV_UNREAD == 0 {
            return Ok(());
        }
        read_env_once()
    }

    /// Whether an allocation of `size` bytes at `point` must fail (the site then takes its
    /// failure path). One Relaxed load when no point is armed.
    #[inline(always)]
    pub fn should_fail(point: Point, size: usize) -> bool {
        if STATE.load(Ordering::Relaxed) == 0 {
            return false;
        }
        should_fail_slow(point, size, 0)
    }

    /// [`should_fail`] for an allocation on behalf of the slab cache named `cache` (honours
    /// the `cache` knob).
    #[inline(always)]
    pub fn should_fail_cache(point: Point, size: usize, cache: &str) -> bool {
        if STATE.load(Ordering::Relaxed) == 0 {
            return false;
        }
        should_fail_slow(point, size, cache_key(cache))
    }

    #[cold]
    #[inline(never)]
    fn should_fail_slow(point: Point, size: usize, cache: u64) -> bool {
        ensure_env();
        // Acquire pairs with the Release bit set in `store` (Invariant 2).
        if STATE.load(Ordering::Acquire) & (1 << point as u32) == 0 {
            return false;
        }
        let s = &SLOTS[point as usize];
        s.checked.fetch_add(1, Ordering::Relaxed);
        let flags = s.flags.load(Ordering::Relaxed);
        if flags & TAGGED != 0 && !TAG.with(|t| t.get()) {
            return false;
        }
        let want = s.cache.load(Ordering::Relaxed);
        if want != 0 && want != cache {
            return false;
        }
        if s.times.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let size = size.min(i64::MAX as usize) as i64;
        if s.space.load(Ordering::Relaxed) > size {
            // The grace of `space` bytes is spent first (the kernel's order).
            s.space.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        let interval = s.interval.load(Ordering::Relaxed);
        if interval > 1 && (s.calls.fetch_add(1, Ordering::Relaxed) + 1) % interval != 0 {
            return false;
        }
        let pm = s.per_mille.load(Ordering::Relaxed);
        if pm == 0 || (pm < 1000 && next_random() % 1000 >= u64::from(pm)) {
            return false;
        }
        // Invariant 1: never below zero, never past `times`.
        let mut t = s.times.load(Ordering::Relaxed);
        loop {
            match t {
                0 => return false,
                -1 => break,
                _ => match s.times.compare_exchange_weak(
                    t,
                    t - 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => t = now,
                },
            }
        }
        let n = s.injected.fetch_add(1, Ordering::Relaxed) + 1;
        if flags & VERBOSE != 0 {
            crate::lowmem::report(format_args!(
                "rcu-kit fault: injected failure #{n} at point {} ({size} bytes)",
                point.name()
            ));
        }
        true
    }

    /// One xorshift64* step of the calling thread's generator.
    fn next_random() -> u64 {
        RNG.with(|c| {
            let mut x = c.get();
            if x == 0 {
                x = seed(c as *const _ as u64);
            }
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            c.set(x);
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        })
    }

    /// A non-zero seed from the thread's address, the clock and a global counter (splitmix64).
    fn seed(addr: u64) -> u64 {
        let mut z = addr
            ^ crate::util::monotonic_ns().rotate_left(17)
            ^ SEEDS
                .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                .rotate_left(31);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) | 1
    }

    /// Applies the environment unless it was applied; a malformed variable aborts with its
    /// message (module docs: it may run on an allocation path holding locks).
    #[inline]
    fn ensure_env() {
        if STATE.load(Ordering::Acquire) & ENV_UNREAD == 0 {
            return;
        }
        if let Err(e) = read_env_once() {
            crate::lowmem::report(format_args!("{e}"));
            std::process::abort();
        }
    }

    #[cold]
    fn read_env_once() -> Result<(), EnvError> {
        // SAFETY: getpid and gettid have no preconditions.
        let (pid, tid) = unsafe { (libc::getpid() as u32, libc::gettid() as u32) };
        let me = (u64::from(pid) << 32) | u64::from(tid);
        loop {
            // Acquire pairs with the Release clear below: the reader's armings are visible.
            if STATE.load(Ordering::Acquire) & ENV_UNREAD == 0 {
                return Ok(());
            }
            let owner = ENV_OWNER.load(Ordering::Relaxed);
            if owner == me {
                // A signal handler interrupted this thread's own read: it cannot wait for
                // itself, so this one look goes on without the environment.
                return Ok(());
            }
            // Free, or claimed by another pid: a claim made in the parent before a `fork()`,
            // whose claimer does not exist here, so take it over.
            if (owner == 0 || (owner >> 32) as u32 != pid)
                && ENV_OWNER
                    .compare_exchange(owner, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            crate::primitive::thread::yield_now();
        }
        let mut result = Ok(());
        for p in Point::ALL {
            // SAFETY: the name is NUL-terminated; getenv returns null or a NUL-terminated
            // string of the environment, read before anything can change it (the kit never
            // calls setenv).
            let v = unsafe { libc::getenv(p.env_var_nul().as_ptr().cast()) };
            if v.is_null() {
                continue;
            }
            // SAFETY: as above.
            let bytes = unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes();
            let parsed = core::str::from_utf8(bytes)
                .map_err(|_| ParseError {
                    msg: "not UTF-8",
                    at: 0,
                })
                .and_then(parse);
            match parsed {
                Ok(a) => store(p, a),
                Err(error) => {
                    result = Err(EnvError { point: p, error });
                    break;
                }
            }
        }
        // Release: the armings above happen-before every later slow-path look (Invariant 3).
        STATE.fetch_and(!ENV_UNREAD, Ordering::Release);
        result
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parse_knobs() {
            let a = parse("probability=12.5,interval=3,times=-1,space=4096,verbose=1").unwrap();
            assert_eq!(a.per_mille, 125);
            assert_eq!(a.interval, 3);
            assert_eq!(a.times, -1);
            assert_eq!(a.space, 4096);
            assert!(a.verbose);
            assert_eq!(
                parse("per_mille=7,filter=tagged").unwrap().filter,
                Filter::Tagged
            );
            assert_eq!(parse("probability=10%").unwrap().per_mille, 100);
            assert_eq!(parse("").unwrap(), FaultAttr::default());
            assert_eq!(parse("cache=x").unwrap().cache, cache_key("x"));
        }

        #[test]
        fn parse_errors_name_the_pair() {
            let e = parse("probability=10,times=-2").unwrap_err();
            assert_eq!(e.msg, "bad times");
            assert_eq!(e.at, 15);
            assert_eq!(parse("probability=101").unwrap_err().msg, "bad probability");
            assert_eq!(parse("probabilty=1").unwrap_err().msg, "unknown key");
            assert_eq!(parse("interval").unwrap_err().msg, "missing '='");
            assert_eq!(parse("interval=0").unwrap_err().msg, "bad interval");
            assert_eq!(
                parse("times=1,,interval=2").unwrap_err().msg,
                "empty key=value pair"
            );
            let text = parse("verbose=2").unwrap_err().to_string();
            assert!(text.contains("bad verbose (at byte 0)"), "{text}");
        }

        // The points below are used by no other unit test of the crate (they run in parallel).

        #[test]
        fn times_interval_space() {
            let p = Point::Emergency;
            let base = injected(p);
            arm(
                p,
                FaultAttr {
                    interval: 2,
                    space: 100,
                    ..FaultAttr::always(3)
                },
            );
            // 40 + 40 bytes pass through `space`, then every other attempt fails, 3 times.
            let got: Vec<bool> = (0..10).map(|_| should_fail(p, 40)).collect();
            disarm(p);
            assert_eq!(
                got,
                [false, false, false, true, false, true, false, true, false, false]
            );
            assert_eq!(injected(p) - base, 3);
            assert!(!should_fail(p, 40), "disarmed");
        }

        #[test]
        fn tagged_filter_and_probability() {
            let p = Point::Park;
            arm(p, FaultAttr::percent(50).tagged());
            assert!((0..200).all(|_| !should_fail(p, 1)), "untagged thread");
            tag_current_thread(true);
            let n = (0..2000).filter(|_| should_fail(p, 1)).count();
            tag_current_thread(false);
            disarm(p);
            assert!(
                (700..1300).contains(&n),
                "50% of 2000 attempts failed {n} times"
            );
        }

        #[test]
        fn cache_filter() {
            let p = Point::Block;
            arm(p, FaultAttr::always(-1).for_cache("a"));
            assert!(should_fail_cache(p, 1, "a"));
            assert!(!should_fail_cache(p, 1, "b"));
            assert!(
                !should_fail(p, 1),
                "a site without a cache never matches a cache filter"
            );
            disarm(p);
        }
    }
}
