//! `RcuHashMap` under a zero page budget: `kfree_rcu` has no page to queue a retired table in, so
//! a resize waits for a grace period and frees the old table (and the values it owns) before it
//! returns. The map stays correct and nothing is lost or freed twice. Runs in a child process
//! (the budget is process-wide).
//!
//! The old table is freed inside `resize`, which therefore must not hold it by reference (a
//! reference argument is live for the whole call). That is an aliasing rule, not a memory access:
//! no runtime check sees it (Miri would); this test covers the path it concerns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcu_kit::map::RcuHashMap;
use test_support::{child_case, run_child, stderr};

/// A value counting its live copies (resize clones every value; the old table drops its own).
struct Val(u64, Arc<AtomicUsize>);

impl Val {
    fn new(v: u64, live: &Arc<AtomicUsize>) -> Val {
        live.fetch_add(1, Ordering::Relaxed);
        Val(v, live.clone())
    }
}

impl Clone for Val {
    fn clone(&self) -> Self {
        Val::new(self.0, &self.1)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

fn case_resize_budget_zero() {
    let live = Arc::new(AtomicUsize::new(0));
    let m = RcuHashMap::new();
    for i in 0..12u64 {
        m.insert(i, Val::new(i, &live));
    }
    kfree_batch::kvfree_rcu_barrier();
    slab_backend::set_memory_limit(Some(0));
    slab_backend::shrink_all(); // the batcher's shrinker gives its cached pages back
    let before = kfree_batch::stats().fallback_sync;
    let mut resizes = 0;
    for i in 12..200u64 {
        let buckets = m.buckets();
        m.insert(i, Val::new(i, &live));
        if m.buckets() != buckets {
            resizes += 1;
            // Freed inline: only the new table's values are left, with no barrier.
            assert_eq!(
                live.load(Ordering::Relaxed),
                m.len(),
                "old table not freed inline"
            );
        }
    }
    let after = kfree_batch::stats().fallback_sync;
    println!("resizes {resizes}, fallback_sync {before} -> {after}");
    assert!(
        resizes >= 3 && after - before >= resizes,
        "resizes did not free inline"
    );
    let g = rcu_kit::rcu_read_lock();
    for i in 0..200u64 {
        assert_eq!(m.get(&i, &g).map(|v| v.0), Some(i));
    }
    drop(g);
    drop(m);
    assert_eq!(live.load(Ordering::Relaxed), 0, "every value dropped once");
    slab_backend::set_memory_limit(None);
    println!("case done");
}

#[test]
fn map_budget_child() {
    match child_case().as_deref() {
        Some("resize_budget_zero") => case_resize_budget_zero(),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
}

#[test]
fn resize_under_a_zero_page_budget_frees_the_old_table_inline() {
    let out = run_child(
        "map_budget_child",
        "resize_budget_zero",
        &[],
        Duration::from_secs(60),
    );
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        out.status.success() && all.contains("case done"),
        "child failed ({}):\n{all}",
        out.status
    );
}
