//! `fork()` children of a process whose threads use the batcher: the child's pending budget
//! counts only what the child holds (not the reservations and blocks of the parent's other
//! threads), a slot's critical section is never copied half done, a child forked while
//! threads hand blocks over keeps working, and so does one forked from a destructor that the
//! batcher runs.
//!
//! Every case runs in a child process with a deadline checked from outside, and forks from
//! there; the forked child reports with `write(2)` and its exit code, which its parent checks
//! (with a deadline as well).
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfree_batch::{configure, kfree_rcu, kvfree_rcu_barrier, stats, Config};
use rcu_core::rcu_read_lock;
use test_support::{child_case, in_fork_child, run_child, say, stderr, wait_forked, Forked};

/// How long a fork child may take.
const FORK_DEADLINE: Duration = Duration::from_secs(30);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// 32 bytes with drop glue (a 48-byte heap chunk, charged as such).
struct Tracked(#[allow(dead_code)] [u64; 4]);
impl Drop for Tracked {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Threads that each retired a few objects (so each holds a front block and a budget slice) and
/// then wait, alive, until `release` is set (or 30 s pass).
fn parked_retirers(n: usize, release: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let ready = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..n)
        .map(|t| {
            let (ready, release) = (ready.clone(), release.clone());
            std::thread::spawn(move || {
                for i in 0..4u64 {
                    kfree_rcu(Box::new(Tracked([t as u64 + i; 4])));
                }
                ready.fetch_add(1, Ordering::Release);
                let t0 = Instant::now();
                while !release.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while ready.load(Ordering::Acquire) != n {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "retirers never got ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    hs
}

/// Several threads hold budget slices and open blocks at fork time. In the child (where those
/// threads do not exist) the pending count must cover only what the child holds, and a burst of
/// retires that fits in the cap must batch, not fall back.
fn case_ghost_charges() {
    const THREADS: usize = 8;
    const BURST: u64 = 2_000;
    configure(Config {
        pending_cap: 192 << 10,
        pages_per_cpu: 0,
        ..Config::default()
    })
    .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let hs = parked_retirers(THREADS, &release);
    let before = stats();
    println!("ghost-charges: parent before fork: {before:?}");
    // Each thread holds a front block (a page) and a budget slice (16 KiB minus its objects).
    assert!(
        before.pending_bytes >= (THREADS * (4096 + 8192)) as u64,
        "the retirers hold less than expected: {before:?}"
    );
    in_fork_child("ghost charges", FORK_DEADLINE, || {
        // Takes the blocks the parent's threads left in their fronts and frees them; what stays
        // charged is the page caches (the forking thread retired nothing itself).
        kvfree_rcu_barrier();
        let s = stats();
        if s.pending_bytes > s.pages_cached * 4096 {
            say(&format!(
                "fork child: {} B pending after a barrier, but the child holds only {} cached \
                 pages ({} B): the parent's threads' charges stayed: {s:?}\n",
                s.pending_bytes,
                s.pages_cached,
                s.pages_cached * 4096
            ));
            return 1;
        }
        // A reader holds every grace period back during the burst, so nothing is freed
        // meanwhile: the burst (about 96 KiB of objects and 4 pages) must fit in the cap.
        let (held, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let reader = {
            let (held, done) = (held.clone(), done.clone());
            std::thread::spawn(move || {
                let _g = rcu_read_lock();
                held.store(true, Ordering::Release);
                let t0 = Instant::now();
                while !done.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        while !held.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let f0 = stats().fallback_sync;
        for i in 0..BURST {
            kfree_rcu(Box::new(Tracked([i; 4])));
        }
        let fell = stats().fallback_sync - f0;
        done.store(true, Ordering::Release);
        reader.join().unwrap();
        kvfree_rcu_barrier();
        if fell != 0 {
            say(&format!(
                "fork child: {fell} of {BURST} retires fell back to a synchronous grace period \
                 under a cap the child's own holdings leave room for: {:?}\n",
                stats()
            ));
            return 2;
        }
        0
    });
    release.store(true, Ordering::Release);
    for h in hs {
        h.join().unwrap();
    }
    kvfree_rcu_barrier();
}

/// Another thread is inside a slot's critical section when the process forks: the fork waits
/// for it to leave (the prepare handler takes the slot locks), so the child never sees it half
/// done, and the child's batcher works.
fn case_slot_lock_at_fork() {
    static IN_SECTION: AtomicBool = AtomicBool::new(false);
    kfree_rcu(Box::new(Tracked([0; 4]))); // creates the batcher (and its fork handlers)
    let t = std::thread::spawn(|| {
        kfree_batch::raw::with_slot_locked(0, || {
            IN_SECTION.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            IN_SECTION.store(false, Ordering::SeqCst);
        });
    });
    while !IN_SECTION.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    in_fork_child("slot lock at fork", FORK_DEADLINE, || {
        if IN_SECTION.load(Ordering::SeqCst) {
            say(
                "fork child: the process forked while another thread was inside slot 0's \
                 critical section\n",
            );
            return 1;
        }
        let base = DROPPED.load(Ordering::Relaxed);
        for i in 0..2_000u64 {
            kfree_rcu(Box::new(Tracked([i; 4])));
        }
        kvfree_rcu_barrier();
        let got = DROPPED.load(Ordering::Relaxed) - base;
        if got < 2_000 {
            say(&format!(
                "fork child: {got} of 2000 objects freed after a barrier\n"
            ));
            return 2;
        }
        0
    });
    t.join().unwrap();
}

/// Forks repeatedly while threads retire (front blocks filling, handed over, recycled, reclaimed;
/// the worker collecting): every child frees what it retires, and after a barrier its pending
/// count covers only its page caches and the forking thread's own budget slice.
fn case_fork_during_hand_overs() {
    const FORKS: usize = 30;
    // The batcher exists before the first fork (its creation is not what this case is about).
    kfree_rcu(Box::new(Tracked([0; 4])));
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..3u64)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                    if t == 0 {
                        kfree_rcu(Box::new(Tracked([i; 4])));
                    } else {
                        // No drop glue: the recycling channel.
                        kfree_rcu(Box::new([i; 4]));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    for k in 0..FORKS {
        if t0.elapsed() > Duration::from_secs(40) {
            break;
        }
        in_fork_child("fork during hand-overs", FORK_DEADLINE, || {
            let base = DROPPED.load(Ordering::Relaxed);
            for i in 0..3_000u64 {
                kfree_rcu(Box::new(Tracked([i; 4])));
            }
            kvfree_rcu_barrier();
            let got = DROPPED.load(Ordering::Relaxed) - base;
            let s = stats();
            // Objects the parent's threads left in the child (in their fronts) are freed too,
            // so `got` may exceed what this thread retired.
            if got < 3_000 {
                say(&format!(
                    "fork child {k}: {got} of 3000 objects freed after a barrier: {s:?}\n"
                ));
                return 1;
            }
            // The forking thread's slice is at most 16 KiB.
            if s.pending_bytes > s.pages_cached * 4096 + (16 << 10) {
                say(&format!(
                    "fork child {k}: {} B pending after a barrier, more than the {} cached \
                     pages and one budget slice: {s:?}\n",
                    s.pending_bytes, s.pages_cached
                ));
                return 2;
            }
            0
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    kvfree_rcu_barrier();
}

/// Objects parked (no page could be had: the page layer's limit is 0) by two threads inside
/// their read-side critical sections, while a third thread's reader keeps them from being
/// freed, when the process forks: the child frees them, and its budget stays consistent with
/// what it holds (whatever parking charged is released exactly once).
fn case_parked_at_fork() {
    const PER_THREAD: u64 = 100;
    let (ready, go, release) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    // Each retiring thread's first retire (before the limit) reserves its park slots.
    let other = {
        let (ready, go, release) = (ready.clone(), go.clone(), release.clone());
        std::thread::spawn(move || {
            kfree_rcu(Box::new(Tracked([1; 4])));
            ready.fetch_add(1, Ordering::Release);
            let t0 = Instant::now();
            while !go.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
            {
                let _g = rcu_read_lock();
                for i in 0..PER_THREAD {
                    kfree_rcu(Box::new(Tracked([i; 4])));
                }
            }
            ready.fetch_add(1, Ordering::Release);
            while !release.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let wait_ready = |n: usize| {
        let t0 = Instant::now();
        while ready.load(Ordering::Acquire) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the other thread is stuck"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_ready(1);
    kfree_rcu(Box::new(Tracked([0; 4])));
    // Takes the fronts' open blocks: the next retires need a new block, hence a page.
    kvfree_rcu_barrier();
    let (hold, stalled) = (Arc::new(AtomicBool::new(false)), {
        let release = release.clone();
        move |hold: Arc<AtomicBool>| {
            std::thread::spawn(move || {
                let _g = rcu_read_lock();
                hold.store(true, Ordering::Release);
                let t0 = Instant::now();
                while !release.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        }
    });
    let stall = stalled(hold.clone());
    while !hold.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all(); // the batcher's cached pages go back
    go.store(true, Ordering::Release);
    {
        let _g = rcu_read_lock();
        for i in 0..PER_THREAD {
            kfree_rcu(Box::new(Tracked([i; 4])));
        }
    }
    wait_ready(2);
    let before = stats();
    println!("parked-at-fork: parent before fork: {before:?}");
    assert!(before.parked_now > 0, "nothing parked: {before:?}");
    in_fork_child("parked at fork", FORK_DEADLINE, move || {
        slab_backend::set_memory_limit(None);
        let base = DROPPED.load(Ordering::Relaxed);
        kvfree_rcu_barrier();
        let got = DROPPED.load(Ordering::Relaxed) - base;
        let s = stats();
        if s.parked_now != 0 || got < before.parked_now {
            say(&format!(
                "fork child: {got} objects freed by a barrier, {} still parked (parked at fork: \
                 {}): {s:?}\n",
                s.parked_now, before.parked_now
            ));
            return 1;
        }
        // Retires that found no page left their slot a reservation (up to a 64 KiB chunk and a
        // page each): real, spendable budget in the child, unlike an underflow or a leftover
        // of the parent's threads.
        let slots = rcu_core::cpu::possible_cpus() as u64;
        let bound = s.pages_cached * 4096 + (16 << 10) + slots * ((64 << 10) + 4096);
        if s.pending_bytes > bound {
            say(&format!(
                "fork child: {} B pending after a barrier, more than the {} cached pages, one \
                 budget slice and {slots} slot reservations ({bound} B): {s:?}\n",
                s.pending_bytes, s.pages_cached
            ));
            return 2;
        }
        0
    });
    slab_backend::set_memory_limit(None);
    release.store(true, Ordering::Release);
    stall.join().unwrap();
    other.join().unwrap();
    kvfree_rcu_barrier();
}

/// The process forks while another thread is creating the batcher (its first retire): the
/// child, where that thread does not exist, creates its own and works.
fn case_fork_during_creation() {
    use kfree_batch::raw::{
        batcher_creation_paused, pause_batcher_creation, resume_batcher_creation,
    };
    pause_batcher_creation();
    let t = std::thread::spawn(|| kfree_rcu(Box::new(Tracked([0; 4]))));
    let t0 = Instant::now();
    while !batcher_creation_paused() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the batcher's creation never paused"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    in_fork_child("fork during the batcher's creation", FORK_DEADLINE, || {
        resume_batcher_creation();
        let base = DROPPED.load(Ordering::Relaxed);
        for i in 0..1_000u64 {
            kfree_rcu(Box::new(Tracked([i; 4])));
        }
        kvfree_rcu_barrier();
        let got = DROPPED.load(Ordering::Relaxed) - base;
        if got < 1_000 {
            say(&format!(
                "fork child: {got} of 1000 objects freed after a barrier\n"
            ));
            return 1;
        }
        0
    });
    resume_batcher_creation();
    t.join().unwrap();
    kvfree_rcu_barrier();
}

static FORKED: AtomicBool = AtomicBool::new(false);
static FORK_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Forks from its destructor, once: the batcher runs it while holding the block it frees.
struct ForksWhenDropped(#[allow(dead_code)] [u64; 4]);
impl Drop for ForksWhenDropped {
    fn drop(&mut self) {
        if FORKED.swap(true, Ordering::Relaxed) {
            return;
        }
        // SAFETY: fork from a destructor; the child's other thread leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid != 0 {
            FORK_PID.store(pid, Ordering::Relaxed);
            return;
        }
        // The child: this thread goes on with the free it was in; another thread checks that
        // barriers still work once it is done (the holds it ended must not count twice).
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            let base = DROPPED.load(Ordering::Relaxed);
            for i in 0..1_000u64 {
                kfree_rcu(Box::new(Tracked([i; 4])));
            }
            kvfree_rcu_barrier();
            let got = DROPPED.load(Ordering::Relaxed) - base;
            // SAFETY: leaving the fork child.
            unsafe { libc::_exit(if got >= 1_000 { 0 } else { 2 }) };
        });
    }
}

/// A destructor that the batcher runs (a producer freeing the ready blocks it reclaimed at a
/// hand-over) forks: the fork does not deadlock, and in the child, where the forking thread
/// goes on freeing the blocks it holds, `kvfree_rcu_barrier` still returns.
fn case_fork_in_destructor() {
    // A long drain delay: the worker frees no block itself, so the retiring thread's ready-first
    // reclaim runs the destructors.
    configure(Config {
        drain_delay: Duration::from_secs(30),
        ..Config::default()
    })
    .unwrap();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let t0 = Instant::now();
    let mut i = 0u64;
    while FORK_PID.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(20) {
        kfree_rcu(Box::new(ForksWhenDropped([i; 4])));
        i += 1;
        // SAFETY: as above.
        if unsafe { libc::getpid() } != me {
            // The fork child's copy of this thread, back from the destructor: the thread the
            // destructor started ends the process.
            std::thread::sleep(Duration::from_secs(20));
            // SAFETY: leaving the fork child.
            unsafe { libc::_exit(3) };
        }
    }
    let pid = FORK_PID.load(Ordering::Relaxed);
    assert!(pid > 0, "no destructor ran in 20 s");
    match wait_forked(pid, Duration::from_secs(15)) {
        Forked::Ok => {}
        Forked::Failed(status) => {
            panic!("fork child failed (fork from a destructor): status {status}")
        }
        Forked::Hung => panic!("fork child hung (fork from a destructor)"),
    }
}

#[test]
fn fork_child() {
    match child_case().as_deref() {
        Some("ghost_charges") => case_ghost_charges(),
        Some("slot_lock") => case_slot_lock_at_fork(),
        Some("hand_overs") => case_fork_during_hand_overs(),
        Some("in_destructor") => case_fork_in_destructor(),
        Some("parked") => case_parked_at_fork(),
        Some("creation") => case_fork_during_creation(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn expect_ok(case: &str) {
    let out = run_child("fork_child", case, &[], Duration::from_secs(120));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "case {case} failed:\n{all}");
}

#[test]
fn fork_child_budget_counts_only_what_the_child_holds() {
    expect_ok("ghost_charges");
}

#[test]
fn fork_waits_for_a_slot_critical_section() {
    expect_ok("slot_lock");
}

#[test]
fn fork_during_hand_overs_leaves_a_consistent_child() {
    expect_ok("hand_overs");
}

#[test]
fn fork_from_a_destructor_the_batcher_runs() {
    expect_ok("in_destructor");
}

#[test]
fn objects_parked_at_fork_are_freed_in_the_child() {
    expect_ok("parked");
}

#[test]
fn fork_while_another_thread_creates_the_batcher() {
    expect_ok("creation");
}
