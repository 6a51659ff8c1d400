//! [`TypesafeHashMap`]: a concurrent hash map whose nodes come from a `SLAB_TYPESAFE_BY_RCU`
//! cache, with counted lookups (the kernel's `hlist_nulls` pattern).
//!
//! The user-facing docs (the trade-off against `RcuHashMap`, examples) are on
//! [`TypesafeHashMap`], re-exported as `rcu_kit::map::TypesafeHashMap`.
//!
//! # Implementation
//!
//! The map owns a typesafe [`KmemCache`] of nodes `{ refs, hash, next, entry }` (its ctor makes a
//! free node: `refs` 0, `entry` uninitialised) and points (an [`Atomic`], owning) at a **table**:
//! a power-of-two array of bucket heads, a generation number, and a share of the cache. A head or
//! a `next` holds either a node's address (even) or a **nulls marker** (odd) naming the table's
//! generation and the bucket: the end of that bucket's chain.
//!
//! **Lookup** (inside a read-side critical section): load the table, walk the bucket: for each
//! node read `hash`; when it matches, take a reference unless the count is zero
//! (inc-not-zero), then compare the key through `entry`; a match returns the reference as a
//! [`TsMapRef`], a mismatch puts it back. At the end of the chain, a marker other than
//! (this table's generation, this bucket) means a node on the way was freed and reused into
//! another chain meanwhile, and the walk restarts from the bucket head.
//!
//! **Writers** serialise on a [`WriterLock`] (the same re-entrancy rule as `RcuHashMap`: user
//! code run by a writer that calls a writer of the same map panics instead of deadlocking).
//! Insert of a new key pushes a node at the head of its chain; insert of an existing key pushes
//! the new node at the head, then unlinks the old one and puts the map's reference to it; remove
//! unlinks and puts. A new node is never linked in the middle of a chain. Every put and retire
//! that may run user `Drop` comes after the writer lock is released.
//!
//! **Resize** is copy-and-publish: past 3/4 load, a table twice as large, of the next generation,
//! with fresh nodes holding clones of every entry, replaces the old one with one Release swap; the
//! old table is retired with `kfree_rcu`, and its drop puts the map's references to its nodes.
//! A resize that cannot allocate a node, or whose `Clone` panics (caught), leaves the map its
//! table; the copies made so far are dropped, and the panic resumed, after the lock is released.
//! A table's drop puts every node even when an entry's `Drop` panics (the rest are put by the
//! unwind; a second panic aborts, as in `std` collections).
//!
//! Invariants:
//! 1. Every node of the cache holds a valid `Node` from its slab's creation to its slab's discard,
//!    which comes a grace period after the slab's last node was freed (slab-backend's typesafe
//!    caches). So a node address read under a guard (from a head, or from any node's `next`,
//!    which only ever holds node addresses and markers) stays a valid `Node` until the guard
//!    drops, whatever happens to the node meanwhile. Only its atomic fields are read without a
//!    reference.
//! 2. `refs` is 0 exactly while the node is free (or being freed: the put that reached 0). `entry`
//!    is initialised exactly while `refs` is non-zero; it is written only while the node is
//!    exclusively owned: by an insert or a resize before `refs` becomes 1 (Release), and dropped
//!    by the put that takes `refs` to 0, which then frees the node to the cache at once. A
//!    reference is gained only by that first store, by cloning a reference, or by inc-not-zero,
//!    so nobody reads `entry` of a free node.
//! 3. Each node linked in a table's chain holds one reference owned by that table. Writers
//!    change only the current table, under the writer lock; they put a node's table reference
//!    only after unlinking it. A table that is no longer current is frozen: its chains never
//!    change again, and its nodes keep their table references until it is dropped, a grace
//!    period after the swap. So a reader walking an old table never meets its nodes reused.
//! 4. A new node is linked only at the head of a chain. A reader whose node is freed and reused
//!    into the same chain therefore moves back towards the head (it may see entries twice, never
//!    skip one); one whose node is reused into another chain, of this table or of a newer one,
//!    ends on a marker of that chain and restarts. With unlinks keeping the rest of the chain
//!    reachable, a key in the chain for the whole lookup is found.
//! 5. Markers: `((generation << BUCKET_BITS | bucket) << 1) | 1`. Generations start at 1 and grow
//!    by one per resize (tables only grow: at most `usize::BITS` of them), so two live tables
//!    never share a marker; the ctor's free node holds marker 1 (generation 0), which no table
//!    ends with.
//! 6. Handles borrow the map, and every table holds a share (`Arc`) of the cache: the cache
//!    outlives every handle and every retired table; it is destroyed with the last of them.
//! 7. A replace is atomic for lookups of its key. It pushes the new node at the head, then
//!    increments its bucket's replace counter, then unlinks the old node. A lookup that missed
//!    the new node (it read the head before the push) and the old one (it read the unlink, or
//!    the 0 of the put that freed the old node, or the hash of its reuse: each ordered after the
//!    increment) sees the counter changed at the end of its walk and walks again; a miss is
//!    reported only when the counter did not move during the walk. Removes and inserts of new keys do not move it, so a
//!    lookup of an absent key walks again only for replaces in its own bucket.
//!
//! ## Memory orderings
//! * Publishing a node: its `entry` and `hash` are written, `next` is stored with Release (for
//!   stale readers standing on the node's previous incarnation, who follow it without a head),
//!   then `refs` is stored 1 with Release (also by a resize, whose copies stale readers may
//!   reference before the table is published), then the bucket head is stored with Release. A
//!   reader's Acquire load of a head or a `next` pairs with those link stores (it sees the node's
//!   `next` and `hash`); its Acquire inc-not-zero pairs with the `refs` store (it sees `entry`).
//!   Without them a reader could take a reference and read the previous owner's key, or follow a
//!   stale `next`.
//! * `hash` is stored with Release by every new owner and read with Acquire by lookups: a
//!   reader that reads a reused node's new hash is ordered after the reuse, hence after the
//!   freeing put and the replace increment before it (Invariant 7). The key check under a
//!   reference decides a match; writers read `hash` Relaxed under the writer lock.
//! * A put is a Release decrement; the one reaching 0 runs an Acquire fence (as `Arc`) before
//!   dropping `entry` and freeing: every holder's access happens before the drop and the reuse.
//! * Unlinks store the successor with Release (pairs with the readers' Acquire loads, as the
//!   successor's own publication did).
//! * The table is published with the `Atomic`'s AcqRel swap and loaded with Acquire: the nodes a
//!   resize built (stored Relaxed into the private table) are visible through it.
//! * Writers read links, hashes and keys Relaxed / plainly under the writer lock, which orders
//!   them after the previous writer.

