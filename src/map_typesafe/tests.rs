use super::*;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

/// Counts live values: `live` goes up on every construction and clone, down on every drop.
#[derive(Debug)]
struct Counted(u64, Arc<AtomicUsize>);
impl Counted {
    fn new(v: u64, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Counted(v, live.clone())
    }
}
impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(self.0, &self.1)
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}
impl PartialEq for Counted {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl Eq for Counted {}
impl Hash for Counted {
    fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h)
    }
}

#[test]
fn basic_ops() {
    let m = TypesafeHashMap::with_capacity(4);
    assert!(m.is_empty());
    assert_eq!(m.insert(1u32, "a".to_string()), Ok(true));
    assert_eq!(m.insert(1, "b".to_string()), Ok(false));
    assert_eq!(m.get_cloned(&1).as_deref(), Some("b"));
    assert!(m.contains_key(&1));
    assert_eq!(m.len(), 1);
    let r = m.get(&1).unwrap();
    assert_eq!((*r.key(), r.as_str()), (1, "b"));
    assert!(format!("{r:?}").contains("\"b\""));
    assert!(format!("{m:?}").contains("TypesafeHashMap#"));
    assert!(m.remove(&1));
    assert!(!m.remove(&1));
    assert_eq!(*r, "b", "a handle keeps a removed entry");
    assert!(m.is_empty());
    assert!(m.get(&1).is_none());
}

#[test]
fn grows_and_replaces_in_every_position_of_a_chain() {
    // One bucket for every key: replaces and removes at the head, in the middle, at the end.
    #[derive(Default)]
    struct Const;
    impl BuildHasher for Const {
        type Hasher = ConstHasher;
        fn build_hasher(&self) -> ConstHasher {
            ConstHasher
        }
    }
    struct ConstHasher;
    impl core::hash::Hasher for ConstHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, _: &[u8]) {}
    }
    let m = TypesafeHashMap::with_capacity_and_hasher(0, Const);
    for i in 0..20u64 {
        m.insert(i, i).unwrap();
    }
    for i in 0..20u64 {
        assert_eq!(m.insert(i, i + 100), Ok(false));
        for j in 0..20u64 {
            assert_eq!(m.get_cloned(&j), Some(if j <= i { j + 100 } else { j }));
        }
    }
    for i in (0..20u64).step_by(3) {
        assert!(m.remove(&i));
    }
    for j in 0..20u64 {
        assert_eq!(m.get_cloned(&j), (j % 3 != 0).then_some(j + 100));
    }

    let m = TypesafeHashMap::new();
    for i in 0..1000u64 {
        m.insert(i, i * 2).unwrap();
    }
    assert!(m.buckets() >= 1024);
    for i in 0..1000u64 {
        assert_eq!(m.get_cloned(&i), Some(i * 2));
    }
    assert_eq!(m.len(), 1000);
}

#[test]
fn no_leak_every_entry_dropped_once_and_every_node_freed() {
    let live = Arc::new(AtomicUsize::new(0));
    let cache;
    {
        let m = TypesafeHashMap::new();
        cache = m.cache.clone();
        for i in 0..500u64 {
            m.insert(Counted::new(i, &live), Counted::new(i, &live))
                .unwrap();
        }
        let held: Vec<_> = (0..500u64)
            .step_by(50)
            .map(|i| m.get(&Counted::new(i, &live)).unwrap())
            .collect();
        for i in 0..500u64 {
            m.insert(Counted::new(i, &live), Counted::new(i + 1, &live))
                .unwrap(); // replace
        }
        for i in 0..250u64 {
            assert!(m.remove(&Counted::new(i, &live)));
        }
        assert_eq!(m.len(), 250);
        assert_eq!(held[0].0, 0, "a held entry outlives its replace and remove");
        drop(held);
        kfree_batch::kvfree_rcu_barrier(); // the tables retired by the resizes
                                           // 250 entries live in the map, each with its key and value.
        assert_eq!(live.load(Ordering::Relaxed), 500);
        assert_eq!(
            cache.stats().active_objects,
            250,
            "nodes: the live entries only"
        );
    }
    kfree_batch::kvfree_rcu_barrier();
    assert_eq!(
        live.load(Ordering::Relaxed),
        0,
        "every key and value dropped"
    );
    assert_eq!(
        cache.stats().active_objects,
        0,
        "every node freed to the cache"
    );
}

