//! Loom model of the per-CPU sheaf try-lock hand-off with the barn (`--cfg rcu_loom`).
//!
//! Run: `RUSTFLAGS="--cfg rcu_loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p slab-backend --release
//! --test loom_sheaf`. Under loom a sheaf holds 2 objects and the barn 1 full + 1 empty sheaf, so
//! a handful of operations walks every path: pop, spare swap, barn trades, refill and flush.
//! Both threads claim CPU 0, so they contend for slot 0 and the loser takes slot 1 (the
//! "use the next slot, never spin" rule); a `Nolock` thread may only try its own slot.
#![cfg(rcu_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use slab_backend::sheaf_model::{Backing, Miss, Mode, PerCpu, Sheaf};

const OBJECTS: usize = 6;

/// The "slab lists": a pool of fake object addresses, plus an ownership bitmap that catches an
/// object handed to two owners at once.
struct Pool {
    free: Mutex<Vec<usize>>,
    owned: AtomicUsize,
}

impl Pool {
    fn new() -> Self {
        Self {
            free: Mutex::new((1..=OBJECTS).map(|i| i * 64).collect()),
            owned: AtomicUsize::new(0),
        }
    }

    fn take_ownership(&self, obj: *mut u8) {
        let bit = 1 << (obj as usize / 64);
        let old = self.owned.fetch_or(bit, Ordering::AcqRel);
        assert_eq!(old & bit, 0, "object {obj:p} handed out twice");
    }

    fn give_up(&self, obj: *mut u8) {
        let bit = 1 << (obj as usize / 64);
        let old = self.owned.fetch_and(!bit, Ordering::AcqRel);
        assert_ne!(old & bit, 0, "object {obj:p} freed while not owned");
    }
}

impl Backing for Pool {
    fn refill(&self, sheaf: &mut Sheaf, mode: Mode) -> usize {
        let mut free = match mode {
            Mode::Normal => self.free.lock().unwrap(),
            Mode::Nolock => match self.free.try_lock() {
                Ok(g) => g,
                Err(_) => return 0,
            },
        };
        let mut n = 0;
        while !sheaf.is_full() {
            let Some(o) = free.pop() else { break };
            sheaf.push(o as *mut u8);
            n += 1;
        }
        n
    }

    fn flush(&self, sheaf: &mut Sheaf, mode: Mode) -> bool {
        let mut free = match mode {
            Mode::Normal => self.free.lock().unwrap(),
            Mode::Nolock => match self.free.try_lock() {
                Ok(g) => g,
                Err(_) => return false,
            },
        };
        free.extend(sheaf.objects().iter().map(|&p| p as usize));
        sheaf.clear();
        true
    }
}

fn alloc(pc: &PerCpu, pool: &Pool, mode: Mode) -> Result<*mut u8, Miss> {
    let r = match pc.alloc(0, pool, mode) {
        // What the cache's `alloc_direct` does when every slot is held.
        Err(Miss::Busy) if mode == Mode::Normal => {
            let o = pool.free.lock().unwrap().pop();
            o.map(|o| o as *mut u8).ok_or(Miss::Empty)
        }
        r => r,
    };
    if let Ok(p) = r {
        pool.take_ownership(p);
    }
    r
}

fn free(pc: &PerCpu, pool: &Pool, p: *mut u8, mode: Mode) {
    pool.give_up(p);
    if let Err(p) = pc.free(0, pool, p, mode) {
        // What `free_direct` (Normal, all slots held) and kfree_nolock's deferred list (drained
        // at once here) do.
        pool.free.lock().unwrap().push(p as usize);
    }
}

fn check_conserved(pc: &PerCpu, pool: &Pool) {
    pc.flush_all(pool, true);
    let mut all = pool.free.lock().unwrap().clone();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=OBJECTS).map(|i| i * 64).collect::<Vec<_>>(),
        "objects lost or duplicated"
    );
    assert_eq!(pool.owned.load(Ordering::Relaxed), 0);
}