use core::any::Any;
use core::borrow::Borrow;
use core::cell::UnsafeCell;
use core::fmt;
use core::hash::{BuildHasher, Hash};
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ops::Deref;
use core::ptr::{self, NonNull};
use std::collections::hash_map::RandomState;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use rcu_core::{rcu_read_lock, RcuReadGuard};
use slab_backend::{CacheStats, KmemCache, SlabError};

use crate::primitive::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use crate::ptr::{Atomic, Retired};
use crate::typesafe::NEXT_ID;
use crate::writer_lock::{WriterGuard, WriterLock};

/// Smallest table (buckets).
const MIN_BUCKETS: usize = 16;
/// Bits of a marker for the bucket index (Invariant 5).
const BUCKET_BITS: u32 = usize::BITS / 2 - 1;
/// Largest table (buckets).
const MAX_BUCKETS: usize = 1 << BUCKET_BITS;

/// The marker ending chain `bucket` of the table of generation `generation` (Invariant 5).
#[inline]
fn nulls(generation: usize, bucket: usize) -> usize {
    (((generation << BUCKET_BITS) | bucket) << 1) | 1
}

#[inline]
fn is_nulls(link: usize) -> bool {
    link & 1 == 1
}

/// A node of the cache (Invariants 1 and 2).
struct Node<K, V> {
    /// 0: free.
    refs: AtomicUsize,
    hash: AtomicU64,
    /// A node's address, or a marker.
    next: AtomicUsize,
    /// Initialised exactly while `refs != 0`.
    entry: UnsafeCell<MaybeUninit<(K, V)>>,
}