#[test]
fn a_map_dropped_before_its_retired_tables_are_freed_leaks_nothing() {
    let live = Arc::new(AtomicUsize::new(0));
    let m = TypesafeHashMap::new();
    let weak = Arc::downgrade(&m.cache);
    for i in 0..100u64 {
        m.insert(i, Counted::new(i, &live)).unwrap(); // resizes: retired tables share the cache
    }
    drop(m);
    kfree_batch::kvfree_rcu_barrier();
    assert_eq!(live.load(Ordering::Relaxed), 0, "every value dropped");
    assert!(
        weak.upgrade().is_none(),
        "the cache goes with the last retired table"
    );
}

/// A value whose `Drop` uses the map: removes and replaces put outside the writer lock.
static REENTRANT: std::sync::OnceLock<TypesafeHashMap<u64, Reenter>> = std::sync::OnceLock::new();
#[derive(Clone)]
struct Reenter(u64);
impl Drop for Reenter {
    fn drop(&mut self) {
        if self.0 % 2 == 1 {
            REENTRANT.get().unwrap().remove(&(u64::MAX - self.0));
        }
    }
}

#[test]
fn a_value_whose_drop_uses_the_map_can_be_replaced_and_removed() {
    let m = REENTRANT.get_or_init(TypesafeHashMap::new);
    for i in 0..2_000u64 {
        m.insert(i % 64, Reenter(i)).unwrap();
        m.insert(u64::MAX - i, Reenter(0)).unwrap();
        if i % 3 == 0 {
            m.remove(&((i + 7) % 64));
        }
    }
}

/// A key whose `Eq` calls a writer of the same map, from inside a writer.
static REENTRANT_EQ: std::sync::OnceLock<TypesafeHashMap<EqReenter, u8>> =
    std::sync::OnceLock::new();
static REENTER_ON_EQ: AtomicBool = AtomicBool::new(false);
#[derive(Clone)]
struct EqReenter(u8);
impl Hash for EqReenter {
    fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h)
    }
}
impl PartialEq for EqReenter {
    fn eq(&self, o: &Self) -> bool {
        if REENTER_ON_EQ.swap(false, Ordering::SeqCst) {
            REENTRANT_EQ.get().unwrap().remove(&EqReenter(200));
        }
        self.0 == o.0
    }
}
impl Eq for EqReenter {}

#[test]
fn an_eq_calling_back_into_the_map_panics_instead_of_deadlocking() {
    let m = REENTRANT_EQ.get_or_init(TypesafeHashMap::new);
    m.insert(EqReenter(1), 1).unwrap();
    REENTER_ON_EQ.store(true, Ordering::SeqCst);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.insert(EqReenter(1), 2)));
    let msg = test_support::panic_text(&*r.expect_err("re-entrant writer"));
    assert!(msg.contains("already holds the map's writer lock"), "{msg}");
    assert_eq!(m.get_cloned(&EqReenter(1)), Some(1), "the map stays usable");
}

