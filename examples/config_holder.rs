//! A read-mostly configuration holder with no `unsafe`: readers on several threads read the
//! current `Config` with no lock; a writer publishes new versions; every old version is freed by
//! `kfree_rcu` after a grace period.
//!
//! Checked while it runs: every value a reader sees is intact (its canary and checksum), versions
//! never go backwards for a reader, and at the end every version made has been dropped once.
//!
//! `cargo run --release --example config_holder [seconds]` (default 2); `cargo test --example
//! config_holder` runs it briefly.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcu_kit::{kvfree_rcu_barrier, rcu_read_lock, RcuBox};

const LIVE: u64 = 0xC0FF_EE00_C0FF_EE00;

static MADE: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Config {
    canary: u64,
    version: u64,
    limits: [u64; 8],
    checksum: u64,
    name: String,
}

impl Config {
    fn new(version: u64) -> Box<Config> {
        MADE.fetch_add(1, Ordering::Relaxed);
        let limits = [version; 8];
        Box::new(Config {
            canary: LIVE,
            version,
            limits,
            checksum: version.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            name: format!("config-{version}"),
        })
    }

    /// Panics on a freed (poisoned) or torn value.
    fn check(&self) -> u64 {
        assert_eq!(self.canary, LIVE, "a reader saw a freed Config");
        assert!(
            self.limits.iter().all(|l| *l == self.version)
                && self.checksum == self.version.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                && self.name == format!("config-{}", self.version),
            "a reader saw a torn Config (version {})",
            self.version
        );
        self.version
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        self.canary = 0xDEAD;
        self.limits = [u64::MAX; 8];
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs readers and a writer for `time` or `max_updates`; returns (updates, reads).
fn run(time: Duration, max_updates: u64) -> (u64, u64) {
    let config = RcuBox::from_box(Config::new(0));
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let mut updates = 0;
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let (mut n, mut newest) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu_read_lock();
                    let c = config.read(&g); // a &Config, no Option, no expect
                    let v = c.check();
                    assert!(v >= newest, "version went back from {newest} to {v}");
                    newest = v;
                    std::hint::spin_loop();
                    c.check(); // still intact while the guard lives
                    drop(g);
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            });
        }
        let start = Instant::now();
        while start.elapsed() < time && updates < max_updates {
            updates += 1;
            // Copy, modify, publish; the old version goes to kfree_rcu.
            config.update(|old| {
                let mut new = Config::new(old.version + 1);
                new.name = format!("config-{}", old.version + 1);
                new
            });
            if updates % 64 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let last = config.into_box();
    assert_eq!(last.check(), updates);
    drop(last);
    kvfree_rcu_barrier();
    assert_eq!(
        DROPPED.load(Ordering::Relaxed),
        MADE.load(Ordering::Relaxed),
        "every Config made was freed once"
    );
    (updates, reads.load(Ordering::Relaxed))
}

#[cfg_attr(test, allow(dead_code))]
fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let (updates, reads) = run(Duration::from_secs_f64(seconds), u64::MAX);
    println!(
        "config_holder: {updates} updates, {reads} reads; every Config freed, none seen freed"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_holder_runs_clean() {
        let (updates, _) = super::run(std::time::Duration::from_millis(300), 20_000);
        assert!(updates > 0);
    }
}
