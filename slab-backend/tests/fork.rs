//! `fork()` while other threads hold allocator state: the registry lock, a node lock, a CPU slot
//! (inside a blocking ctor, or a kmalloc class's slot) or a thread-cache window. The child has
//! only the forking thread; it must allocate, free, shrink, create and destroy caches and use
//! `kmalloc_nolock` without hanging. Each case runs in a child test process (it forks a
//! multi-threaded process), and the forked child is killed if it runs past its deadline.
#![cfg(not(rcu_loom))]

use std::panic::AssertUnwindSafe;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use slab_backend::test_hooks;
use slab_backend::{
    kfree, kmalloc, kmalloc_nolock, ksize, shrink_all, slabinfo, KmemCache, SlabError,
};
use test_support::{child_case, run_child, stderr};

/// How long the forked child may take for its whole workload.
const CHILD_DEADLINE: Duration = Duration::from_secs(20);

/// Forks; the child runs `body` and exits 0 if it returns without panicking. The parent waits
/// for it at most [`CHILD_DEADLINE`] and panics if it hangs or fails.
fn fork_and_check(case: &str, body: impl FnOnce()) {
    // SAFETY: the forked child runs only `body` (the kit and std) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
            Ok(()) => 0,
            Err(_) => 3,
        };
        // SAFETY: `_exit` skips the test harness's exit handlers (they belong to the parent).
        unsafe { libc::_exit(code) };
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if start.elapsed() > CHILD_DEADLINE {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: reaping it.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!("fork child ({case}) hung for more than {CHILD_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status),
        "fork child ({case}) died: status {status}"
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "fork child ({case}) failed its checks"
    );
}

/// What every forked child does: kmalloc in several classes, a new cache from creation to
/// destruction, the shrinkers and slabinfo.
fn common_work() {
    for size in [8, 64, 100, 512, 4096] {
        let ps: Vec<_> = (0..100).filter_map(|_| kmalloc(size)).collect();
        assert_eq!(ps.len(), 100, "kmalloc({size}) failed in the child");
        for p in ps {
            // SAFETY: live kmalloc objects, freed once.
            unsafe { kfree(p) };
        }
    }
    let c = KmemCache::<[u64; 4]>::builder("fork-child-new")
        .build()
        .expect("create a cache in the child");
    let ps: Vec<_> = (0..200).filter_map(|_| c.alloc()).collect();
    assert_eq!(ps.len(), 200);
    // SAFETY: live objects of `c`.
    unsafe { c.free_bulk(&ps) };
    c.shrink();
    c.destroy().expect("destroy a new cache in the child");
    shrink_all();
    assert!(slabinfo().contains("kmalloc-64"));
}

/// Allocates and frees through `c` in the child, then destroys it.
fn use_and_destroy(c: KmemCache<[u64; 4]>) -> Result<(), SlabError> {
    let ps: Vec<NonNull<[u64; 4]>> = (0..300).filter_map(|_| c.alloc()).collect();
    assert_eq!(ps.len(), 300, "allocation from the held cache failed");
    // SAFETY: live objects of `c`.
    unsafe { c.free_bulk(&ps) };
    c.shrink();
    c.destroy()
}

/// A cache leaked to `'static` so that another thread can use it while the child takes it
/// back (the other thread does not exist in the child).
fn leaked_cache(name: &str) -> &'static KmemCache<[u64; 4]> {
    Box::leak(Box::new(
        KmemCache::<[u64; 4]>::builder(name).build().unwrap(),
    ))
}

/// Takes a leaked cache back in the child.
///
/// # Safety
/// Only in the forked child, where no other thread uses `c`.
unsafe fn reclaim(c: &'static KmemCache<[u64; 4]>) -> Box<KmemCache<[u64; 4]>> {
    // SAFETY: from `Box::leak` in `leaked_cache`; the caller guarantees exclusive use.
    unsafe { Box::from_raw(c as *const _ as *mut KmemCache<[u64; 4]>) }
}

/// Another thread holds the cache registry lock (for 300 ms) when the process forks.
fn case_registry() {
    kmalloc_init_and_warm();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        test_hooks::hold_registry(|| {
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        })
    });
    rx.recv().unwrap();
    fork_and_check("registry", common_work);
    t.join().unwrap();
}

/// Another thread holds a cache's node lock (for 300 ms) when the process forks.
fn case_node() {
    kmalloc_init_and_warm();
    let c = leaked_cache("fork-node");
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        test_hooks::hold_node_lock(c, || {
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        })
    });
    rx.recv().unwrap();
    fork_and_check("node", || {
        // SAFETY: the forked child; the holder thread does not exist here.
        let c = unsafe { reclaim(c) };
        use_and_destroy(*c).expect("destroy in the child");
        common_work();
    });
    t.join().unwrap();
}

