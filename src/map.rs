//! [`RcuHashMap`]: a concurrent hash map whose readers take no lock and write no shared memory.
//!
//! # Design
//!
//! * The map points (an [`Atomic`], owning) at a **table**: a power-of-two array of bucket heads, each
//!   the start of a singly linked chain of immutable **nodes** `(hash, key, value, next)`.
//! * **Readers** enter a read-side critical section ([`rcu_read_lock`]), load the table and walk
//!   one chain with Acquire loads. They never block, never retry and never write shared memory;
//!   the references they get live as long as their guard.
//! * **Writers** serialise on a per-map `Mutex` (readers never touch it). A node is never changed
//!   after it is published: an insert of a new key pushes a node at the head of its chain, an
//!   insert of an existing key publishes a copy with the new value in place of the old node, and
//!   a remove unlinks the node. Replaced and removed nodes are retired with
//!   [`kfree_batch::kfree_rcu`], so a reader still standing on one can finish its walk.
//! * **Resize** is copy-and-publish: when the map grows past 3/4 of its buckets, the writer
//!   builds a table twice as large holding copies of every node, publishes it with one Release
//!   swap, and retires the whole old table (which frees its nodes when dropped) through the
//!   [`Retired`] handle the swap returns, with `kfree_rcu`.
//!   Readers that loaded the old table keep walking it, intact, until their guard drops.
//!
//! Every node reachable from a table's chains is owned by that table; a node leaves the table's
//! ownership only when a writer unlinks it, and is then retired on its own, as a [`Retired`].
//! (Chain links stay raw `AtomicPtr`s: an unlinked node keeps pointing at its successor for the
//! readers standing on it, without owning it, which an owning [`Atomic`] link could not do.)
//!
//! ```
//! use rcu_kit::map::RcuHashMap;
//! use rcu_kit::rcu_read_lock;
//!
//! let map = RcuHashMap::new();
//! map.insert("one", 1);
//! map.insert("two", 2);
//! {
//!     let g = rcu_read_lock();
//!     assert_eq!(map.get("one", &g), Some(&1));
//!     assert_eq!(map.get("three", &g), None);
//! }
//! assert!(map.remove("one"));
//! assert_eq!(map.get_cloned("one"), None);
//! assert_eq!(map.len(), 1);
//! ```

use core::borrow::Borrow;
use core::fmt;
use core::hash::{BuildHasher, Hash};
use core::ptr;
use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

use core::ptr::NonNull;

use rcu_core::{rcu_read_lock, RcuReadGuard};

use crate::ptr::{Atomic, Retired};

/// Smallest table (buckets).
const MIN_BUCKETS: usize = 16;

struct Node<K, V> {
    hash: u64,
    key: K,
    value: V,
    next: AtomicPtr<Node<K, V>>,
}

struct Table<K, V> {
    buckets: Box<[AtomicPtr<Node<K, V>>]>,
}

impl<K, V> Table<K, V> {
    fn new(n: usize) -> Box<Self> {
        debug_assert!(n.is_power_of_two());
        Box::new(Table {
            buckets: (0..n).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
        })
    }

    #[inline]
    fn bucket(&self, hash: u64) -> &AtomicPtr<Node<K, V>> {
        // Truncating the hash is intended: the low bits pick the bucket.
        &self.buckets[(hash as usize) & (self.buckets.len() - 1)]
    }
}

impl<K, V> Drop for Table<K, V> {
    fn drop(&mut self) {
        for head in self.buckets.iter_mut() {
            let mut p = *head.get_mut();
            while !p.is_null() {
                // SAFETY: a table is dropped only when no reader can reach it (map dropped, or a
                // grace period after it was unpublished), and it owns every node on its chains:
                // each came from `Box::into_raw` and is freed here once.
                let mut node = unsafe { Box::from_raw(p) };
                p = *node.next.get_mut();
            }
        }
    }
}

/// Writer-side state, under the map's mutex.
#[derive(Debug)]
struct WriterState {
    len: usize,
}

