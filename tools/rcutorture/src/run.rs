//! One mode's run: set-up, threads, the progress line, limits, the drain and the summary.

use std::io::{IsTerminal, Write as _};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcu_kit::rcu_core::CachePadded;
use rcu_kit::{kfree_batch, kvfree_rcu_barrier, rcu_barrier, synchronize_rcu, KmemCache};

use super::cli::{MemLimit, Mode, Opts};
use super::ctx::{Ctx, Errors};
use super::elem::{Elem, BAD_DROPS, BOX_ALLOCS, BOX_FREES};
use super::reader::{reader, staller, ReaderReport, NBUCKETS};
use super::table::{table, PIPE_LEN};
use super::writer::{barrier_checker, gp_helper, writer};

/// Panics on any thread of the process (ours or the kit's workers).
pub(crate) static PANICS: AtomicU64 = AtomicU64::new(0);
/// Stall reports delivered by rcu-core.
pub(crate) static STALL_REPORTS: AtomicU64 = AtomicU64::new(0);

/// The verdict of one mode.
#[derive(Debug)]
pub(crate) struct ModeResult {
    /// Whether the mode passed.
    pub(crate) pass: bool,
}

/// Counter snapshot for per-mode differences.
#[derive(Debug, Clone, Copy)]
struct Snap {
    kfree: kfree_batch::KfreeStats,
    gps: u64,
    cbs: u64,
    box_allocs: u64,
    box_frees: u64,
    ids: (u64, u64, u64),
    pages: rcu_kit::slab_backend::MemoryStats,
    panics: u64,
    stalls: u64,
    bad_drops: u64,
}

impl Snap {
    fn take() -> Snap {
        let g = rcu_kit::rcu_core::stats();
        Snap {
            kfree: kfree_batch::stats(),
            gps: g.grace_periods,
            cbs: g.callbacks_invoked,
            box_allocs: BOX_ALLOCS.load(Ordering::Relaxed),
            box_frees: BOX_FREES.load(Ordering::Relaxed),
            ids: table().counts(),
            pages: rcu_kit::slab_backend::memory_stats(),
            panics: PANICS.load(Ordering::Relaxed),
            stalls: STALL_REPORTS.load(Ordering::Relaxed),
            bad_drops: BAD_DROPS.load(Ordering::Relaxed),
        }
    }
}

/// Human-readable count: 1234567 -> "1.23M".
fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}K", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Human-readable bytes.
fn bytes(x: u64) -> String {
    if x >= 1 << 30 {
        format!("{:.1}GiB", x as f64 / (1u64 << 30) as f64)
    } else if x >= 1 << 20 {
        format!("{:.1}MiB", x as f64 / (1u64 << 20) as f64)
    } else if x >= 1 << 10 {
        format!("{:.1}KiB", x as f64 / 1024.0)
    } else {
        format!("{x}B")
    }
}

fn sum(v: &[CachePadded<AtomicU64>]) -> u64 {
    v.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Fallbacks taken so far (kfree-batch and element allocation), relative to `base`.
fn fallbacks(ctx: &Ctx, base: &Snap) -> u64 {
    let k = kfree_batch::stats();
    (k.fallback_sync - base.kfree.fallback_sync)
        + (k.objects_parked - base.kfree.objects_parked)
        + (k.head_queued - base.kfree.head_queued)
        + ctx.alloc_failures.load(Ordering::Relaxed)
}

/// Applies `--mem-limit` as the soft `RLIMIT_AS` (the hard limit stays, so the run can lift it
/// again); returns the previous soft limit.
fn apply_rlimit(limit: MemLimit) -> Option<libc::rlim_t> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut old) } != 0 {
        eprintln!(
            "rcutorture: getrlimit failed: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    let vm = test_support::vm_size();
    let want = match limit {
        MemLimit::Absolute(b) => b,
        MemLimit::Headroom(h) => vm + h,
    } as libc::rlim_t;
    let lim = libc::rlimit {
        rlim_cur: want.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } == 0 {
        eprintln!(
            "rcutorture: RLIMIT_AS set to {} (address space in use: {})",
            bytes(lim.rlim_cur),
            bytes(vm as u64)
        );
        Some(old.rlim_cur)
    } else {
        eprintln!(
            "rcutorture: setrlimit(RLIMIT_AS, {want}) failed: {}",
            std::io::Error::last_os_error()
        );
        None
    }
}

/// Restores the soft `RLIMIT_AS` saved by [`apply_rlimit`].
fn restore_rlimit(soft: libc::rlim_t) {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes / setrlimit reads the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_AS, &mut cur) == 0 {
            cur.rlim_cur = soft;
            libc::setrlimit(libc::RLIMIT_AS, &cur);
        }
    }
}

