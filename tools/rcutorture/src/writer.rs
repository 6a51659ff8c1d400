//! Writers: replace published elements and retire the old ones through the mode under test;
//! grace-period helpers and the barrier checker.
//!
//! # Implementation
//!
//! An update takes a fresh identity and element, swaps it into a random cell of the writer's
//! own, sets the removed element's age to 1 and retires it:
//!
//! | mode        | retire                                 | ages 2.. come from                |
//! |-------------|----------------------------------------|-----------------------------------|
//! | call-rcu    | `call_rcu` (every 4th chain `call_rcu_raw`) | the callback re-queues itself, +1 per callback, freed at `PIPE_LEN` |
//! | kfree-rcu   | `kfree_rcu` / `kfree_rcu_head`, half inside a reader | none: the destructor kills the identity |
//! | synchronize | writer pipeline + `synchronize_rcu` per update | pipeline stages, +1 per completed snapshot |
//! | expedited   | same with `synchronize_rcu_expedited`  | same                              |
//! | polled      | pipeline, `start_poll_`/`get_state_synchronize_rcu` snapshots, `poll_state_`, `cond_synchronize_rcu` when full | same |
//! | typesafe    | object freed to its cache at once or via `kfree_rcu_cache`; the identity goes through the polled pipeline | same |
//!
//! A pipeline stage holds elements removed before its snapshot was taken; when the snapshot's
//! grace period is over, all of them have had one more full grace period, so each gets age + 1
//! and the stage takes a new snapshot. At `PIPE_LEN` they are freed.
//!
//! **Broken build** (`--broken-free-early`): the removed element is destroyed at once (identity
//! killed, memory poisoned) while its memory is still freed through the normal, grace-period
//! deferred path. Readers that still hold it see a destroyed element: what a premature free looks
//! like, without undefined behaviour, so the run ends with a report instead of a crash.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcu_kit::rcu_core::call_rcu_raw;
use rcu_kit::{
    call_rcu, cond_synchronize_rcu, get_state_synchronize_rcu, kfree_rcu, kfree_rcu_cache,
    kfree_rcu_head, kvfree_rcu_barrier, poll_state_synchronize_rcu, rcu_barrier, rcu_read_lock,
    start_poll_synchronize_rcu, synchronize_rcu, synchronize_rcu_expedited, GpState,
};

use super::cli::Mode;
use super::ctx::{Ctx, ErrKind};
use super::elem::{try_box, Elem, Rng};
use super::table::{table, PIPE_LEN};

/// A retired element in a writer's pipeline.
#[derive(Debug)]
enum Item {
    /// A boxed element (its destructor kills the identity).
    Boxed(Box<Elem>),
    /// The identity of a typesafe object that already went back to its cache.
    Id {
        /// The identity.
        tag: u64,
        /// Already killed (broken build).
        killed: bool,
    },
}

impl Item {
    fn tag(&self) -> u64 {
        match self {
            Item::Boxed(b) => b.tag(),
            Item::Id { tag, .. } => *tag,
        }
    }

    /// Frees the element / ends the identity.
    fn finish(self) {
        match self {
            Item::Boxed(b) => drop(b),
            Item::Id { tag, killed } => {
                if !killed {
                    table().kill(tag);
                }
            }
        }
    }
}

/// Elements that left at the same time and have the same age.
#[derive(Debug)]
struct Stage {
    items: Vec<Item>,
    age: u32,
    snap: GpState,
}

/// A writer's retired elements, aged by the grace periods it observes (see the module docs).
#[derive(Debug, Default)]
struct Pipeline {
    /// Removed since the last `close` (age 1, no snapshot yet).
    open: Vec<Item>,
    stages: VecDeque<Stage>,
    len: usize,
}

impl Pipeline {
    fn push(&mut self, it: Item) {
        self.open.push(it);
        self.len += 1;
    }