impl<K, V> Node<K, V> {
    fn free() -> Self {
        Node {
            refs: AtomicUsize::new(0),
            hash: AtomicU64::new(0),
            next: AtomicUsize::new(nulls(0, 0)),
            entry: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// The entry.
    ///
    /// # Safety
    /// The caller holds a reference to the node (or the writer lock while the node is linked in
    /// the current table, whose reference keeps it), for as long as the result is used.
    #[inline]
    unsafe fn entry(&self) -> &(K, V) {
        // SAFETY: Invariant 2: a referenced node's entry is initialised and only dropped by the
        // last put, which cannot come while the caller's reference lives.
        unsafe { (*self.entry.get()).assume_init_ref() }
    }

    /// Takes a reference unless the count is zero (Invariant 2).
    #[inline]
    fn inc_not_zero(&self) -> bool {
        // Relaxed: the CAS below decides.
        let mut c = self.refs.load(Ordering::Relaxed);
        loop {
            if c == 0 {
                return false;
            }
            let next = c
                .checked_add(1)
                .expect("TypesafeHashMap: reference count overflow");
            // Acquire: pairs with the Release store of `refs = 1` that published the entry
            // (module docs, Memory orderings).
            match self
                .refs
                .compare_exchange_weak(c, next, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
    }
}

/// The node at `link` (an address, not a marker).
///
/// # Safety
/// `link` was read from a head or a `next` of a map's table inside a read-side critical section
/// that is still running, or under the writer lock (Invariant 1).
#[inline]
unsafe fn node_at<'a, K, V>(link: usize) -> &'a Node<K, V> {
    debug_assert!(!is_nulls(link));
    // SAFETY: by the caller, a valid `Node` of the cache for the borrow (Invariant 1); only
    // shared references to nodes are ever made.
    unsafe { &*(link as *const Node<K, V>) }
}

/// Puts one reference to `p`; the last one drops the entry and frees the node at once.
///
/// # Safety
/// `p` is a node of `cache` and the caller owns one reference to it, given up here.
unsafe fn put<K: Send + Sync + 'static, V: Send + Sync + 'static>(
    cache: &KmemCache<Node<K, V>>,
    p: NonNull<Node<K, V>>,
) {
    // SAFETY: the caller's reference keeps the node allocated (Invariant 2).
    let node = unsafe { p.as_ref() };
    // Release: this holder's accesses to the entry happen before its drop and the node's reuse
    // (pairs with the Acquire fence below, run by whoever puts last).
    if node.refs.fetch_sub(1, Ordering::Release) != 1 {
        return;
    }
    // Acquire: pairs with the other holders' Release decrements.
    fence(Ordering::Acquire);
    /// Frees the node also when the entry's `Drop` panics (the entry then counts as dropped).
    struct Free<'c, K: Send + Sync + 'static, V: Send + Sync + 'static>(
        &'c KmemCache<Node<K, V>>,
        NonNull<Node<K, V>>,
    );
    impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Drop for Free<'_, K, V> {
        fn drop(&mut self) {
            // SAFETY: the last reference was put: the node is allocated, ours alone, and holds a
            // valid `Node` (its entry is uninitialised again, which `MaybeUninit` allows), as a
            // typesafe free requires; freed once.
            unsafe { self.0.free(self.1) };
        }
    }
    let _free = Free(cache, p);
    // SAFETY: Invariant 2: `refs` reached 0, so the entry is initialised, nobody else holds a
    // reference, and nobody can take one (inc-not-zero fails): we own it and drop it once.
    unsafe { ptr::drop_in_place((*node.entry.get()).as_mut_ptr()) };
}

/// A chain's head and its replace counter, side by side: a lookup reads both, on one cache line.
struct Bucket {
    /// The first node's address, or the chain's marker.
    head: AtomicUsize,
    /// How many replaces this chain has seen (Invariant 7).
    replaces: AtomicUsize,
}

/// A power-of-two array of chains, with its generation (Invariant 5) and a share of the cache.
struct Table<K: Send + Sync + 'static, V: Send + Sync + 'static> {
    generation: usize,
    buckets: Box<[Bucket]>,
    cache: Arc<KmemCache<Node<K, V>>>,
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Table<K, V> {
    fn new(n: usize, generation: usize, cache: Arc<KmemCache<Node<K, V>>>) -> Box<Self> {
        assert!(
            n.is_power_of_two() && n <= MAX_BUCKETS,
            "TypesafeHashMap: more than {MAX_BUCKETS} buckets"
        );
        Box::new(Table {
            generation,
            buckets: (0..n)
                .map(|i| Bucket {
                    head: AtomicUsize::new(nulls(generation, i)),
                    replaces: AtomicUsize::new(0),
                })
                .collect(),
            cache,
        })
    }

    #[inline]
    fn index(&self, hash: u64) -> usize {
        // Truncating the hash is intended: the low bits pick the bucket.
        (hash as usize) & (self.buckets.len() - 1)
    }
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Drop for Table<K, V> {
    fn drop(&mut self) {
        let mut rest = PutRest {
            table: self,
            bucket: 0,
            p: nulls(0, 0),
        };
        // When an entry's `Drop` panics, `rest` is dropped by the unwind and puts the nodes
        // after it (a second panic there aborts, as in `std` collections).
        rest.run();
    }
}

/// The nodes of a table being dropped that are not put yet: from `p` in chain `bucket`, then
/// the chains after it.
struct PutRest<'t, K: Send + Sync + 'static, V: Send + Sync + 'static> {
    table: &'t Table<K, V>,
    bucket: usize,
    p: usize,
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> PutRest<'_, K, V> {
    fn run(&mut self) {
        loop {
            while is_nulls(self.p) {
                if self.bucket == self.table.buckets.len() {
                    return;
                }
                // Relaxed: the table is frozen (Invariant 3) and its last change happened
                // before the grace period or the map's drop that lets us run.
                self.p = self.table.buckets[self.bucket].head.load(Ordering::Relaxed);
                self.bucket += 1;
            }
            // SAFETY: a table is dropped when no reader can reach it (the map dropped, or a
            // grace period after it was unpublished), and it holds a reference to each node of
            // its chains (Invariant 3) not put yet (`p` moves past a node before its put), so
            // the node is alive.
            let node = unsafe { node_at::<K, V>(self.p) };
            // Relaxed: as above. Read before the put, which may free the node for reuse.
            self.p = node.next.load(Ordering::Relaxed);
            // SAFETY: a node of this table's cache; the table's reference is given up once.
            unsafe { put(&self.table.cache, NonNull::from(node)) };
        }
    }
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Drop for PutRest<'_, K, V> {
    fn drop(&mut self) {
        self.run();
    }
}

/// What a failed resize leaves, to drop after the writer lock is released (user `Drop` may use
/// the map): the new table with the copies made so far, clones not linked yet, and the panic of
/// a `Clone`, resumed last.
struct Unused<K: Send + Sync + 'static, V: Send + Sync + 'static> {
    table: Box<Table<K, V>>,
    clones: Option<Box<dyn Any + Send>>,
    panic: Option<Box<dyn Any + Send>>,
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Unused<K, V> {
    fn new<C: Send + 'static>(
        table: Box<Table<K, V>>,
        clones: Option<C>,
        panic: Option<Box<dyn Any + Send>>,
    ) -> Self {
        Unused {
            table,
            clones: clones.map(|c| Box::new(c) as Box<dyn Any + Send>),
            panic,
        }
    }

    /// Drops everything, then resumes the `Clone`'s panic if there was one. Called without the
    /// writer lock.
    fn finish(self) {
        let Unused {
            table,
            clones,
            panic,
        } = self;
        drop(clones);
        drop(table);
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }
}

/// Writer-side state, under the map's writer lock.
#[derive(Debug)]
struct WriterState {
    len: usize,
}

type MapWriter<'a> = WriterGuard<'a, WriterState>;

/// A concurrent hash map whose nodes come from a `SLAB_TYPESAFE_BY_RCU` cache owned by the map,
/// with counted lookups (the kernel's `hlist_nulls` pattern).
///
/// * `get(&key)` returns a counted [`TsMapRef`], valid while the map lives; a removed entry is
///   dropped when its last handle drops.
/// * `insert` / `remove` take a per-map writer lock; removed and replaced nodes go back to the
///   cache at once (no grace period), so memory is bounded by the live entries.
/// * `K` and `V` are `Send + Sync + 'static`, and `Clone` (a resize copies the entries).
///
/// Where [`RcuHashMap`](crate::map::RcuHashMap) retires a removed node with `kfree_rcu` (its memory
/// comes back a grace period later), this map frees it to its typesafe cache **at once**, and the
/// next insert may reuse it, even while readers still stand on it. Readers therefore take a
/// reference (a counted [`TsMapRef`]) and check the key again before they trust a node.
///
/// The trade-off:
/// * **Memory is bounded by the live entries.** Removes and replaces leave no backlog waiting
///   for a grace period (only a resize retires the old table, whose nodes go back when it is
///   freed), and reuse stays cache-hot. Slow grace periods cost nothing.
/// * **Readers write shared memory.** Every lookup increments and decrements the reference count
///   of the node it returns (and of each node of its chain with the same hash), so readers of the
///   same key contend on one cache line, and a lookup may restart its walk when a node it stood on
///   was reused meanwhile. A lookup returns a handle, not a `&V` bound to a guard.
/// * **A lookup may walk its chain again**: when a node it stood on was reused into another
///   chain, and when a miss coincides with a replace in its bucket (a replace pushes the new node
///   at the head, then unlinks the old one; a walk that passed the head before the push and the
///   old node's place after the unlink would find neither, so it checks the bucket's replace
///   count and walks again). A key present for the whole lookup, replaced or not, is found.
///
/// An entry is dropped where its last reference is put: by the writer that removed or replaced
/// it (after releasing the writer lock), by the last handle's drop, by a resize's retired table
/// (on the `kfree_rcu` worker), or inside a lookup that held the last reference to a node
/// removed meanwhile, within the lookup's read-side critical section. So a key's or value's
/// `Drop` must not wait for a grace period (`synchronize_rcu` there panics).
///
/// ```
/// use rcu_kit::map::TypesafeHashMap;
///
/// let map = TypesafeHashMap::new();
/// map.insert("one", 1).unwrap();
/// map.insert("two", 2).unwrap();
/// let one = map.get("one").expect("present");
/// assert_eq!((*one.key(), *one), ("one", 1));
/// assert!(map.remove("one"));
/// assert_eq!(*one, 1); // the handle keeps the removed entry alive
/// drop(one); // the last reference: the entry is dropped, the node goes back to the cache
/// assert_eq!(map.get_cloned("one"), None);
/// assert_eq!(map.len(), 1);
/// ```
///
/// A handle cannot outlive its map:
///
/// ```compile_fail,E0505
/// let map = rcu_kit::map::TypesafeHashMap::new();
/// map.insert(1, 2).unwrap();
/// let v = map.get(&1).unwrap();
/// drop(map);
/// println!("{}", *v);
/// ```
///
/// Readers and a writer on several threads:
///
/// ```
/// use rcu_kit::map::TypesafeHashMap;
/// let users = TypesafeHashMap::new();
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         if let Some(name) = users.get(&1) {
///             assert_eq!(*name, "ann");
///         }
///     });
///     users.insert(1, "ann".to_string()).unwrap();
/// });
/// assert_eq!(users.get_cloned(&1).as_deref(), Some("ann"));
/// ```
pub struct TypesafeHashMap<K, V, S = RandomState>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Never null.
    table: Atomic<Table<K, V>>,
    cache: Arc<KmemCache<Node<K, V>>>,
    writer: WriterLock<WriterState>,
    /// Number of entries, readable without the lock (a snapshot).
    len: AtomicUsize,
    hasher: S,
}

impl<K, V> TypesafeHashMap<K, V, RandomState>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty map with a cache of its own.
    ///
    /// # Panics
    /// When the cache cannot be created: a node (`K`, `V` and 24 bytes) larger than the largest
    /// slab ([`try_with_capacity_and_hasher`](Self::try_with_capacity_and_hasher) returns the
    /// error instead).
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::<u64, u64>::new();
    /// assert!(m.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty map sized for `capacity` entries without a resize.
    ///
    /// # Panics
    /// As [`new`](Self::new).
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::<u64, u64>::with_capacity(100);
    /// assert!(m.buckets() >= 128);
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacity_and_hasher(capacity, RandomState::new())
    }
}

impl<K, V> Default for TypesafeHashMap<K, V, RandomState>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, S> TypesafeHashMap<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// An empty map sized for `capacity` entries, hashing with `hasher`.
    ///
    /// # Panics
    /// As [`new`](Self::new).
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// let m = rcu_kit::map::TypesafeHashMap::with_capacity_and_hasher(8, RandomState::new());
    /// m.insert(1u8, 'a').unwrap();
    /// assert!(m.contains_key(&1));
    /// ```
    pub fn with_capacity_and_hasher(capacity: usize, hasher: S) -> Self {
        match Self::try_with_capacity_and_hasher(capacity, hasher) {
            Ok(m) => m,
            Err(e) => panic!("TypesafeHashMap: cannot create the node cache: {e}"),
        }
    }