/// Hashes every key to `key % 8`: eight long chains, so that readers spend their time deep in a
/// chain while writers free and reuse nodes across chains.
#[derive(Clone, Copy, Default)]
struct Mod8;
impl BuildHasher for Mod8 {
    type Hasher = Mod8Hasher;
    fn build_hasher(&self) -> Mod8Hasher {
        Mod8Hasher(0)
    }
}
struct Mod8Hasher(u64);
impl core::hash::Hasher for Mod8Hasher {
    fn finish(&self) -> u64 {
        self.0 % 8
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("u64 keys only")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const ALIVE: u64 = 0xA11C_E0A1_1CE0_A11C;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// A value that knows its key, with a canary its `Drop` kills.
#[derive(Debug)]
struct Val {
    key: u64,
    words: [u64; 4],
    canary: AtomicU64,
}
static VALS_LIVE: AtomicUsize = AtomicUsize::new(0);
impl Val {
    fn new(key: u64) -> Self {
        VALS_LIVE.fetch_add(1, Ordering::Relaxed);
        Val {
            key,
            words: [key; 4],
            canary: AtomicU64::new(ALIVE),
        }
    }
}
impl Clone for Val {
    fn clone(&self) -> Self {
        Val::new(self.key)
    }
}
impl Drop for Val {
    fn drop(&mut self) {
        let was = self.canary.swap(DEAD, Ordering::Relaxed);
        assert_eq!(was, ALIVE, "a value dropped twice");
        VALS_LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keys `0..STABLE` are inserted first and never removed nor replaced: every lookup must find
/// them. Keys `STABLE..STABLE + CHURN` are removed and inserted again all the time, so their
/// nodes are freed and reused, across chains, under the readers' feet.
const STABLE: u64 = 24;
const CHURN: u64 = 72;

/// Grown keys (never removed) start here.
const GROWN: u64 = 1 << 32;

/// `grow`: how many keys writer 0 inserts on the way (and never removes), so that the map
/// resizes under the readers.
fn stress<S: BuildHasher + Sync>(hasher: S, time: Duration, grow: u64) {
    let map = TypesafeHashMap::with_capacity_and_hasher(0, hasher);
    let cache = map.cache.clone();
    for k in 0..STABLE {
        map.insert(k, Val::new(k)).unwrap();
    }
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + time;
    let churn_found = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (map, stop) = (&map, &stop);
            s.spawn(move || {
                let mut x = w + 1;
                for i in 0..2_000_000u64 {
                    if i % 256 == 0 && (Instant::now() > deadline || stop.load(Ordering::Relaxed)) {
                        break;
                    }
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if w == 0 && i % 4 == 0 && i / 4 < grow {
                        map.insert(GROWN + i / 4, Val::new(GROWN + i / 4)).unwrap();
                    }
                    if w == 1 && i % 2 == 0 {
                        // Replace a stable key: it stays present throughout.
                        let k = (x >> 40) % STABLE;
                        map.insert(k, Val::new(k)).unwrap();
                    }
                    let k = STABLE + (x >> 33) % CHURN;
                    if (x >> 20) % 2 == 0 {
                        map.remove(&k);
                    } else {
                        map.insert(k, Val::new(k)).unwrap();
                    }
                }
            });
        }
        for r in 0..2u64 {
            let (map, stop, churn_found) = (&map, &stop, &churn_found);
            s.spawn(move || {
                let mut x = r + 11;
                let mut found_churn = 0u64;
                for i in 0..20_000_000u64 {
                    if i % 256 == 0 && Instant::now() > deadline {
                        break;
                    }
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let k = (x >> 33) % (STABLE + CHURN);
                    match map.get(&k) {
                        Some(v) => {
                            assert_eq!(v.key, k, "a lookup returned another key's value");
                            assert_eq!(*v.key(), k, "a lookup returned another key's entry");
                            assert_eq!(v.words, [k; 4], "a torn value");
                            std::hint::spin_loop();
                            assert_eq!(
                                v.canary.load(Ordering::Relaxed),
                                ALIVE,
                                "a value dropped under its handle"
                            );
                            found_churn += u64::from(k >= STABLE);
                        }
                        None => {
                            if k < STABLE {
                                stop.store(true, Ordering::Relaxed);
                                panic!("key {k}, never removed (maybe replaced), was not found (lookup {i})");
                            }
                        }
                    }
                }
                churn_found.fetch_add(found_churn, Ordering::Relaxed);
            });
        }
    });
    // (Short lives on a loaded machine may give the readers too few lookups to tell.)
    assert!(
        time < Duration::from_secs(1) || churn_found.load(Ordering::Relaxed) > 0,
        "readers found churned keys"
    );
    stable_found_then_everything_freed(map, &cache);
}

/// The end of a stress run: every stable key is there; dropping the map drops every value once
/// and gives every node back.
fn stable_found_then_everything_freed<S: BuildHasher>(
    map: TypesafeHashMap<u64, Val, S>,
    cache: &KmemCache<Node<u64, Val>>,
) {
    for k in 0..STABLE {
        assert_eq!(map.get(&k).map(|v| v.key), Some(k));
    }
    drop(map);
    kfree_batch::kvfree_rcu_barrier();
    assert_eq!(VALS_LIVE.load(Ordering::Relaxed), 0, "every value dropped");
    assert_eq!(cache.stats().active_objects, 0, "every node freed");
}

#[test]
fn readers_find_every_stable_key_and_only_intact_values_under_reuse() {
    test_support::isolated(
        "map_typesafe::tests::readers_find_every_stable_key_and_only_intact_values_under_reuse",
        "stress",
        Duration::from_secs(60),
        || {
            stress(Mod8, Duration::from_secs(4), 0);
        },
    );
}

/// Hashes every key to a distinct hash whose low bits (the bucket, in every table size) are
/// `key % 2`: two long chains where a reused node's new hash differs from the lookup's, so the
/// walk passes most nodes without a reference (the hash check and its Acquire decide).
#[derive(Clone, Copy, Default)]
struct TwoChains;
impl BuildHasher for TwoChains {
    type Hasher = TwoChainsHasher;
    fn build_hasher(&self) -> TwoChainsHasher {
        TwoChainsHasher(0)
    }
}
struct TwoChainsHasher(u64);
impl core::hash::Hasher for TwoChainsHasher {
    fn finish(&self) -> u64 {
        (self.0 % 2) | (self.0 << 40)
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("u64 keys only")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[test]
fn readers_find_every_stable_key_in_two_chains_of_distinct_hashes() {
    test_support::isolated(
        "map_typesafe::tests::readers_find_every_stable_key_in_two_chains_of_distinct_hashes",
        "two",
        Duration::from_secs(60),
        || {
            stress(TwoChains, Duration::from_secs(3), 0);
            let end = Instant::now() + Duration::from_secs(2);
            for _ in 0..20 {
                if Instant::now() > end {
                    break;
                }
                stress(TwoChains, Duration::from_millis(100), 1_000);
            }
        },
    );
}

#[test]
fn readers_find_every_stable_key_while_the_map_resizes() {
    test_support::isolated(
        "map_typesafe::tests::readers_find_every_stable_key_while_the_map_resizes",
        "grow",
        Duration::from_secs(60),
        || {
            // Many short lives: a map resizes most often while it is young.
            let end = Instant::now() + Duration::from_secs(3);
            for _ in 0..30 {
                if Instant::now() > end {
                    break;
                }
                stress(Mod8, Duration::from_millis(150), 1_000);
            }
        },
    );
}

/// No memory for a node is not misuse: `insert` hands the entry back, the map stays as it was,
/// and inserting works again once memory is back.
#[test]
fn an_insert_without_memory_hands_the_entry_back() {
    use rcu_core::fault::{self, FaultAttr, Point};
    test_support::isolated(
        "map_typesafe::tests::an_insert_without_memory_hands_the_entry_back",
        "no-memory",
        Duration::from_secs(60),
        || {
            let live = Arc::new(AtomicUsize::new(0));
            let m = TypesafeHashMap::with_capacity(1 << 16);
            m.insert(0u64, Counted::new(0, &live)).unwrap();
            // Every page refill of this map's cache fails from now on.
            fault::arm(
                Point::Pages,
                FaultAttr::always(-1).for_cache(m.cache.name()),
            );
            let mut refused = None;
            for i in 1..200_000u64 {
                match m.insert(i, Counted::new(i, &live)) {
                    Ok(new) => assert!(new),
                    Err(e) => {
                        assert_eq!((e.key, e.value.0), (i, i), "the entry comes back");
                        assert!(e.to_string().contains("no memory for a node"), "{e}");
                        refused = Some(i);
                        break;
                    }
                }
            }
            let refused = refused.expect("the cache ran out of nodes with its refills failing");
            assert_eq!(
                m.len() as u64,
                refused,
                "the refused entry was not inserted"
            );
            assert!(m.get(&refused).is_none());
            // A replace needs a node too: refused, and the old entry stays.
            let e = m.insert(0, Counted::new(99, &live)).unwrap_err();
            assert_eq!(e.value.0, 99);
            drop(e);
            assert_eq!(m.get(&0).map(|v| v.0), Some(0));
            fault::disarm(Point::Pages);
            assert_eq!(m.insert(refused, Counted::new(refused, &live)), Ok(true));
            drop(m);
            kfree_batch::kvfree_rcu_barrier();
            assert_eq!(live.load(Ordering::SeqCst), 0, "every entry dropped once");
        },
    );
}

/// A value whose `Clone` panics on demand and whose `Drop` calls a writer of the same map.
static CLONE_BOMB_MAP: std::sync::OnceLock<TypesafeHashMap<u64, CloneBomb>> =
    std::sync::OnceLock::new();
/// Clones left before one panics (0: never).
static CLONES_BEFORE_PANIC: AtomicUsize = AtomicUsize::new(0);
static CLONE_BOMBS_LIVE: AtomicUsize = AtomicUsize::new(0);
struct CloneBomb;
impl CloneBomb {
    fn new() -> Self {
        CLONE_BOMBS_LIVE.fetch_add(1, Ordering::SeqCst);
        CloneBomb
    }
}
impl Clone for CloneBomb {
    fn clone(&self) -> Self {
        let left = CLONES_BEFORE_PANIC.load(Ordering::SeqCst);
        if left == 1 {
            CLONES_BEFORE_PANIC.store(0, Ordering::SeqCst);
            panic!("CloneBomb: clone failed");
        }
        CLONES_BEFORE_PANIC.store(left.saturating_sub(1), Ordering::SeqCst);
        CloneBomb::new()
    }
}
impl Drop for CloneBomb {
    fn drop(&mut self) {
        CLONE_BOMBS_LIVE.fetch_sub(1, Ordering::SeqCst);
        if let Some(m) = CLONE_BOMB_MAP.get() {
            m.remove(&u64::MAX);
        }
    }
}

/// A panicking `Clone` in the middle of a resize: the copies made so far are dropped after the
/// writer lock is released (their `Drop` may use the map), the panic reaches the caller, and the
/// map keeps its table and its entries.
#[test]
fn a_clone_panicking_in_a_resize_drops_the_copies_outside_the_writer_lock() {
    test_support::isolated(
        "map_typesafe::tests::a_clone_panicking_in_a_resize_drops_the_copies_outside_the_writer_lock",
        "clone-panic",
        Duration::from_secs(60),
        || {
            let m = CLONE_BOMB_MAP.get_or_init(TypesafeHashMap::new);
            let buckets = m.buckets() as u64;
            for k in 0..buckets / 4 * 3 {
                m.insert(k, CloneBomb::new()).unwrap();
            }
            assert_eq!(m.buckets() as u64, buckets, "no resize yet");
            CLONES_BEFORE_PANIC.store(5, Ordering::SeqCst);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                m.insert(buckets, CloneBomb::new())
            }));
            let e = r.expect_err("the clone's panic reaches the caller");
            assert_eq!(e.downcast_ref::<&str>(), Some(&"CloneBomb: clone failed"));
            assert_eq!(m.buckets() as u64, buckets, "the map keeps its table");
            assert_eq!(m.len() as u64, buckets / 4 * 3 + 1);
            assert_eq!(
                CLONE_BOMBS_LIVE.load(Ordering::SeqCst) as u64,
                buckets / 4 * 3 + 1,
                "the copies made before the panic are dropped"
            );
            for k in (0..buckets / 4 * 3).chain([buckets]) {
                assert!(m.contains_key(&k), "key {k}");
            }
            // The next insert resizes.
            m.insert(buckets + 1, CloneBomb::new()).unwrap();
            assert!(m.buckets() as u64 > buckets);
        },
    );
}