#[test]
fn two_threads_contend_for_one_slot() {
    loom::model(|| {
        let pc = Arc::new(PerCpu::new(2));
        let pool = Arc::new(Pool::new());
        let t = {
            let (pc, pool) = (pc.clone(), pool.clone());
            loom::thread::spawn(move || {
                let a = alloc(&pc, &pool, Mode::Normal).unwrap();
                let b = alloc(&pc, &pool, Mode::Normal).unwrap();
                free(&pc, &pool, a, Mode::Normal);
                free(&pc, &pool, b, Mode::Normal);
            })
        };
        let a = alloc(&pc, &pool, Mode::Normal).unwrap();
        let b = alloc(&pc, &pool, Mode::Normal).unwrap();
        let c = alloc(&pc, &pool, Mode::Normal).unwrap();
        free(&pc, &pool, b, Mode::Normal);
        free(&pc, &pool, a, Mode::Normal);
        free(&pc, &pool, c, Mode::Normal);
        t.join().unwrap();
        check_conserved(&pc, &pool);
    });
}

#[test]
fn nolock_caller_never_waits_on_a_held_slot() {
    loom::model(|| {
        let pc = Arc::new(PerCpu::new(1));
        let pool = Arc::new(Pool::new());
        let t = {
            let (pc, pool) = (pc.clone(), pool.clone());
            loom::thread::spawn(move || {
                // The "signal handler": may find the slot busy (Busy) or the pool empty/locked.
                if let Ok(p) = alloc(&pc, &pool, Mode::Nolock) {
                    free(&pc, &pool, p, Mode::Nolock);
                }
            })
        };
        for _ in 0..3 {
            let p = alloc(&pc, &pool, Mode::Normal).expect("Normal alloc always finds objects");
            free(&pc, &pool, p, Mode::Normal);
        }
        t.join().unwrap();
        check_conserved(&pc, &pool);
    });
}

/// A `fork()` child: slot 0 was held by a thread that does not exist there. The child handler
/// marks it dead (its objects are lost); a reviver gives it new sheaves while other callers
/// allocate and free through the slots (Normal) or try slot 0 only (Nolock). No object may be
/// handed out twice, and every object outside the dead slot is conserved.
#[test]
fn dead_slot_is_revived_while_others_allocate() {
    loom::model(|| {
        let pc = Arc::new(PerCpu::new(2));
        let pool = Arc::new(Pool::new());
        // Two objects end up in slot 0's main sheaf.
        let a = alloc(&pc, &pool, Mode::Normal).unwrap();
        let b = alloc(&pc, &pool, Mode::Normal).unwrap();
        free(&pc, &pool, a, Mode::Normal);
        free(&pc, &pool, b, Mode::Normal);
        // The fork: slot 0 is held by the thread that dies; the handlers run on this one.
        pc.hold_slot_forever(0);
        pc.fork_lock_slots(&mut || true);
        pc.fork_lock_barn();
        assert!(pc.fork_child(), "slot 0 must be marked dead");
        let reviver = {
            let pc = pc.clone();
            loom::thread::spawn(move || {
                pc.revive_dead();
            })
        };
        let user = {
            let (pc, pool) = (pc.clone(), pool.clone());
            loom::thread::spawn(move || {
                let p = alloc(&pc, &pool, Mode::Normal).unwrap();
                free(&pc, &pool, p, Mode::Normal);
            })
        };
        if let Ok(p) = alloc(&pc, &pool, Mode::Nolock) {
            free(&pc, &pool, p, Mode::Nolock);
        }
        reviver.join().unwrap();
        user.join().unwrap();
        assert_eq!(pc.revive_dead(), 0, "revived twice");
        pc.flush_all(&*pool, true);
        let mut all = pool.free.lock().unwrap().clone();
        all.sort_unstable();
        let lost = [a as usize, b as usize];
        let want: Vec<usize> = (1..=OBJECTS)
            .map(|i| i * 64)
            .filter(|o| !lost.contains(o))
            .collect();
        assert_eq!(
            all, want,
            "objects outside the dead slot lost or duplicated"
        );
        assert_eq!(pool.owned.load(Ordering::Relaxed), 0);
    });
}
