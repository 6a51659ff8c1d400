//! Readers: check the pipeline age of what they hold, nest, sleep, hold long sections; and the
//! stall injector.
//!
//! # Implementation
//!
//! A read-side critical section picks a random cell, loads its element and checks it twice: at
//! the start and at the end of the section (after nested sections, spins or sleeps). A check
//! verifies the element's memory (`magic`, integrity word) and looks its identity up in the table:
//! an age of 0 or 1 is fine, anything else (older, dead, recycled) is an error, because a grace
//! period that began after the element's removal must wait for this reader. The age seen at the
//! end goes into the per-reader histogram (bucket `PIPE_LEN + 1` = destroyed).
//!
//! Typesafe objects may legally be freed and reused for a new identity while a reader holds
//! them: the reader keeps checking the identity it saw first, and a different tag at the end
//! counts as a reuse race caught by revalidation (not an error).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcu_kit::rcu_read_lock;

use super::cli::Mode;
use super::ctx::{Ctx, ErrKind};
use super::elem::{Elem, Rng, MAGIC_BOX, MAGIC_SLAB, POISON_BOX, POISON_SLAB};
use super::table::{table, Seen, PIPE_LEN};

/// Histogram buckets: ages `0..=PIPE_LEN`, then "destroyed".
pub(crate) const NBUCKETS: usize = PIPE_LEN as usize + 2;
/// The "destroyed" bucket.
const FREED_BUCKET: usize = NBUCKETS - 1;

/// What a reader thread hands back.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReaderReport {
    /// Pipeline ages seen at the end of each outermost section.
    pub(crate) hist: [u64; NBUCKETS],
    /// Nested sections.
    pub(crate) nested: u64,
    /// Sections that slept.
    pub(crate) sleeps: u64,
    /// Long sections (milliseconds).
    pub(crate) long: u64,
}

impl Ctx {
    /// Checks `e` at the start of a section: returns its identity, or `None` (error counted)
    /// when its memory is not a valid element.
    fn check_start(&self, e: &Elem, what: &str) -> Option<u64> {
        if !self.check_memory(e, what) {
            return None;
        }
        let tag = e.tag();
        if self.mode != Mode::Typesafe && e.check() != super::elem::mix(tag) {
            self.errors.report(
                ErrKind::Corrupt,
                format_args!(
                    "{what}: element {e:p} tag {tag:#x} has integrity word {:#x} (published \
                     before initialised?) at {:.3}s",
                    e.check(),
                    self.elapsed()
                ),
            );
            return None;
        }
        self.check_identity(tag, what);
        Some(tag)
    }

    /// Checks that `e` is (still) element memory.
    fn check_memory(&self, e: &Elem, what: &str) -> bool {
        let want = if self.mode == Mode::Typesafe {
            MAGIC_SLAB
        } else {
            MAGIC_BOX
        };
        let m = e.magic();
        if m == want {
            return true;
        }
        let (kind, why) = match m {
            POISON_BOX => (ErrKind::Freed, "was destroyed"),
            POISON_SLAB => (ErrKind::Freed, "was dropped by its cache (slab discarded)"),
            _ => (ErrKind::Corrupt, "is not an element (bad magic)"),
        };
        self.errors.report(
            kind,
            format_args!(
                "{what}: element {e:p} {why} while a reader holds it (magic {m:#x}) at {:.3}s",
                self.elapsed()
            ),
        );
        false
    }

    /// Looks identity `tag` up; returns the histogram bucket, counting an error unless the age
    /// is 0 or 1.
    fn check_identity(&self, tag: u64, what: &str) -> usize {
        let seen = table().observe(tag);
        let (kind, bucket) = match seen {
            Seen::Age(a) if a <= 1 => return a as usize,
            Seen::Age(a) => (ErrKind::Age, a.min(PIPE_LEN) as usize),
            Seen::Dead => (ErrKind::Freed, FREED_BUCKET),
            Seen::Recycled => (ErrKind::Recycled, FREED_BUCKET),
        };
        self.errors.report(
            kind,
            format_args!(
                "{what}: identity {tag:#x} seen as {seen:?} inside a read-side critical section \
                 at {:.3}s",
                self.elapsed()
            ),
        );
        bucket
    }