/// A value whose `Drop` panics when its number is `PANIC_ON_DROP`.
static PANIC_ON_DROP: AtomicU64 = AtomicU64::new(u64::MAX);
struct DropBomb(u64, Arc<AtomicUsize>);
impl Drop for DropBomb {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
        if self.0 == PANIC_ON_DROP.load(Ordering::SeqCst) {
            panic!("DropBomb: drop failed");
        }
    }
}
impl Clone for DropBomb {
    fn clone(&self) -> Self {
        self.1.fetch_add(1, Ordering::SeqCst);
        DropBomb(self.0, self.1.clone())
    }
}

/// A value's `Drop` panicking while the map is dropped: the panic reaches the caller and every
/// other entry is still dropped and its node freed (as `std` collections do).
#[test]
fn a_drop_panicking_while_the_map_drops_leaks_no_other_entry() {
    let live = Arc::new(AtomicUsize::new(0));
    // Every key in one chain: the panicking value sits in the middle of it.
    let m = TypesafeHashMap::with_capacity_and_hasher(0, Mod8);
    let cache = m.cache.clone();
    for k in 0..10u64 {
        live.fetch_add(1, Ordering::SeqCst);
        m.insert(k * 8, DropBomb(k * 8, live.clone())).unwrap();
        live.fetch_add(1, Ordering::SeqCst);
        m.insert(k * 8 + 1, DropBomb(k * 8 + 1, live.clone()))
            .unwrap();
    }
    kfree_batch::kvfree_rcu_barrier(); // the tables retired by the resizes
    assert_eq!(live.load(Ordering::SeqCst), 20);
    PANIC_ON_DROP.store(40, Ordering::SeqCst);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(m)));
    PANIC_ON_DROP.store(u64::MAX, Ordering::SeqCst);
    assert!(r.is_err(), "the Drop's panic reaches the caller");
    assert_eq!(live.load(Ordering::SeqCst), 0, "every other entry dropped");
    assert_eq!(cache.stats().active_objects, 0, "every node freed");
}