/// A concurrent hash map with lock-free, wait-free readers (see the [module docs](self)).
///
/// * `get(&key, &guard)` returns a reference valid while the [`RcuReadGuard`] lives.
/// * `insert` / `remove` take a per-map mutex; replaced values are freed after a grace period
///   through `kfree_rcu`, never under a reader's feet.
/// * `K` and `V` must be `Send + Sync + 'static` (values are read from many threads and freed on
///   the batcher's worker) and `Clone` (resize copies nodes).
///
/// ```
/// use rcu_kit::{map::RcuHashMap, rcu_read_lock};
/// let users = RcuHashMap::new();
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let g = rcu_read_lock();
///         if let Some(name) = users.get(&1, &g) {
///             assert_eq!(name, "ann");
///         }
///     });
///     users.insert(1, "ann".to_string());
/// });
/// assert_eq!(users.get_cloned(&1).as_deref(), Some("ann"));
/// ```
pub struct RcuHashMap<K: 'static, V: 'static, S = RandomState> {
    /// Never null.
    table: Atomic<Table<K, V>>,
    writer: Mutex<WriterState>,
    /// Number of entries, readable without the mutex (a snapshot).
    len: AtomicUsize,
    hasher: S,
}

// SAFETY: the map owns its keys and values (moved to the kfree worker when retired: `Send`) and
// hands out `&K`/`&V` to many threads (`Sync`).
unsafe impl<K: Send + Sync + 'static, V: Send + Sync + 'static, S: Send> Send
    for RcuHashMap<K, V, S>
{
}
// SAFETY: as above; all shared mutation goes through atomics and the writer mutex.
unsafe impl<K: Send + Sync + 'static, V: Send + Sync + 'static, S: Sync> Sync
    for RcuHashMap<K, V, S>
{
}

impl<K, V> RcuHashMap<K, V, RandomState>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty map.
    pub fn new() -> Self {
        Self::with_capacity_and_hasher(0, RandomState::new())
    }

    /// An empty map sized for `capacity` entries without a resize.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacity_and_hasher(capacity, RandomState::new())
    }
}