    /// As [`with_capacity_and_hasher`](Self::with_capacity_and_hasher), returning the cache's
    /// creation error instead of panicking. The cache is named `"TypesafeHashMap#<n>"`, `n`
    /// unique in the process (several maps may exist at once).
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// use rcu_kit::map::TypesafeHashMap;
    /// let m = TypesafeHashMap::<u32, u32>::try_with_capacity_and_hasher(0, RandomState::new());
    /// assert!(m.is_ok());
    /// ```
    pub fn try_with_capacity_and_hasher(capacity: usize, hasher: S) -> Result<Self, SlabError> {
        let buckets = (capacity.saturating_mul(4) / 3 + 1)
            .clamp(MIN_BUCKETS, MAX_BUCKETS)
            .next_power_of_two();
        // Relaxed: a unique-number counter.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let cache = Arc::new(
            KmemCache::builder(&format!("TypesafeHashMap#{id}"))
                .typesafe_by_rcu(true)
                .ctor(Node::free)
                .build()?,
        );
        Ok(TypesafeHashMap {
            table: Atomic::from_box(Some(Table::new(buckets, 1, cache.clone()))),
            cache,
            writer: WriterLock::new(WriterState { len: 0 }),
            len: AtomicUsize::new(0),
            hasher,
        })
    }

    /// Takes the writer lock.
    ///
    /// # Panics
    /// When the calling thread already holds it (user code run by a writer calling back into the
    /// map): that would deadlock.
    #[track_caller]
    fn lock_writer(&self) -> MapWriter<'_> {
        self.writer.lock(
            "TypesafeHashMap: a writer method was called by the thread that already holds the \
             map's writer lock (from a key's Eq or a key's or value's Clone run by a writer): it \
             would deadlock",
        )
    }

    #[inline]
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The current table, valid while `guard` lives.
    #[inline]
    fn table<'g>(&'g self, guard: &'g RcuReadGuard) -> &'g Table<K, V> {
        // `Atomic::load` is Acquire: pairs with the swap in `resize` that published the table
        // and the nodes it was built with.
        match self.table.load(guard).as_ref() {
            Some(t) => t,
            None => unreachable!("the table pointer is never null"),
        }
    }

    /// A counted handle to the entry of `key`. Lock-free; the walk restarts when a node it
    /// stood on was reused into another chain meanwhile (see [`TypesafeHashMap`]).
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert("k".to_string(), vec![1, 2]).unwrap();
    /// let v = m.get("k").unwrap();
    /// assert_eq!(v.len(), 2);
    /// assert!(m.get("x").is_none());
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<TsMapRef<'_, K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let guard = rcu_read_lock();
        let table = self.table(&guard);
        let idx = table.index(hash);
        let end = nulls(table.generation, idx);
        loop {
            // Acquire: pairs with the Release increment of a replace (Invariant 7): a walk that
            // starts after it sees the new node at the head.
            let replaces = table.buckets[idx].replaces.load(Ordering::Acquire);
            // Acquire (here and on every `next`): pairs with the Release store that linked the
            // node (module docs, Memory orderings).
            let mut p = table.buckets[idx].head.load(Ordering::Acquire);
            while !is_nulls(p) {
                // SAFETY: read from this table's head or a node's `next` under `guard`
                // (Invariant 1).
                let node = unsafe { node_at::<K, V>(p) };
                // Acquire: pairs with the Release store of a reusing owner (Invariant 7): a
                // reader that reads a new owner's hash here is ordered after that reuse, hence
                // after the put that freed the node and the replace increment before it. The
                // key check under a reference decides a match.
                if node.hash.load(Ordering::Acquire) == hash && node.inc_not_zero() {
                    let r = TsMapRef {
                        node: NonNull::from(node),
                        cache: &self.cache,
                        _entry: PhantomData,
                    };
                    if <K as Borrow<Q>>::borrow(r.key()) == key {
                        return Some(r);
                    }
                    drop(r); // reused for another key (may free it: typesafe reuse)
                } else {
                    // Acquire: when the count read was the 0 of the put that freed the node
                    // (a Release RMW), this orders us after that put, hence after the replace
                    // counter increment that preceded it (Invariant 7). Without it the check at
                    // the end could read a stale count and report a replaced key missing.
                    fence(Ordering::Acquire);
                }
                p = node.next.load(Ordering::Acquire);
            }
            // Acquire: as at the start. Unchanged: no replace in this bucket ran during the
            // walk, so a key it did not find was not present (Invariant 7).
            if p == end && table.buckets[idx].replaces.load(Ordering::Acquire) == replaces {
                return None;
            }
            // The walk was moved into another chain by a reuse (Invariant 4), or may have
            // passed a replaced key's new node before its push and its old node after its
            // unlink (Invariant 7): start again.
        }
    }

    /// A clone of the value for `key`.
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert(3, "three".to_string()).unwrap();
    /// assert_eq!(m.get_cloned(&3).as_deref(), Some("three"));
    /// ```
    pub fn get_cloned<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).map(|r| (*r).clone())
    }

    /// Whether `key` is present.
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert(1, ()).unwrap();
    /// assert!(m.contains_key(&1) && !m.contains_key(&2));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts or replaces; `Ok(true)` when the key was new. A replaced entry's node goes back
    /// to the cache as soon as no handle holds it (handles keep the old value).
    ///
    /// Nodes come from the map's slab cache, under the kit's memory limit: when none can be
    /// allocated (the limit is reached, or a fault point fails it), the entry comes back in an
    /// [`InsertError`] and the map is unchanged.
    ///
    /// # Panics
    /// When a key's `Eq` panics (the map is unchanged), or a key's or value's `Clone` panics in
    /// the resize an insert of a new key may run: the entry is inserted and the map keeps its
    /// table; the copies made so far are dropped, then the panic reaches the caller.
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// assert_eq!(m.insert(1, 'a'), Ok(true));
    /// let old = m.get(&1).unwrap();
    /// assert_eq!(m.insert(1, 'b'), Ok(false));
    /// assert_eq!((*old, m.get_cloned(&1)), ('a', Some('b')));
    /// ```
    pub fn insert(&self, key: K, value: V) -> Result<bool, InsertError<K, V>> {
        let hash = self.hash(&key);
        let mut w = self.lock_writer();
        let table_ptr = self.table.load_relaxed_by_writer();
        // SAFETY: only writers (serialised by the lock) unpublish a table, so the current one is
        // alive; this borrow is last used before `resize` hands it back for retiring.
        let table = unsafe { &*table_ptr };
        let idx = table.index(hash);
        let head = &table.buckets[idx].head;
        // Find the key's node, and the link that points at it. Relaxed loads: writers are
        // ordered by the lock (module docs, Memory orderings).
        let mut link = head;
        let mut old = None;
        let mut p = head.load(Ordering::Relaxed);
        while !is_nulls(p) {
            // SAFETY: a node of the current table under the writer lock (Invariant 1; its
            // table reference keeps it: Invariant 3).
            let node = unsafe { node_at::<K, V>(p) };
            // SAFETY: as above: the table's reference keeps the entry (Invariant 2).
            if node.hash.load(Ordering::Relaxed) == hash && unsafe { node.entry() }.0 == key {
                old = Some((link, node));
                break;
            }
            link = &node.next;
            p = link.load(Ordering::Relaxed);
        }
        let Some(new) = self.cache.alloc() else {
            return Err(InsertError { key, value });
        };
        // SAFETY: a typesafe cache with a ctor hands out valid nodes (Invariant 1).
        let node = unsafe { new.as_ref() };
        // Relaxed: a free node has `refs` 0 until we store 1 (Invariant 2).
        debug_assert_eq!(node.refs.load(Ordering::Relaxed), 0);
        // SAFETY: `refs` is 0 and the node is ours: nobody reads `entry` (Invariant 2).
        unsafe { (*node.entry.get()).write((key, value)) };
        // Release: stale readers may read it at any time (it is atomic for that reason); one
        // that reads it is ordered after our allocation of this node, so after its previous
        // incarnation's freeing put and any replace increment before that (pairs with the
        // Acquire load in `get`; Invariant 7). Without it such a reader could skip the replaced
        // node and still read the old replace count.
        node.hash.store(hash, Ordering::Release);
        // Release: a stale reader standing on this node (its previous incarnation) follows
        // `next` with Acquire without going through the head: this orders the successor's
        // publication (which the writer lock ordered before us) before its reads of the
        // successor.
        node.next
            .store(head.load(Ordering::Relaxed), Ordering::Release);
        // Release: publishes `entry` to readers' Acquire inc-not-zero. This is the table's
        // reference (Invariant 3).
        node.refs.store(1, Ordering::Release);
        // Release: publishes `hash` and `next` to readers' Acquire loads of the head. At the
        // head, never in the middle (Invariant 4).
        head.store(new.as_ptr() as usize, Ordering::Release);
        if let Some((link, old_node)) = old {
            // Between the push and the unlink (Invariant 7). Release: a reader whose walk reads
            // the unlink below (Acquire), or the 0 of the put that frees the old node, reads
            // this increment too, and walks again.
            let r = &table.buckets[idx].replaces;
            // Relaxed load: under the writer lock.
            r.store(r.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
            // The old node's predecessor is the new node when it was first in the chain.
            let link = if ptr::eq(link, head) {
                &node.next
            } else {
                link
            };
            // Release: the successor was published earlier, and the increment above comes
            // before; pairs with readers' Acquire loads.
            link.store(old_node.next.load(Ordering::Relaxed), Ordering::Release);
            // Put outside the lock: the entry's Drop may use the map.
            drop(w);
            // SAFETY: a node of this cache; unlinked above, so the table's reference to it is
            // ours to give up, once (Invariant 3).
            unsafe { put(&self.cache, NonNull::from(old_node)) };
            return Ok(false);
        }
        w.len += 1;
        // Relaxed: a statistic.
        self.len.store(w.len, Ordering::Relaxed);
        let buckets = table.buckets.len();
        if w.len > buckets / 4 * 3 && buckets < MAX_BUCKETS {
            let done = self.resize(table_ptr, buckets * 2);
            drop(w); // retire or drop outside the lock (module docs)
            match done {
                Ok(old) => old.kfree_rcu(),
                Err(unused) => unused.finish(),
            }
        }
        Ok(true)
    }

    /// Removes `key`; returns whether it was present. Its node goes back to the cache as soon as
    /// no handle holds it.
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert(1, 1).unwrap();
    /// assert!(m.remove(&1));
    /// assert!(!m.remove(&1));
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let mut w = self.lock_writer();
        // SAFETY: as in `insert`.
        let table = unsafe { &*self.table.load_relaxed_by_writer() };
        let mut link = &table.buckets[table.index(hash)].head;
        loop {
            // Relaxed: as in `insert`.
            let p = link.load(Ordering::Relaxed);
            if is_nulls(p) {
                return false;
            }
            // SAFETY: as in `insert`.
            let node = unsafe { node_at::<K, V>(p) };
            // Relaxed: as in `insert`.
            if node.hash.load(Ordering::Relaxed) == hash && {
                // SAFETY: as in `insert`: the table's reference keeps the entry.
                let (k, _) = unsafe { node.entry() };
                <K as Borrow<Q>>::borrow(k) == key
            } {
                // Release: pairs with readers' Acquire loads (module docs).
                link.store(node.next.load(Ordering::Relaxed), Ordering::Release);
                w.len -= 1;
                // Relaxed: a statistic.
                self.len.store(w.len, Ordering::Relaxed);
                // Put outside the lock: the entry's Drop may use the map.
                drop(w);
                // SAFETY: unlinked above: the table's reference is ours, given up once
                // (Invariant 3).
                unsafe { put(&self.cache, NonNull::from(node)) };
                return true;
            }
            link = &node.next;
        }
    }

    /// Copy-and-publish under the writer lock: a table of `buckets` buckets, the next
    /// generation, with fresh nodes holding clones of every entry, replaces `old` (the current
    /// table), which comes back to be retired once the lock is released. `Err` with the unused
    /// new table and clones (to drop outside the lock: [`Unused::finish`]) when a node cannot
    /// be allocated or a `Clone` panics: the map keeps its table.
    fn resize(
        &self,
        old: *const Table<K, V>,
        buckets: usize,
    ) -> Result<Retired<Table<K, V>>, Unused<K, V>> {
        // SAFETY: `old` is the current table, alive under the writer lock until it is retired
        // by the caller; this borrow ends before that.
        let old_table = unsafe { &*old };
        let new = Table::new(buckets, old_table.generation + 1, self.cache.clone());
        for head in old_table.buckets.iter().map(|b| &b.head) {
            // Relaxed: under the writer lock.
            let mut p = head.load(Ordering::Relaxed);
            while !is_nulls(p) {
                // SAFETY: a node of the current table, under the writer lock (Invariant 3).
                let node = unsafe { node_at::<K, V>(p) };
                // SAFETY: as above.
                let (k, v) = unsafe { node.entry() };
                let hash = node.hash.load(Ordering::Relaxed);
                // Cloned before the allocation: a panicking clone leaves no node behind. The
                // panic is caught so that the copies made so far (and the key's clone) are
                // dropped after the writer lock is released: their `Drop` may use the map.
                let k = match catch_unwind(AssertUnwindSafe(|| k.clone())) {
                    Ok(k) => k,
                    Err(panic) => return Err(Unused::new::<K>(new, None, Some(panic))),
                };
                let v = match catch_unwind(AssertUnwindSafe(|| v.clone())) {
                    Ok(v) => v,
                    Err(panic) => return Err(Unused::new(new, Some(k), Some(panic))),
                };
                let entry = (k, v);
                let Some(copy) = self.cache.alloc() else {
                    return Err(Unused::new(new, Some(entry), None));
                };
                // SAFETY: a valid node of the cache (Invariant 1).
                let c = unsafe { copy.as_ref() };
                // SAFETY: `refs` is 0: the node is ours (Invariant 2).
                unsafe { (*c.entry.get()).write(entry) };
                let slot = &new.buckets[new.index(hash)].head;
                // Release: as in `insert`, for stale readers of the node's previous incarnation.
                // (`slot` below is Relaxed: the new table is private until the swap below, whose
                // Release publishes it to readers of the table.)
                c.hash.store(hash, Ordering::Release);
                // Release: as in `insert`, for stale readers of the node's previous
                // incarnation that follow its `next` directly.
                c.next
                    .store(slot.load(Ordering::Relaxed), Ordering::Release);
                // Release: such a stale reader may take a reference to the copy before the table
                // is published (its count is not 0 any more) and then read `entry`, written
                // above; pairs with its Acquire inc-not-zero.
                c.refs.store(1, Ordering::Release);
                slot.store(copy.as_ptr() as usize, Ordering::Relaxed);
                // Relaxed: under the writer lock.
                p = node.next.load(Ordering::Relaxed);
            }
        }
        // `Atomic::swap` (AcqRel): its Release publishes the new table and every node built above
        // (pairs with the Acquire load in `table`).
        let prev = self
            .table
            .swap(Some(new))
            .expect("the table pointer is never null");
        debug_assert!(ptr::eq(prev.as_ptr(), old));
        Ok(prev)
    }

    /// Number of entries (a snapshot).
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert(1, 1).unwrap();
    /// assert_eq!(m.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        // Relaxed: a snapshot.
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the map is empty (a snapshot).
    ///
    /// ```
    /// assert!(rcu_kit::map::TypesafeHashMap::<u8, u8>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets of the current table (a snapshot).
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// for i in 0..100 {
    ///     m.insert(i, i).unwrap();
    /// }
    /// assert!(m.buckets() >= 128);
    /// ```
    pub fn buckets(&self) -> usize {
        let g = rcu_read_lock();
        self.table(&g).buckets.len()
    }

    /// The statistics of the map's node cache: `active_objects` counts the nodes linked in the
    /// current table, in tables waiting for a grace period after a resize, and held only by
    /// handles.
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert(1, 1).unwrap();
    /// assert_eq!(m.cache_stats().active_objects, 1);
    /// m.remove(&1);
    /// assert_eq!(m.cache_stats().active_objects, 0); // back at once: no grace period
    /// ```
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