/// A value whose `Drop` inserts into the same map (bounded), run on the `kfree_rcu` worker by a
/// retired table's drop: the insert may resize and retire a table from there.
static WORKER_REENTRANT: std::sync::OnceLock<TypesafeHashMap<u64, InsertOnDrop>> =
    std::sync::OnceLock::new();
static INSERTS_ON_DROP: AtomicU64 = AtomicU64::new(0);
#[derive(Clone)]
struct InsertOnDrop;
impl Drop for InsertOnDrop {
    fn drop(&mut self) {
        let n = INSERTS_ON_DROP.fetch_add(1, Ordering::SeqCst);
        if n < 5_000 {
            let _ = WORKER_REENTRANT
                .get()
                .unwrap()
                .insert(1_000_000 + n, InsertOnDrop);
        }
    }
}

#[test]
fn a_value_whose_drop_inserts_can_be_dropped_by_a_retired_table() {
    test_support::isolated(
        "map_typesafe::tests::a_value_whose_drop_inserts_can_be_dropped_by_a_retired_table",
        "worker-insert",
        Duration::from_secs(60),
        || {
            let m = WORKER_REENTRANT.get_or_init(TypesafeHashMap::new);
            for k in 0..2_000u64 {
                m.insert(k, InsertOnDrop).unwrap();
            }
            for _ in 0..20 {
                kfree_batch::kvfree_rcu_barrier();
            }
            assert!(m.len() >= 2_000);
        },
    );
}