    /// Starts waiting for `snap` (taken after the open items were removed).
    fn close(&mut self, snap: GpState) {
        if !self.open.is_empty() {
            let items = std::mem::take(&mut self.open);
            self.stages.push_back(Stage {
                items,
                age: 1,
                snap,
            });
        }
    }

    /// Ages every stage whose snapshot completed; frees those reaching `PIPE_LEN`.
    /// `resnap` takes the next snapshot of a stage that aged.
    fn tick(&mut self, resnap: &mut dyn FnMut() -> GpState) {
        let mut freed = 0;
        self.stages.retain_mut(|s| {
            if !poll_state_synchronize_rcu(s.snap) {
                return true;
            }
            s.age += 1;
            if s.age >= PIPE_LEN {
                freed += s.items.len();
                for it in s.items.drain(..) {
                    table().set_age(it.tag(), PIPE_LEN);
                    it.finish();
                }
                return false;
            }
            for it in &s.items {
                table().set_age(it.tag(), s.age);
            }
            s.snap = resnap();
            true
        });
        self.len -= freed;
    }

    /// Waits for the oldest stage's grace period, then ticks.
    fn wait_oldest(&mut self, resnap: &mut dyn FnMut() -> GpState) {
        if let Some(s) = self.stages.front() {
            cond_synchronize_rcu(s.snap);
        } else {
            synchronize_rcu();
        }
        self.tick(resnap);
    }

    /// Frees everything after one full grace period (end of the run).
    fn flush(&mut self) {
        synchronize_rcu();
        for it in self.open.drain(..) {
            it.finish();
        }
        for s in self.stages.drain(..) {
            for it in s.items {
                it.finish();
            }
        }
        self.len = 0;
    }
}

/// One writer thread's state.
struct Writer<'a> {
    ctx: &'a Ctx,
    w: usize,
    rng: Rng,
    pipe: Pipeline,
    /// Updates done.
    n: u64,
    /// Snapshots taken (alternates start_poll / get_state in polled modes).
    snaps: u64,
    /// Largest pipeline before `cond_synchronize_rcu` is used.
    pipe_limit: usize,
}