impl<K, V, S> fmt::Debug for TypesafeHashMap<K, V, S>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: a snapshot for display, as `len`.
        f.debug_struct("TypesafeHashMap")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("cache", &self.cache.name())
            .finish()
    }
}

/// An insert found no memory for a node: the entry, handed back (the map is unchanged).
///
/// ```
/// use rcu_kit::map::{InsertError, TypesafeHashMap};
/// let m = TypesafeHashMap::new();
/// match m.insert("k", 1) {
///     Ok(new) => assert!(new),
///     Err(InsertError { key, value }) => eprintln!("no memory for {key} = {value}"),
/// }
/// ```
pub struct InsertError<K, V> {
    /// The key that was not inserted.
    pub key: K,
    /// Its value.
    pub value: V,
}

impl<K, V> fmt::Debug for InsertError<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InsertError").finish_non_exhaustive()
    }
}

impl<K, V> fmt::Display for InsertError<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypesafeHashMap: no memory for a node (the memory limit is reached)")
    }
}

impl<K, V> PartialEq for InsertError<K, V>
where
    K: PartialEq,
    V: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.value == other.value
    }
}

impl<K, V> std::error::Error for InsertError<K, V> {}

/// A counted reference to an entry of a [`TypesafeHashMap`], from [`TypesafeHashMap::get`]:
/// derefs to the value; [`key`](TsMapRef::key) gives the key. The entry stays valid (even if
/// removed or replaced meanwhile) until the handle drops; the last handle of a removed entry
/// drops it and gives its node back to the cache.
///
/// ```
/// let m = rcu_kit::map::TypesafeHashMap::new();
/// m.insert(7, "seven").unwrap();
/// let r = m.get(&7).unwrap();
/// let r2 = r.clone();
/// m.remove(&7);
/// assert_eq!((*r.key(), *r2), (7, "seven"));
/// ```
pub struct TsMapRef<'m, K: Send + Sync + 'static, V: Send + Sync + 'static> {
    node: NonNull<Node<K, V>>,
    cache: &'m KmemCache<Node<K, V>>,
    _entry: PhantomData<&'m (K, V)>,
}

