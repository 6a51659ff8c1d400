//! A session table on a `SLAB_TYPESAFE_BY_RCU` cache, with no `unsafe`: sessions are freed back
//! to the cache at once and reused at once (no grace period per object); readers look them up
//! with the canonical revalidating lookup (`TsAtomic::get`: take a reference unless the count
//! is zero, then check the session id again).
//!
//! Checked while it runs: a session a reader holds a reference to keeps its id and a payload
//! consistent with it (never torn, never reused under the holder); two tables with the same
//! cache name coexist; at the end every session is back in the cache (`active_objects == 0`).
//!
//! `cargo run --release --example session_table [seconds]` (default 2); `cargo test --example
//! session_table` runs it briefly.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rcu_kit::{rcu_read_lock, TsAtomic, TsRef, TypesafeCache};

/// Every field a stale reader may read is atomic: a new owner rewrites them while stale
/// readers may still look (the cache only ever hands out `&Session`, so nothing else compiles).
#[derive(Default)]
struct Session {
    id: AtomicU64, // 0: none
    user: AtomicU64,
    hits: AtomicU64,
    payload: [AtomicU64; 4],
}

fn payload_word(id: u64, i: usize) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(i as u32 * 16)
}

const BUCKETS: usize = 256;
const PROBE: usize = 8;

struct SessionTable {
    cache: TypesafeCache<Session>,
    slots: Box<[TsAtomic<Session>]>,
    writer: Mutex<()>,
}

impl SessionTable {
    fn new() -> Self {
        SessionTable {
            // Every table names its cache "sessions": names need not be unique.
            cache: TypesafeCache::new("sessions", Session::default).expect("cache"),
            slots: (0..BUCKETS).map(|_| TsAtomic::null()).collect(),
            writer: Mutex::new(()),
        }
    }

    fn window(id: u64) -> impl Iterator<Item = usize> {
        (0..PROBE).map(move |i| (id as usize).wrapping_add(i) % BUCKETS)
    }

    /// Lock-free lookup: a counted reference to the session `id`, or `None`.
    fn lookup(&self, id: u64) -> Option<TsRef<'_, Session>> {
        let g = rcu_read_lock();
        Self::window(id)
            .find_map(|b| self.slots[b].get(&self.cache, &g, |s| s.id.load(Relaxed) == id))
    }

    /// Inserts a session for `id` (if absent and a slot in its window is free).
    fn insert(&self, id: u64, user: u64) -> bool {
        let _w = self.writer.lock().unwrap();
        if self.lookup(id).is_some() {
            return false;
        }
        let Some(b) = Self::window(id).find(|&b| self.slots[b].is_null()) else {
            return false;
        };
        let Some(s) = self.cache.alloc(|s| {
            s.id.store(id, Relaxed);
            s.user.store(user, Relaxed);
            s.hits.store(0, Relaxed);
            for (i, w) in s.payload.iter().enumerate() {
                w.store(payload_word(id, i), Relaxed);
            }
        }) else {
            return false;
        };
        drop(self.slots[b].swap(&self.cache, Some(s)));
        true
    }

    /// Removes session `id`; it goes back to the cache when its last reference drops.
    fn remove(&self, id: u64) -> bool {
        let _w = self.writer.lock().unwrap();
        let g = rcu_read_lock();
        for b in Self::window(id) {
            if let Some(s) = self.slots[b].get(&self.cache, &g, |s| s.id.load(Relaxed) == id) {
                let old = self.slots[b].swap(&self.cache, None);
                debug_assert!(old.as_ref().is_some_and(|o| o.ptr_eq(&s)));
                return true; // `s` and `old` drop here: the session may be freed (and reused) now
            }
        }
        false
    }

    fn clear(&self) {
        let _w = self.writer.lock().unwrap();
        for slot in self.slots.iter() {
            drop(slot.swap(&self.cache, None));
        }
    }
}

/// Checks a referenced session: its id is `id` and its payload belongs to `id`.
fn check(s: &Session, id: u64) {
    assert_eq!(
        s.id.load(Relaxed),
        id,
        "a referenced session changed identity"
    );
    for (i, w) in s.payload.iter().enumerate() {
        assert_eq!(
            w.load(Relaxed),
            payload_word(id, i),
            "a referenced session has a torn or foreign payload"
        );
    }
}

/// Runs for `time` or `max_ops` per writer; returns (inserts, removes, hits).
fn run(time: Duration, max_ops: u64) -> (u64, u64, u64) {
    let table = SessionTable::new();
    let other = SessionTable::new(); // same cache name, second instance
    assert!(other.insert(1, 1) && other.lookup(1).is_some());
    let (inserts, removes, hits) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (table, inserts, removes) = (&table, &inserts, &removes);
            s.spawn(move || {
                let mut x = 0x1234_5678 + t;
                for _ in 0..max_ops {
                    if start.elapsed() > time {
                        break;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = 1 + x % 512;
                    if (x >> 20) & 1 == 0 {
                        if table.insert(id, t) {
                            inserts.fetch_add(1, Relaxed);
                        }
                    } else if table.remove(id) {
                        removes.fetch_add(1, Relaxed);
                    }
                }
            });
        }
        for r in 0..2u64 {
            let (table, hits) = (&table, &hits);
            s.spawn(move || {
                let mut id = 1 + r;
                for _ in 0..max_ops * 2 {
                    if start.elapsed() > time {
                        break;
                    }
                    id = 1 + (id * 7 + 3) % 512;
                    if let Some(s) = table.lookup(id) {
                        check(&s, id);
                        s.hits.fetch_add(1, Relaxed);
                        std::thread::yield_now(); // writers remove and reuse meanwhile
                        check(&s, id); // our reference keeps it ours
                        hits.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    });
    table.clear();
    other.clear();
    assert_eq!(
        table.cache.stats().active_objects,
        0,
        "every session back in the cache"
    );
    assert_eq!(other.cache.stats().active_objects, 0);
    (
        inserts.into_inner(),
        removes.into_inner(),
        hits.into_inner(),
    )
}

#[cfg_attr(test, allow(dead_code))]
fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let (inserts, removes, hits) = run(Duration::from_secs_f64(seconds), u64::MAX);
    println!(
        "session_table: {inserts} inserts, {removes} removes, {hits} revalidated hits; no \
         session changed under its holder, every session back in the cache"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_table_runs_clean() {
        let (inserts, removes, hits) = super::run(std::time::Duration::from_millis(300), 20_000);
        assert!(
            inserts > 0 && removes > 0 && hits > 0,
            "{inserts} {removes} {hits}"
        );
    }
}