impl Writer<'_> {
    /// A snapshot for a pipeline stage.
    fn snap(mode: Mode, snaps: &mut u64) -> GpState {
        *snaps += 1;
        match mode {
            // Half the snapshots start a grace period, half rely on others to (the helpers,
            // other writers, the kit's workers).
            Mode::Polled | Mode::Typesafe if *snaps % 2 == 0 => start_poll_synchronize_rcu(),
            _ => get_state_synchronize_rcu(),
        }
    }

    fn tick(&mut self) {
        let (mode, snaps) = (self.ctx.mode, &mut self.snaps);
        self.pipe.tick(&mut || Writer::snap(mode, snaps));
    }

    fn wait_oldest(&mut self) {
        let (mode, snaps) = (self.ctx.mode, &mut self.snaps);
        self.pipe.wait_oldest(&mut || Writer::snap(mode, snaps));
    }

    /// Makes room when no identity or no memory can be had: lets retired elements get freed.
    fn make_room(&mut self) {
        match self.ctx.mode {
            Mode::CallRcu => {
                synchronize_rcu();
                std::thread::sleep(Duration::from_micros(200));
            }
            Mode::KfreeRcu => {
                if self.ctx.pool_waits.load(Ordering::Relaxed) % 8 == 7 {
                    kvfree_rcu_barrier();
                } else {
                    synchronize_rcu();
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Mode::Synchronize | Mode::Expedited | Mode::Polled | Mode::Typesafe => {
                let s = Writer::snap(self.ctx.mode, &mut self.snaps);
                self.pipe.close(s);
                self.wait_oldest();
            }
        }
    }

    /// A new element with a fresh identity, or `None` after making room.
    fn make_elem(&mut self) -> Option<NonNull<Elem>> {
        let Some(tag) = table().create() else {
            self.ctx.pool_waits.fetch_add(1, Ordering::Relaxed);
            self.make_room();
            return None;
        };
        let p = match &self.ctx.cache {
            Some(cache) => cache.alloc().inspect(|p| {
                // SAFETY: a ctor cache hands out valid `Elem`s; this one is ours until published.
                unsafe { p.as_ref() }.set_identity(tag)
            }),
            None => Elem::new_box(tag).map(|b| NonNull::from(Box::leak(b))),
        };
        if p.is_none() {
            // Never published: end the identity at once.
            table().kill(tag);
            self.ctx.alloc_failures.fetch_add(1, Ordering::Relaxed);
            self.make_room();
            std::thread::sleep(Duration::from_millis(1));
        }
        p
    }

    fn run(&mut self) {
        let per = self.ctx.opts.cells;
        let base = self.w * per;
        while !self.ctx.stop.load(Ordering::Relaxed) {
            let Some(new) = self.make_elem() else {
                continue;
            };
            let c = base + self.rng.below(per as u64) as usize;
            // AcqRel: Release publishes the new element's initialisation to readers (pairs with
            // their Acquire load); Acquire makes the old element's fields ours.
            let old = self.ctx.cells[c].swap(new.as_ptr(), Ordering::AcqRel);
            let old = NonNull::new(old).expect("cells are never empty while writers run");
            self.retire(old);
            self.n += 1;
            self.ctx.updates[self.w].fetch_add(1, Ordering::Relaxed);
        }
        self.pipe.flush();
    }

    /// Retires `old`, just unpublished from a cell.
    fn retire(&mut self, old: NonNull<Elem>) {
        let ctx = self.ctx;
        let broken = ctx.broken();
        // SAFETY: `old` was published by a writer and we just took it out of its cell, so we
        // own it; readers may still look at it until a grace period passes.
        let tag = unsafe { old.as_ref() }.tag();
        table().set_age(tag, 1);
        if let Some(cache) = &ctx.cache {
            // Typesafe: the object may be reused at once; the identity ages in the pipeline.
            if broken {
                table().kill(tag);
            }
            self.pipe.push(Item::Id {
                tag,
                killed: broken,
            });
            if self.n % 2 == 0 {
                // SAFETY: the object came from this cache, is unpublished and still a valid
                // `Elem` (all fields atomics, magic intact); readers that still hold it
                // revalidate its identity, which a typesafe cache allows.
                unsafe { cache.free(old) };
            } else {
                // SAFETY: from `cache`, unreachable for new readers, retired once.
                unsafe { kfree_rcu_cache(cache, old) };
            }
            if self.n % 1024 == 1023 {
                cache.shrink();
            }
            self.polled_step();
            return;
        }
        // SAFETY: boxed modes publish `Box::into_raw` pointers (`make_elem`); we own `old`.
        let b = unsafe { Box::from_raw(old.as_ptr()) };
        if broken {
            b.destroy_early();
        }
        match ctx.mode {
            Mode::CallRcu => {
                if broken {
                    call_rcu(move || drop(b));
                } else {
                    call_rcu(move || age_chain(b));
                }
            }
            Mode::KfreeRcu => {
                // Half the retires happen inside a read-side critical section (legal; under
                // memory pressure they park instead of waiting).
                let g = (self.n % 2 == 1).then(rcu_read_lock);
                if self.n % 4 < 2 {
                    kfree_rcu(b);
                } else {
                    kfree_rcu_head(b);
                }
                drop(g);
            }
            Mode::Synchronize | Mode::Expedited => {
                self.pipe.push(Item::Boxed(b));
                self.pipe.close(get_state_synchronize_rcu());
                if ctx.mode == Mode::Expedited {
                    synchronize_rcu_expedited();
                } else {
                    synchronize_rcu();
                }
                self.tick();
            }
            Mode::Polled => {
                self.pipe.push(Item::Boxed(b));
                self.polled_step();
            }
            Mode::Typesafe => unreachable!("typesafe elements come from the cache"),
        }
    }

    /// The polled pipeline's step after a retire.
    fn polled_step(&mut self) {
        if self.pipe.open.len() >= 16 || self.pipe.stages.is_empty() {
            let s = Writer::snap(self.ctx.mode, &mut self.snaps);
            self.pipe.close(s);
        }
        self.tick();
        while self.pipe.len > self.pipe_limit {
            self.wait_oldest();
        }
    }
}

/// The call-rcu callback: one more grace period for `b`; re-queued until `PIPE_LEN`.
fn age_chain(b: Box<Elem>) {
    let tag = b.tag();
    match table().bump(tag) {
        Some(age) if age < PIPE_LEN => {
            if tag % 4 == 0 {
                let p = Box::into_raw(b).cast::<()>();
                // SAFETY: `age_chain_raw` takes the box back exactly once, on the worker, after
                // a grace period; `Elem` is `Send`.
                unsafe { call_rcu_raw(age_chain_raw, p) };
            } else {
                call_rcu(move || age_chain(b));
            }
        }
        _ => drop(b),
    }
}

/// [`age_chain`] for `call_rcu_raw`.
///
/// # Safety
/// `p` is a `Box::into_raw` of a retired `Elem`, passed exactly once.
unsafe fn age_chain_raw(p: *mut ()) {
    // SAFETY: by the contract.
    age_chain(unsafe { Box::from_raw(p.cast::<Elem>()) });
}

/// A writer thread.
pub(crate) fn writer(ctx: Arc<Ctx>, w: usize) {
    let pipe_limit = (ctx.opts.pool / ctx.opts.writers / 2).max(64);
    Writer {
        ctx: &ctx,
        w,
        rng: Rng::new(ctx.opts.seed, 0x3000 + w as u64),
        pipe: Pipeline::default(),
        n: 0,
        snaps: 0,
        pipe_limit,
    }
    .run();
}

/// A grace-period helper (liburcu's "fake writer"): waits for grace periods with every API, so
/// that grace periods overlap the writers' and callers share them.
pub(crate) fn gp_helper(ctx: Arc<Ctx>, i: usize) {
    let mut rng = Rng::new(ctx.opts.seed, 0x4000 + i as u64);
    while !ctx.stop.load(Ordering::Relaxed) {
        match rng.below(4) {
            0 | 1 => synchronize_rcu(),
            2 => synchronize_rcu_expedited(),
            _ => cond_synchronize_rcu(get_state_synchronize_rcu()),
        }
        std::thread::sleep(Duration::from_micros(500 + rng.below(1000)));
    }
}

/// Set when a barrier test object is freed.
struct Sentinel {
    done: Arc<AtomicU64>,
    seq: u64,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        // Release pairs with the checker's Acquire load after the barrier.
        self.done.store(self.seq, Ordering::Release);
    }
}