/// Spawns a named thread with a small stack; `None` (reported) if the OS refuses.
fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<JoinHandle<T>> {
    match std::thread::Builder::new()
        .name(name.clone())
        .stack_size(256 << 10)
        .spawn(f)
    {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("rcutorture: cannot start thread {name}: {e}");
            None
        }
    }
}

/// Creates and publishes the initial element of every cell.
fn fill_cells(
    mode: Mode,
    opts: &Opts,
    cache: Option<&Arc<KmemCache<Elem>>>,
) -> Box<[AtomicPtr<Elem>]> {
    let n = opts.cells * opts.writers;
    (0..n)
        .map(|_| {
            let tag = table()
                .create()
                .expect("pool larger than the cells (checked by cli)");
            let p = match cache {
                Some(c) => {
                    let p = c.alloc().expect("memory for the initial typesafe elements");
                    // SAFETY: a ctor cache hands out valid `Elem`s; not yet published.
                    unsafe { p.as_ref() }.set_identity(tag);
                    p
                }
                None => NonNull::from(Box::leak(
                    Elem::new_box(tag).expect("memory for the initial elements"),
                )),
            };
            debug_assert!(mode != Mode::Typesafe || cache.is_some());
            AtomicPtr::new(p.as_ptr())
        })
        .collect()
}