impl<K, V> Default for RcuHashMap<K, V, RandomState>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, S> RcuHashMap<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// An empty map sized for `capacity` entries, hashing with `hasher`.
    pub fn with_capacity_and_hasher(capacity: usize, hasher: S) -> Self {
        let buckets = (capacity.saturating_mul(4) / 3 + 1)
            .max(MIN_BUCKETS)
            .next_power_of_two();
        RcuHashMap {
            table: Atomic::from_box(Some(Table::new(buckets))),
            writer: Mutex::new(WriterState { len: 0 }),
            len: AtomicUsize::new(0),
            hasher,
        }
    }

    #[inline]
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The current table, valid while `_guard` lives.
    #[inline]
    fn table<'g>(&'g self, _guard: &'g RcuReadGuard) -> &'g Table<K, V> {
        // `Atomic::load` is Acquire: pairs with the swap in `resize` that published the table
        // (and, through it, the nodes it was built with).
        match self.table.load(_guard).as_ref() {
            Some(t) => t,
            None => unreachable!("the table pointer is never null"),
        }
    }

    /// The value for `key`, valid while `guard` lives. Lock-free and wait-free.
    #[inline]
    pub fn get<'g, Q>(&'g self, key: &Q, guard: &'g RcuReadGuard) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_key_value(key, guard).map(|(_, v)| v)
    }

    /// The stored key and value for `key`, valid while `guard` lives.
    pub fn get_key_value<'g, Q>(
        &'g self,
        key: &Q,
        guard: &'g RcuReadGuard,
    ) -> Option<(&'g K, &'g V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let table = self.table(guard);
        // Acquire (here and on every `next`) pairs with the Release stores in `insert`/`remove`
        // that linked a node: its fields are initialised before we read them.
        let mut p = table.bucket(hash).load(Ordering::Acquire);
        // SAFETY: every non-null pointer on a chain is a node that is freed only after a grace
        // period that begins after it became unreachable, and `guard` is held for `'g`.
        while let Some(node) = unsafe { p.as_ref() } {
            if node.hash == hash && node.key.borrow() == key {
                return Some((&node.key, &node.value));
            }
            p = node.next.load(Ordering::Acquire);
        }
        None
    }

    /// A clone of the value for `key` (takes and drops a guard itself).
    pub fn get_cloned<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let g = rcu_read_lock();
        self.get(key, &g).cloned()
    }

    /// Whether `key` is present (takes and drops a guard itself).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let g = rcu_read_lock();
        self.get(key, &g).is_some()
    }

    /// Inserts or replaces; returns `true` when the key was new. A replaced entry is retired with
    /// `kfree_rcu` (readers holding it keep a valid reference until their guard drops).
    pub fn insert(&self, key: K, value: V) -> bool {
        let hash = self.hash(&key);
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Writers hold the mutex: the table pointer and every chain link are ours to change.
        // Relaxed loads of them suffice (the mutex orders us after the previous writer).
        let table_ptr = self.table.load_relaxed_by_writer();
        // SAFETY: only writers (serialised by the mutex) unpublish a table, so it is alive; this
        // borrow is last used before `resize` may free the table.
        let table = unsafe { &*table_ptr };
        let head = table.bucket(hash);
        let mut link = head;
        loop {
            let p = link.load(Ordering::Relaxed);
            // SAFETY: nodes on the current table's chains are alive while we hold the mutex.
            let Some(node) = (unsafe { p.as_ref() }) else {
                break;
            };
            if node.hash == hash && node.key == key {
                let new = Box::into_raw(Box::new(Node {
                    hash,
                    key,
                    value,
                    next: AtomicPtr::new(node.next.load(Ordering::Relaxed)),
                }));
                // Release: publishes the new node's fields to readers' Acquire loads.
                link.store(new, Ordering::Release);
                // SAFETY: `p` (non-null: it was `node`) came from `Box::into_raw`, is now
                // unreachable for new readers, and was owned by the table; it is handed over
                // once, as the raw pointer readers may still hold.
                unsafe { Retired::from_unpublished(NonNull::new_unchecked(p)) }.kfree_rcu();
                return false;
            }
            link = &node.next;
        }
        let new = Box::into_raw(Box::new(Node {
            hash,
            key,
            value,
            next: AtomicPtr::new(head.load(Ordering::Relaxed)),
        }));
        // Release: as above.
        head.store(new, Ordering::Release);
        w.len += 1;
        self.len.store(w.len, Ordering::Relaxed);
        let buckets = table.buckets.len();
        if w.len > buckets / 4 * 3 {
            // A pointer, not `table`: resize may free the old table before it returns.
            self.resize(table_ptr, buckets * 2);
        }
        true
    }

    /// Removes `key`; returns whether it was present. The entry is retired with `kfree_rcu`.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `insert`.
        let table = unsafe { &*self.table.load_relaxed_by_writer() };
        let mut link = table.bucket(hash);
        loop {
            let p = link.load(Ordering::Relaxed);
            // SAFETY: as in `insert`.
            let Some(node) = (unsafe { p.as_ref() }) else {
                return false;
            };
            if node.hash == hash && node.key.borrow() == key {
                // Release: the successor was published earlier; Release keeps this store
                // ordered after it for readers that follow the new link (pairs with their
                // Acquire loads).
                link.store(node.next.load(Ordering::Relaxed), Ordering::Release);
                // SAFETY: non-null (it was `node`), from `Box::into_raw`; unlinked above, so
                // unreachable for new readers; owned by the table until now; handed over once.
                unsafe { Retired::from_unpublished(NonNull::new_unchecked(p)) }.kfree_rcu();
                w.len -= 1;
                self.len.store(w.len, Ordering::Relaxed);
                return true;
            }
            link = &node.next;
        }
    }

    /// Copy-and-publish: a table of `buckets` buckets with copies of every node replaces `old`
    /// (the current table), which is retired whole. Called with the writer mutex held.
    ///
    /// `old` is a raw pointer, not a `&Table`: `kfree_rcu` may free the old table before it
    /// returns (with no page to queue it in, it waits for a grace period and frees inline), and a
    /// reference argument would still be live (protected) for the whole call.
    fn resize(&self, old: *const Table<K, V>, buckets: usize) {
        let new = Table::new(buckets);
        // SAFETY: `old` is the current table, alive under the writer mutex until it is retired
        // below; this borrow ends before that.
        let old_table = unsafe { &*old };
        for head in old_table.buckets.iter() {
            let mut p = head.load(Ordering::Relaxed);
            // SAFETY: nodes of the current table, alive under the writer mutex.
            while let Some(node) = unsafe { p.as_ref() } {
                let slot = new.bucket(node.hash);
                let copy = Box::new(Node {
                    hash: node.hash,
                    key: node.key.clone(),
                    value: node.value.clone(),
                    next: AtomicPtr::new(slot.load(Ordering::Relaxed)),
                });
                // The new table is private until published below: Relaxed is enough.
                slot.store(Box::into_raw(copy), Ordering::Relaxed);
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
        // Freed after a grace period; its drop then frees the nodes it owns.
        prev.kfree_rcu();
    }

    /// Number of entries (a snapshot).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the map is empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets of the current table (a snapshot).
    pub fn buckets(&self) -> usize {
        let g = rcu_read_lock();
        self.table(&g).buckets.len()
    }

    /// Visits every entry of the table current at the call, under `guard`. Entries inserted or
    /// removed during the walk may or may not be seen; none is seen twice unless it is replaced
    /// during the walk.
    pub fn iter<'g>(&'g self, guard: &'g RcuReadGuard) -> Iter<'g, K, V> {
        Iter {
            table: self.table(guard),
            bucket: 0,
            node: ptr::null(),
        }
    }
}

/// Iterator over an [`RcuHashMap`], from [`RcuHashMap::iter`].
///
/// ```
/// let m = rcu_kit::map::RcuHashMap::new();
/// m.insert(1, 10);
/// m.insert(2, 20);
/// let g = rcu_kit::rcu_read_lock();
/// assert_eq!(m.iter(&g).map(|(_, v)| v).sum::<i32>(), 30);
/// ```
pub struct Iter<'g, K, V> {
    table: &'g Table<K, V>,
    bucket: usize,
    node: *const Node<K, V>,
}