    /// Checks `e` (identity `tag` from the start of the section) again; returns the bucket.
    fn check_end(&self, e: &Elem, tag: u64, what: &str) -> usize {
        let bucket = self.check_identity(tag, what);
        if self.check_memory(e, what) && e.tag() != tag {
            if self.mode == Mode::Typesafe {
                self.reuse_caught.fetch_add(1, Ordering::Relaxed);
            } else {
                self.errors.report(
                    ErrKind::Corrupt,
                    format_args!(
                        "{what}: boxed element {e:p} changed identity {tag:#x} -> {:#x} at {:.3}s",
                        e.tag(),
                        self.elapsed()
                    ),
                );
            }
        }
        bucket
    }
}

/// Spins a little.
fn spin(rng: &mut Rng, max: u64) {
    for _ in 0..rng.below(max) {
        std::hint::spin_loop();
    }
}

/// A reader thread.
pub(crate) fn reader(ctx: Arc<Ctx>, r: usize) -> ReaderReport {
    let mut rng = Rng::new(ctx.opts.seed, 0x1000 + r as u64);
    let mut rep = ReaderReport::default();
    let ncells = ctx.cells.len() as u64;
    let mut last_long = Instant::now();
    let mut n: u64 = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        n += 1;
        let g = rcu_read_lock();
        let e = ctx.load(rng.below(ncells) as usize, &g);
        let Some(tag) = ctx.check_start(e, "reader") else {
            drop(g);
            continue;
        };
        let roll = rng.next();
        if roll % 8 == 0 {
            // Nested section over another (or the same) cell.
            rep.nested += 1;
            let g2 = rcu_read_lock();
            let e2 = ctx.load(rng.below(ncells) as usize, &g2);
            if let Some(tag2) = ctx.check_start(e2, "nested reader") {
                spin(&mut rng, 64);
                ctx.check_end(e2, tag2, "nested reader");
            }
            drop(g2);
        }
        if n % 1024 == 0 && last_long.elapsed() >= Duration::from_millis(40) && roll % 4 == 1 {
            // A long section (1..4 ms) that keeps checking what it holds.
            rep.long += 1;
            let until = Instant::now() + Duration::from_micros(1000 + rng.below(3000));
            while Instant::now() < until && !ctx.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(200));
                ctx.check_identity(tag, "long reader");
            }
            last_long = Instant::now();
        } else if roll % 4096 == 2 {
            rep.sleeps += 1;
            std::thread::sleep(Duration::from_micros(20 + rng.below(100)));
        } else {
            spin(&mut rng, 32);
        }
        let bucket = ctx.check_end(e, tag, "reader");
        drop(g);
        rep.hist[bucket] += 1;
        if n % 64 == 0 {
            ctx.reads[r].fetch_add(64, Ordering::Relaxed);
        }
    }
    ctx.reads[r].fetch_add(n % 64, Ordering::Relaxed);
    rep
}

/// The stall injector (`--stall-ms`): holds a read-side critical section for the stall length,
/// checking its element every millisecond, then pauses for half as long, until the run ends.
pub(crate) fn staller(ctx: Arc<Ctx>) -> ReaderReport {
    let stall = Duration::from_millis(ctx.opts.stall_ms);
    let pause = (stall / 2).max(Duration::from_millis(100));
    let mut rng = Rng::new(ctx.opts.seed, 0x2000);
    let mut rep = ReaderReport::default();
    let ncells = ctx.cells.len() as u64;
    let sleep_unless_stopped = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !ctx.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5).min(d));
        }
    };
    sleep_unless_stopped(pause.min(ctx.opts.warmup.max(Duration::from_millis(100))));
    while !ctx.stop.load(Ordering::Relaxed) {
        let g = rcu_read_lock();
        let e = ctx.load(rng.below(ncells) as usize, &g);
        if let Some(tag) = ctx.check_start(e, "stalled reader") {
            ctx.stalls_injected.fetch_add(1, Ordering::Relaxed);
            rep.long += 1;
            let until = Instant::now() + stall;
            while Instant::now() < until && !ctx.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                ctx.check_identity(tag, "stalled reader");
            }
            let bucket = ctx.check_end(e, tag, "stalled reader");
            rep.hist[bucket] += 1;
        }
        drop(g);
        sleep_unless_stopped(pause);
    }
    rep
}