/// Watches the run: if it has not finished by `deadline` (the end of the run plus time for the
/// drain), reports a hang and exits. Started before any limit applies, so it needs no memory
/// later.
fn watchdog(deadline: Instant, done: Arc<AtomicBool>, mode: Mode) {
    let _ = spawn("rcu-torture-watchdog".into(), move || {
        while !done.load(Ordering::Relaxed) {
            if Instant::now() >= deadline {
                println!(
                    "RESULT mode={} pass=0 hang=1 (the run and its end-of-run drain did not \
                     finish in time)",
                    mode.name()
                );
                eprintln!("rcutorture: FAIL: {} hung (watchdog)", mode.name());
                let _ = std::io::stdout().flush();
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// Runs `mode` for `opts.duration`; prints the progress, summary and histogram.
pub(crate) fn run_mode(opts: &Opts, mode: Mode) -> ModeResult {
    let base = Snap::take();
    let fault_base = super::faults::Base::take();
    let cache = (mode == Mode::Typesafe).then(|| {
        Arc::new(
            KmemCache::<Elem>::builder("rcutorture_elem")
                .typesafe_by_rcu(true)
                .ctor(Elem::slab_ctor)
                .build()
                .expect("typesafe cache"),
        )
    });
    let cells = fill_cells(mode, opts, cache.as_ref());
    let ctx = Arc::new(Ctx {
        mode,
        opts: opts.clone(),
        cells,
        cache,
        stop: AtomicBool::new(false),
        reads: (0..opts.readers)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
        updates: (0..opts.writers)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
        errors: Errors::default(),
        reuse_caught: AtomicU64::new(0),
        alloc_failures: AtomicU64::new(0),
        pool_waits: AtomicU64::new(0),
        barrier_checks: AtomicU64::new(0),
        stalls_injected: AtomicU64::new(0),
        start: Instant::now(),
    });
    if ctx.broken() {
        eprintln!(
            "rcutorture: WARNING: --broken-free-early: retired elements are destroyed BEFORE \
             their grace period ends; this run is meant to FAIL (it shows the checks work)"
        );
    }
    let done = Arc::new(AtomicBool::new(false));
    watchdog(
        ctx.start
            + opts.duration
            + Duration::from_millis(opts.stall_ms * 4)
            + Duration::from_secs(60),
        done.clone(),
        mode,
    );
    let mut limits_applied = false;
    let mut saved_rlimit = None;
    let mut apply_limits = |ctx: &Ctx| {
        if let Some(b) = opts.page_budget {
            rcu_kit::set_memory_limit(Some(b));
            eprintln!(
                "rcutorture: [{:6.2}s] page budget set to {}",
                ctx.elapsed(),
                bytes(b as u64)
            );
        }
        if let Some(l) = opts.mem_limit {
            saved_rlimit = apply_rlimit(l);
        }
    };
    if opts.warmup.is_zero() && opts.page_budget.is_some() {
        // Before any thread starts.
        if let Some(b) = opts.page_budget {
            rcu_kit::set_memory_limit(Some(b));
        }
    }

    let mut readers = Vec::new();
    let mut others: Vec<(String, JoinHandle<()>)> = Vec::new();
    let mut stallers = Vec::new();
    let mut spawn_failed = 0u64;
    for r in 0..opts.readers {
        let c = ctx.clone();
        match spawn(format!("rcu-reader-{r}"), move || reader(c, r)) {
            Some(h) => readers.push(h),
            None => spawn_failed += 1,
        }
    }
    for w in 0..opts.writers {
        let c = ctx.clone();
        match spawn(format!("rcu-writer-{w}"), move || writer(c, w)) {
            Some(h) => others.push((format!("rcu-writer-{w}"), h)),
            None => spawn_failed += 1,
        }
    }
    for i in 0..opts.gp_threads {
        let c = ctx.clone();
        match spawn(format!("rcu-gp-{i}"), move || gp_helper(c, i)) {
            Some(h) => others.push((format!("rcu-gp-{i}"), h)),
            None => spawn_failed += 1,
        }
    }
    if matches!(mode, Mode::CallRcu | Mode::KfreeRcu | Mode::Typesafe) {
        let c = ctx.clone();
        match spawn("rcu-barrier-check".into(), move || barrier_checker(c)) {
            Some(h) => others.push(("rcu-barrier-check".into(), h)),
            None => spawn_failed += 1,
        }
    }
    if opts.stall_ms > 0 {
        let c = ctx.clone();
        match spawn("rcu-staller".into(), move || staller(c)) {
            Some(h) => stallers.push(h),
            None => spawn_failed += 1,
        }
    }

    // Progress.
    let tty = std::io::stderr().is_terminal();
    let tick = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    };
    let end = ctx.start + opts.duration;
    let mut last = (Instant::now(), 0u64, 0u64, base.gps);
    let mut next_line = Instant::now() + tick;
    loop {
        let now = Instant::now();
        if !limits_applied && now >= ctx.start + opts.warmup {
            limits_applied = true;
            if !opts.warmup.is_zero() || opts.mem_limit.is_some() {
                apply_limits(&ctx);
            }
        }
        if now >= end {
            break;
        }
        let mut nap = (end - now).min(next_line.saturating_duration_since(now));
        if !limits_applied {
            nap = nap.min((ctx.start + opts.warmup).saturating_duration_since(now));
        }
        std::thread::sleep(nap);
        if Instant::now() >= next_line {
            next_line += tick;
            let (t0, r0, u0, g0) = last;
            let dt = t0.elapsed().as_secs_f64().max(1e-6);
            let (r, u) = (sum(&ctx.reads), sum(&ctx.updates));
            let g = rcu_kit::rcu_core::stats().grace_periods;
            let k = kfree_batch::stats();
            let line = format!(
                "[{:6.2}s] {:<11} reads {:>8}/s  updates {:>8}/s  GPs {:>7} (+{}/s)  pending {:>9}  fallbacks {:>6}  errors {}",
                ctx.elapsed(),
                mode.name(),
                human((r - r0) as f64 / dt),
                human((u - u0) as f64 / dt),
                g - base.gps,
                human((g - g0) as f64 / dt),
                bytes(k.pending_bytes),
                fallbacks(&ctx, &base),
                ctx.errors.total()
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            last = (Instant::now(), r, u, g);
        }
    }
    if tty {
        eprintln!();
    }
    let elapsed = ctx.start.elapsed();

    // Stop and join.
    ctx.stop.store(true, Ordering::Relaxed);
    let mut aborts = spawn_failed;
    let mut hist = [0u64; NBUCKETS];
    let mut rep_total = ReaderReport::default();
    for h in readers.into_iter().chain(stallers) {
        match h.join() {
            Ok(rep) => {
                for (a, b) in hist.iter_mut().zip(rep.hist) {
                    *a += b;
                }
                rep_total.nested += rep.nested;
                rep_total.sleeps += rep.sleeps;
                rep_total.long += rep.long;
            }
            Err(_) => aborts += 1,
        }
    }
    for (name, h) in others {
        if h.join().is_err() {
            eprintln!("rcutorture: thread {name} panicked");
            aborts += 1;
        }
    }

    // Drain: unpublish every cell and free everything; then check nothing is left.
    let mut ctx = match Arc::try_unwrap(ctx) {
        Ok(c) => c,
        Err(_) => unreachable!("every thread holding the context was joined"),
    };
    let olds: Vec<*mut Elem> = ctx
        .cells
        .iter()
        .map(|c| c.swap(std::ptr::null_mut(), Ordering::AcqRel))
        .collect();
    synchronize_rcu();
    for p in olds {
        let Some(p) = NonNull::new(p) else { continue };
        // SAFETY: unpublished above and every reader is gone; a grace period has passed.
        let tag = unsafe { p.as_ref() }.tag();
        match &ctx.cache {
            Some(c) => {
                table().kill(tag);
                // SAFETY: from this cache, unpublished, a valid `Elem`, freed once.
                unsafe { c.free(p) };
            }
            // SAFETY: boxed cells hold `Box::into_raw` pointers; we own them now.
            None => drop(unsafe { Box::from_raw(p.as_ptr()) }),
        }
    }
    // call_rcu chains re-queue themselves: barrier until every identity is gone.
    let mut barriers = 0;
    loop {
        rcu_barrier();
        kvfree_rcu_barrier();
        barriers += 1;
        let (c, k, _) = table().counts();
        if c - base.ids.0 == k - base.ids.1 || barriers >= 4 * PIPE_LEN {
            break;
        }
    }
    let mut cache_leak = None;
    if let Some(cache) = ctx.cache.take() {
        match Arc::try_unwrap(cache) {
            Ok(c) => {
                c.shrink();
                let st = c.stats();
                if let Err(e) = c.destroy() {
                    cache_leak = Some(format!("{e} (active objects {})", st.active_objects));
                }
            }
            Err(_) => cache_leak = Some("kfree_rcu_cache still holds the cache".into()),
        }
    }
    rcu_barrier();
    done.store(true, Ordering::Relaxed);
    if opts.page_budget.is_some() {
        rcu_kit::set_memory_limit(None);
    }
    if let Some(soft) = saved_rlimit {
        restore_rlimit(soft);
    }

    // Report.
    let after = Snap::take();
    let reads = sum(&ctx.reads);
    let updates = sum(&ctx.updates);
    let secs = elapsed.as_secs_f64();
    let k = after.kfree;
    let kb = base.kfree;
    let ids_created = after.ids.0 - base.ids.0;
    let ids_killed = after.ids.1 - base.ids.1;
    let double_kills = after.ids.2 - base.ids.2;
    let boxes = after.box_allocs - base.box_allocs;
    let box_frees = after.box_frees - base.box_frees;
    let kq = k.queued - kb.queued;
    let kf = k.freed - kb.freed;
    let lost_ids = ids_created.saturating_sub(ids_killed);
    let lost_boxes = boxes.saturating_sub(box_frees);
    let lost_kfree = kq.saturating_sub(kf) + k.parked_now;
    // Every slot back on the free list (also catches slots lost by earlier modes).
    let lost_slots = (table().size() - table().free_slots()) as u64;
    let lost = lost_ids.max(lost_slots) + lost_boxes + lost_kfree + u64::from(cache_leak.is_some());
    let panics = after.panics - base.panics;
    let bad_drops = after.bad_drops - base.bad_drops;
    let errors = ctx.errors.total() + double_kills + bad_drops;
    let aborts = aborts + panics;
    let pass = errors == 0 && lost == 0 && aborts == 0;
    let fb_sync = k.fallback_sync - kb.fallback_sync;
    let parked = k.objects_parked - kb.objects_parked;
    let heads = k.head_queued - kb.head_queued;
    let pg = after.pages;
    let pb = base.pages;

    let mut o = String::new();
    use std::fmt::Write as _;
    let _ =
        writeln!(
        o,
        "rcutorture: mode={} readers={} writers={} gp-threads={} seconds={:.2} seed={:#x} pool={} \
         cells={} page-budget={} mem-limit={} stall-ms={}{}",
        mode.name(),
        opts.readers,
        opts.writers,
        opts.gp_threads,
        secs,
        opts.seed,
        table().size(),
        opts.cells * opts.writers,
        opts.page_budget.map_or("none".into(), |b| bytes(b as u64)),
        match opts.mem_limit {
            None => "none".into(),
            Some(MemLimit::Absolute(b)) => bytes(b as u64),
            Some(MemLimit::Headroom(h)) => format!("+{}", bytes(h as u64)),
        },
        opts.stall_ms,
        if ctx.broken() { " BROKEN-FREE-EARLY" } else { "" }
    );
    let _ = writeln!(
        o,
        "  reads {} ({}/s)  updates {} ({}/s)  grace periods {}  callbacks {}  nested {}  \
         long sections {}  sleeps {}",
        reads,
        human(reads as f64 / secs),
        updates,
        human(updates as f64 / secs),
        after.gps - base.gps,
        after.cbs - base.cbs,
        rep_total.nested,
        rep_total.long,
        rep_total.sleeps
    );
    let _ = writeln!(
        o,
        "  pipeline age at the end of each read-side critical section (ages 0..{PIPE_LEN}, \
         then destroyed; any count past age 1 = RCU broken):"
    );
    let _ = write!(o, "  Reader Pipe: ");
    for v in &hist {
        let _ = write!(o, " {v}");
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  kfree: queued {kq} freed {kf} fallback_sync {fb_sync} objects_parked {parked} \
         head_queued {heads} peak_pending {} cap {}",
        bytes(k.peak_pending_bytes),
        bytes(k.pending_cap)
    );
    let _ = writeln!(
        o,
        "  pages: peak {} alloc_failures {} budget_refusals {} os_refusals {} shrinker_runs {}",
        bytes(pg.peak_bytes as u64),
        pg.alloc_failures - pb.alloc_failures,
        pg.budget_refusals - pb.budget_refusals,
        pg.os_refusals - pb.os_refusals,
        pg.shrinker_runs - pb.shrinker_runs
    );
    let _ = writeln!(
        o,
        "  elements: boxes {boxes} freed {box_frees}  identities {ids_created} ended \
         {ids_killed}  element alloc failures {}  pool waits {}  reuse races caught {}  \
         barrier checks {}  stalls injected {}  stall reports {}{}",
        ctx.alloc_failures.load(Ordering::Relaxed),
        ctx.pool_waits.load(Ordering::Relaxed),
        ctx.reuse_caught.load(Ordering::Relaxed),
        ctx.barrier_checks.load(Ordering::Relaxed),
        ctx.stalls_injected.load(Ordering::Relaxed),
        after.stalls - base.stalls,
        cache_leak
            .as_ref()
            .map_or(String::new(), |l| format!("  cache: {l}"))
    );
    let kinds: Vec<String> = ctx
        .errors
        .by_kind()
        .iter()
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    let _ = writeln!(
        o,
        "  errors {errors} ({}, double-destroy {double_kills}, bad-drop {bad_drops})  lost \
         {lost}  aborts {aborts}",
        kinds.join(", ")
    );
    o.push_str(&super::faults::summary(mode.name(), &fault_base));
    let _ = writeln!(
        o,
        "RESULT mode={} pass={} errors={errors} lost={lost} aborts={aborts} reads={reads} \
         updates={updates} gps={} fallback_sync={fb_sync} objects_parked={parked} \
         head_queued={heads} alloc_failures={} budget_refusals={} os_refusals={} \
         peak_pending={} pending_cap={} reuse_caught={} stall_reports={} age_gt1={}",
        mode.name(),
        u8::from(pass),
        after.gps - base.gps,
        ctx.alloc_failures.load(Ordering::Relaxed),
        pg.budget_refusals - pb.budget_refusals,
        pg.os_refusals - pb.os_refusals,
        k.peak_pending_bytes,
        k.pending_cap,
        ctx.reuse_caught.load(Ordering::Relaxed),
        after.stalls - base.stalls,
        hist[2..].iter().sum::<u64>()
    );
    let _ = writeln!(
        o,
        "rcutorture: {}: {}",
        mode.name(),
        if pass {
            "PASS"
        } else if errors > 0 {
            "FAIL (RCU errors: something was freed under a reader)"
        } else {
            "FAIL"
        }
    );
    print!("{o}");
    let _ = std::io::stdout().flush();
    ModeResult { pass }
}