/// Another thread is inside a window of its thread cache of a cache (preempted in the middle of
/// an allocation) when the process forks; it holds objects of that cache in its thread cache.
fn case_tcache() {
    kmalloc_init_and_warm();
    let c = leaked_cache("fork-tcache");
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let p = c.alloc().unwrap();
        // SAFETY: a live object of `c` (it stays in this thread's cache).
        unsafe { c.free(p) };
        test_hooks::hold_tcache_window(c, || {
            tx.send(()).unwrap();
            go_rx.recv().unwrap();
        })
    });
    rx.recv().unwrap();
    fork_and_check("tcache", || {
        // SAFETY: the forked child; the holder thread does not exist here.
        let c = unsafe { reclaim(c) };
        use_and_destroy(*c).expect("destroy in the child");
        common_work();
    });
    go_tx.send(()).unwrap();
    t.join().unwrap();
}

static CTOR_STARTED: AtomicBool = AtomicBool::new(false);
static CTOR_GO: AtomicBool = AtomicBool::new(false);
std::thread_local! {
    static CTOR_BLOCKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A ctor that blocks (bounded) the first time it runs on a thread that asked for it.
fn blocking_ctor() -> [u64; 4] {
    if CTOR_BLOCKS.with(|b| b.replace(false)) {
        CTOR_STARTED.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !CTOR_GO.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    [7; 4]
}

/// Another thread is inside a slow ctor (so it holds a CPU slot of the cache while a new slab
/// is made) when the process forks.
fn case_ctor() {
    kmalloc_init_and_warm();
    let c: &'static KmemCache<[u64; 4]> = Box::leak(Box::new(
        KmemCache::<[u64; 4]>::builder("fork-ctor")
            .ctor(blocking_ctor)
            .build()
            .unwrap(),
    ));
    let t = std::thread::spawn(move || {
        CTOR_BLOCKS.with(|b| b.set(true));
        let p = c.alloc().unwrap();
        // SAFETY: a live object of `c`.
        unsafe { c.free(p) };
    });
    let start = Instant::now();
    while !CTOR_STARTED.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(10), "ctor never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    fork_and_check("ctor", || {
        // SAFETY: the forked child; the holder thread does not exist here.
        let c = unsafe { reclaim(c) };
        use_and_destroy(*c).expect("destroy in the child");
        common_work();
    });
    CTOR_GO.store(true, Ordering::SeqCst);
    t.join().unwrap();
}

/// Pins the calling thread to CPU 0.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity(0 = this
    // thread) only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "sched_setaffinity");
    }
}

/// Another thread holds this CPU's slot of the 64-byte kmalloc class (as an allocation
/// interrupted there would) when the process forks: `kmalloc_nolock(64)` on that CPU must work
/// again in the child.
fn case_nolock() {
    pin_to_cpu0();
    kmalloc_init_and_warm();
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        pin_to_cpu0();
        test_hooks::hold_kmalloc_slot(64, || {
            tx.send(()).unwrap();
            go_rx.recv().unwrap();
        })
    });
    rx.recv().unwrap();
    fork_and_check("nolock", || {
        common_work();
        // Normal-path calls refill this CPU's sheaves; then kmalloc_nolock must find an object
        // in its own class (a slot that stays held makes it fall back to the next class).
        let mut got = None;
        for _ in 0..2000 {
            let w: Vec<_> = (0..40).filter_map(|_| kmalloc(64)).collect();
            for p in w {
                // SAFETY: live kmalloc objects.
                unsafe { kfree(p) };
            }
            if let Some(p) = kmalloc_nolock(64) {
                // SAFETY: a live object from kmalloc_nolock.
                let size = unsafe { ksize(p) };
                // SAFETY: live, freed once.
                unsafe { slab_backend::kfree_nolock(p) };
                if size == 64 {
                    got = Some(size);
                    break;
                }
            }
        }
        assert_eq!(got, Some(64), "kmalloc_nolock(64) stayed busy in the child");
    });
    go_tx.send(()).unwrap();
    t.join().unwrap();
}

fn kmalloc_init_and_warm() {
    slab_backend::kmalloc_init();
    common_work();
}

#[test]
fn fork_child() {
    match child_case().as_deref() {
        Some("registry") => case_registry(),
        Some("node") => case_node(),
        Some("tcache") => case_tcache(),
        Some("ctor") => case_ctor(),
        Some("nolock") => case_nolock(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

fn expect_ok(case: &str) {
    let out = run_child("fork_child", case, &[], Duration::from_secs(90));
    assert!(
        out.status.success(),
        "child case {case} failed:\n{}",
        stderr(&out)
    );
}

#[test]
fn fork_while_another_thread_holds_the_registry_lock() {
    expect_ok("registry");
}

#[test]
fn fork_while_another_thread_holds_a_node_lock() {
    expect_ok("node");
}

#[test]
fn fork_while_another_thread_is_inside_its_thread_cache() {
    expect_ok("tcache");
}

#[test]
fn fork_while_another_thread_holds_a_cpu_slot_in_a_ctor() {
    expect_ok("ctor");
}

#[test]
fn fork_while_another_thread_holds_a_kmalloc_slot() {
    expect_ok("nolock");
}