/// Checks that `rcu_barrier` (call-rcu) / `kvfree_rcu_barrier` (kfree-rcu, typesafe) wait for
/// what was queued before them, while the writers run.
pub(crate) fn barrier_checker(ctx: Arc<Ctx>) {
    let done = Arc::new(AtomicU64::new(0));
    let mut seq = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        seq += 1;
        let s = Sentinel {
            done: done.clone(),
            seq,
        };
        let what = match ctx.mode {
            Mode::CallRcu => {
                call_rcu(move || drop(s));
                rcu_barrier();
                "rcu_barrier"
            }
            _ => {
                // On failure the sentinel drops here, marking `seq` done: nothing was queued.
                let Ok(b) = try_box(s) else {
                    ctx.alloc_failures.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                kfree_rcu(b);
                kvfree_rcu_barrier();
                "kvfree_rcu_barrier"
            }
        };
        let got = done.load(Ordering::Acquire);
        if got != seq {
            ctx.errors.report(
                ErrKind::Barrier,
                format_args!(
                    "{what} returned before object {seq} queued before it was freed (last \
                     freed: {got}) at {:.3}s",
                    ctx.elapsed()
                ),
            );
            // Let it land before the next round so one failure is counted once.
            rcu_barrier();
            kvfree_rcu_barrier();
        }
        ctx.barrier_checks.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
}