impl<'g, K, V> Iterator for Iter<'g, K, V> {
    type Item = (&'g K, &'g V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // SAFETY: nodes reached from a table loaded under the guard stay valid for `'g`
            // (see `get_key_value`).
            if let Some(node) = unsafe { self.node.as_ref() } {
                // Acquire: as in `get_key_value`.
                self.node = node.next.load(Ordering::Acquire);
                return Some((&node.key, &node.value));
            }
            let head = self.table.buckets.get(self.bucket)?;
            self.bucket += 1;
            self.node = head.load(Ordering::Acquire);
        }
    }
}

impl<K, V> fmt::Debug for Iter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl<K, V, S> fmt::Debug for RcuHashMap<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    V: Clone + Send + Sync + fmt::Debug + 'static,
    S: BuildHasher,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = rcu_read_lock();
        f.debug_map().entries(self.iter(&g)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Counted(u64, Arc<AtomicUsize>);
    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.1.fetch_add(1, Ordering::Relaxed);
            Counted(self.0, self.1.clone())
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn basic_ops_and_debug() {
        let m = RcuHashMap::with_capacity(4);
        assert!(m.is_empty());
        assert!(m.insert(1u32, "a".to_string()));
        assert!(!m.insert(1, "b".to_string()));
        assert_eq!(m.get_cloned(&1).as_deref(), Some("b"));
        assert!(m.contains_key(&1));
        assert_eq!(m.len(), 1);
        assert!(format!("{m:?}").contains("\"b\""));
        assert!(m.remove(&1));
        assert!(!m.remove(&1));
        assert!(m.is_empty());
    }

    #[test]
    fn grows_and_iterates() {
        let m = RcuHashMap::new();
        for i in 0..1000u64 {
            m.insert(i, i * 2);
        }
        assert!(m.buckets() >= 1024);
        let g = rcu_read_lock();
        let mut seen: Vec<_> = m.iter(&g).map(|(k, v)| (*k, *v)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).map(|i| (i, i * 2)).collect::<Vec<_>>());
    }

    #[test]
    fn no_leak() {
        let live = Arc::new(AtomicUsize::new(0));
        let mk = |v| {
            live.fetch_add(1, Ordering::Relaxed);
            Counted(v, live.clone())
        };
        {
            let m = RcuHashMap::new();
            for i in 0..500u64 {
                m.insert(i, mk(i));
            }
            for i in 0..500u64 {
                m.insert(i, mk(i + 1)); // replace: retires the old node
            }
            for i in 0..250u64 {
                m.remove(&i);
            }
            assert_eq!(m.len(), 250);
        }
        kfree_batch::kvfree_rcu_barrier();
        assert_eq!(live.load(Ordering::Relaxed), 0, "every value dropped");
    }
}