// SAFETY: a handle gives `&K`/`&V` (`Sync`) and may put the last reference on any thread, which
// drops the entry there (`Send`) and frees to a `Sync` cache.
unsafe impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Send for TsMapRef<'_, K, V> {}
// SAFETY: as above; `&TsMapRef` only gives `&K`/`&V`.
unsafe impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Sync for TsMapRef<'_, K, V> {}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> TsMapRef<'_, K, V> {
    fn node(&self) -> &Node<K, V> {
        // SAFETY: we hold a reference: the node is allocated (Invariant 2).
        unsafe { self.node.as_ref() }
    }

    /// The entry's key.
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert("a".to_string(), 1).unwrap();
    /// assert_eq!(m.get("a").unwrap().key(), "a");
    /// ```
    pub fn key(&self) -> &K {
        // SAFETY: we hold a reference (Invariant 2).
        &unsafe { self.node().entry() }.0
    }

    /// Whether both handles refer to the same entry.
    ///
    /// ```
    /// let m = rcu_kit::map::TypesafeHashMap::new();
    /// m.insert(1, 1).unwrap();
    /// let (a, b) = (m.get(&1).unwrap(), m.get(&1).unwrap());
    /// assert!(a.ptr_eq(&b));
    /// m.insert(1, 2).unwrap();
    /// assert!(!a.ptr_eq(&m.get(&1).unwrap()));
    /// ```
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.node == other.node
    }
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Deref for TsMapRef<'_, K, V> {
    type Target = V;
    fn deref(&self) -> &V {
        // SAFETY: we hold a reference (Invariant 2).
        &unsafe { self.node().entry() }.1
    }
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Clone for TsMapRef<'_, K, V> {
    fn clone(&self) -> Self {
        // Relaxed: our reference keeps the count above 0 (as `Arc::clone`).
        let old = self.node().refs.fetch_add(1, Ordering::Relaxed);
        assert!(
            old < usize::MAX / 2,
            "TypesafeHashMap: reference count overflow"
        );
        TsMapRef {
            node: self.node,
            cache: self.cache,
            _entry: PhantomData,
        }
    }
}

impl<K: Send + Sync + 'static, V: Send + Sync + 'static> Drop for TsMapRef<'_, K, V> {
    fn drop(&mut self) {
        // SAFETY: a node of `cache` on which we hold one reference, given up once here.
        unsafe { put(self.cache, self.node) };
    }
}

impl<K: fmt::Debug + Send + Sync + 'static, V: fmt::Debug + Send + Sync + 'static> fmt::Debug
    for TsMapRef<'_, K, V>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TsMapRef")
            .field(self.key())
            .field(&**self)
            .finish()
    }
}

#[cfg(test)]
mod tests;
