//! A stack on [`rcu_kit::RcuList`] with no `unsafe`: pushers and poppers on several threads,
//! readers walking the stack under a guard. Popped nodes are freed by `kfree_rcu` after a grace
//! period, or, for one in eight, waited for and moved out whole (`Retired::synchronize`).
//!
//! Checked while it runs: every value a reader sees is intact (canary and payload), and at the
//! end every item made has been dropped once.
//!
//! `cargo run --release --example rcu_stack [seconds]` (default 2); `cargo test --example
//! rcu_stack` runs it briefly.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuList};

const LIVE: u64 = 0x57AC_57AC_57AC_57AC;

static MADE: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Item {
    canary: u64,
    words: [u64; 4],
}

impl Item {
    fn new(v: u64) -> Item {
        MADE.fetch_add(1, Ordering::Relaxed);
        Item {
            canary: LIVE,
            words: [v; 4],
        }
    }

    fn check(&self) -> u64 {
        assert_eq!(self.canary, LIVE, "a reader saw a freed item");
        assert!(
            self.words.iter().all(|w| *w == self.words[0]),
            "a reader saw a torn item {:?}",
            self.words
        );
        self.words[0]
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        self.canary = 0xDEAD;
        self.words = [0, 1, 2, 3];
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs for `time` or `max_ops` per writer; returns (pushes, pops, reader walks).
fn run(time: Duration, max_ops: u64) -> (u64, u64, u64) {
    let stack: RcuList<Item> = RcuList::new();
    let stop = AtomicBool::new(false);
    let (pushes, pops, walks) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu_read_lock();
                    let seen: Vec<(&Item, u64)> = stack.iter(&g).map(|i| (i, i.check())).collect();
                    std::thread::yield_now();
                    for (item, was) in seen {
                        assert_eq!(item.check(), was, "an item changed under a reader's guard");
                    }
                    n += 1;
                }
                walks.fetch_add(n, Ordering::Relaxed);
            });
        }
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let (stack, pushes, pops) = (&stack, &pushes, &pops);
                s.spawn(move || {
                    let start = Instant::now();
                    let mut i = 0;
                    while i < max_ops && start.elapsed() < time {
                        i += 1;
                        if i % 3 == 0 {
                            if let Some(node) = stack.pop_front() {
                                pops.fetch_add(1, Ordering::Relaxed);
                                if i % 8 == 0 {
                                    // Waits for readers, then the value is ours again.
                                    let item = node.synchronize().into_value();
                                    item.check();
                                } // else: dropping `node` retires it with kfree_rcu
                            }
                        } else {
                            stack.push_front(Item::new(t << 32 | i));
                            pushes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (pushes, pops) = (pushes.into_inner(), pops.into_inner());
    assert_eq!(stack.len() as u64, pushes - pops);
    drop(stack);
    kvfree_rcu_barrier();
    assert_eq!(
        DROPPED.load(Ordering::Relaxed),
        MADE.load(Ordering::Relaxed),
        "every item made was freed once"
    );
    (pushes, pops, walks.into_inner())
}

#[cfg_attr(test, allow(dead_code))]
fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let (pushes, pops, walks) = run(Duration::from_secs_f64(seconds), u64::MAX);
    println!(
        "rcu_stack: {pushes} pushes, {pops} pops, {walks} reader walks; every item freed, none \
         seen freed"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn rcu_stack_runs_clean() {
        let (pushes, _, _) = super::run(std::time::Duration::from_millis(300), 20_000);
        assert!(pushes > 0);
    }
}