/// Under the memory limit inserts and resizes fail: readers still find every stable key intact,
/// no call panics, and every entry is dropped once at the end.
#[test]
fn readers_find_every_stable_key_under_the_memory_limit() {
    test_support::isolated(
        "map_typesafe::tests::readers_find_every_stable_key_under_the_memory_limit",
        "limit",
        Duration::from_secs(60),
        || {
            let map = TypesafeHashMap::with_capacity_and_hasher(0, Mod8);
            let cache = map.cache.clone();
            for k in 0..STABLE {
                map.insert(k, Val::new(k)).unwrap();
            }
            let in_use = slab_backend::memory_stats().bytes_in_use;
            slab_backend::set_memory_limit(Some(in_use + (256 << 10)));
            let deadline = Instant::now() + Duration::from_secs(2);
            let refused = AtomicU64::new(0);
            std::thread::scope(|s| {
                for w in 0..2u64 {
                    let (map, refused) = (&map, &refused);
                    s.spawn(move || {
                        let mut x = w + 1;
                        for i in 0..2_000_000u64 {
                            if i % 256 == 0 && Instant::now() > deadline {
                                break;
                            }
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            // Grown keys fill the limit; replaces and churn then fail now and then.
                            let k = if i % 3 == 0 {
                                GROWN + (x >> 20) % 100_000
                            } else if i % 3 == 1 {
                                (x >> 40) % STABLE
                            } else {
                                STABLE + (x >> 33) % CHURN
                            };
                            if k >= STABLE && (x >> 10) % 4 == 0 {
                                map.remove(&k);
                            } else if map.insert(k, Val::new(k)).is_err() {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                for r in 0..2u64 {
                    let map = &map;
                    s.spawn(move || {
                        let mut x = r + 11;
                        for i in 0..20_000_000u64 {
                            if i % 256 == 0 && Instant::now() > deadline {
                                break;
                            }
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            let k = (x >> 33) % (STABLE + CHURN);
                            match map.get(&k) {
                                Some(v) => {
                                    assert_eq!((v.key, *v.key(), v.words), (k, k, [k; 4]));
                                    assert_eq!(v.canary.load(Ordering::Relaxed), ALIVE);
                                }
                                None => assert!(k >= STABLE, "key {k} not found"),
                            }
                        }
                    });
                }
            });
            assert!(refused.load(Ordering::Relaxed) > 0, "the limit was reached");
            slab_backend::set_memory_limit(None);
            stable_found_then_everything_freed(map, &cache);
        },
    );
}

/// A resize retires the old table with `kfree_rcu`; with every fallible kfree-batch allocation
/// failing, an insert made inside a read-side critical section (a value's `Drop` run by a lookup
/// does that) still neither waits for a grace period nor panics.
#[test]
fn a_resize_inside_a_reader_with_kfree_allocations_failing() {
    use rcu_core::fault::{self, FaultAttr, Point};
    test_support::isolated(
        "map_typesafe::tests::a_resize_inside_a_reader_with_kfree_allocations_failing",
        "reader-resize",
        Duration::from_secs(30),
        || {
            let live = Arc::new(AtomicUsize::new(0));
            let m = TypesafeHashMap::new();
            for p in [Point::Block, Point::Emergency, Point::Park, Point::Heap] {
                fault::arm(p, FaultAttr::always(-1));
            }
            {
                let _g = rcu_read_lock();
                for i in 0..1_000u64 {
                    m.insert(i, Counted::new(i, &live)).unwrap();
                }
                assert!(m.buckets() >= 1024, "the map resized");
            }
            assert!(fault::total_injected() > 0, "allocations were failed");
            fault::disarm_all();
            drop(m);
            kfree_batch::kvfree_rcu_barrier();
            assert_eq!(live.load(Ordering::SeqCst), 0, "every entry dropped once");
        },
    );
}

/// A key whose `Eq` panics on demand and whose `Drop` calls a writer of the same map.
static EQ_BOMB_MAP: std::sync::OnceLock<TypesafeHashMap<EqBomb, u8>> = std::sync::OnceLock::new();
static EQ_PANICS: AtomicBool = AtomicBool::new(false);
#[derive(Clone)]
struct EqBomb(u8);
impl Hash for EqBomb {
    fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h)
    }
}
impl PartialEq for EqBomb {
    fn eq(&self, o: &Self) -> bool {
        if EQ_PANICS.swap(false, Ordering::SeqCst) {
            panic!("EqBomb: eq failed");
        }
        self.0 == o.0
    }
}
impl Eq for EqBomb {}
impl Drop for EqBomb {
    fn drop(&mut self) {
        if let (Some(m), false) = (EQ_BOMB_MAP.get(), self.0 == 255) {
            m.remove(&EqBomb(255));
        }
    }
}

/// A key's `Eq` panicking inside `insert`: the key and value handed in are dropped after the
/// writer lock is released (their `Drop` may use the map).
#[test]
fn an_eq_panicking_in_an_insert_drops_the_entry_outside_the_writer_lock() {
    test_support::isolated(
        "map_typesafe::tests::an_eq_panicking_in_an_insert_drops_the_entry_outside_the_writer_lock",
        "eq-panic",
        Duration::from_secs(30),
        || {
            let m = EQ_BOMB_MAP.get_or_init(TypesafeHashMap::new);
            m.insert(EqBomb(1), 1).unwrap();
            EQ_PANICS.store(true, Ordering::SeqCst);
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.insert(EqBomb(1), 2)));
            assert!(r.is_err(), "the Eq's panic reaches the caller");
            assert_eq!(m.get_cloned(&EqBomb(1)), Some(1), "the map is unchanged");
        },
    );
}

/// The last share of the node cache may go inside a read-side critical section (a map dropped
/// there, its retired tables already freed): the cache's destroy must not wait there.
#[test]
fn a_map_dropped_inside_a_reader_does_not_wait() {
    test_support::isolated(
        "map_typesafe::tests::a_map_dropped_inside_a_reader_does_not_wait",
        "drop-in-reader",
        Duration::from_secs(30),
        || {
            let live = Arc::new(AtomicUsize::new(0));
            let m = TypesafeHashMap::new();
            let weak = Arc::downgrade(&m.cache);
            for i in 0..100u64 {
                m.insert(i, Counted::new(i, &live)).unwrap();
            }
            kfree_batch::kvfree_rcu_barrier(); // the retired tables: the map holds the last share
            {
                let _g = rcu_read_lock();
                drop(m);
            }
            kfree_batch::kvfree_rcu_barrier();
            rcu_core::rcu_barrier();
            assert_eq!(live.load(Ordering::SeqCst), 0, "every entry dropped once");
            assert!(weak.upgrade().is_none());
        },
    );
}
