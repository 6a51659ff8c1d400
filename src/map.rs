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
//! * **Re-entrancy.** Writers run user code under the mutex (`Eq`, and `Clone` in a resize);
//!   one that calls a writer method of the same map on the same thread would relock it and
//!   deadlock, so the map records the writer thread and panics instead; and
//!   [`Retired::synchronize`] run by such code panics (a reader may wait for the mutex inside its
//!   critical section, so the grace period could never end). Replaced, removed and resized-away
//!   memory is retired only after the mutex is released: the batcher may free ready objects
//!   inline in that retire (running their `Drop`, which may use the map) or wait for a grace
//!   period there (which a reader blocked on the mutex would hold back forever).
//!
//! Every node reachable from a table's chains is owned by that table; a node leaves the table's
//! ownership only when a writer unlinks it, and is then retired on its own, as a [`Retired`].
//! Chain links are the crate's non-owning RCU links (an unlinked node keeps pointing at its
//! successor for the readers standing on it, without owning it, which an owning [`Atomic`]
//! could not do); readers load them as guard-bound [`Shared`] pointers, the same
//! as the table pointer, so the read path has no `unsafe` of its own.
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

use rcu_core::{rcu_read_lock, RcuReadGuard};

use crate::link::Link;
pub use crate::map_typesafe::{InsertError, TsMapRef, TypesafeHashMap};
use crate::primitive::sync::atomic::{AtomicUsize, Ordering};
use crate::ptr::{Atomic, Retired, Shared};
use crate::writer_lock::{WriterGuard, WriterLock};

/// Smallest table (buckets).
const MIN_BUCKETS: usize = 16;

struct Node<K, V> {
    hash: u64,
    key: K,
    value: V,
    next: Link<Node<K, V>>,
}

struct Table<K, V> {
    buckets: Box<[Link<Node<K, V>>]>,
}

impl<K, V> Table<K, V> {
    fn new(n: usize) -> Box<Self> {
        debug_assert!(n.is_power_of_two());
        Box::new(Table {
            buckets: (0..n).map(|_| Link::null()).collect(),
        })
    }
}

impl<K, V> Table<K, V> {
    #[inline]
    fn bucket(&self, hash: u64) -> &Link<Node<K, V>> {
        // Truncating the hash is intended: the low bits pick the bucket.
        &self.buckets[(hash as usize) & (self.buckets.len() - 1)]
    }
}

impl<K, V> Drop for Table<K, V> {
    fn drop(&mut self) {
        for head in self.buckets.iter_mut() {
            // SAFETY: a table is dropped only when no reader can reach it (map dropped, or a
            // grace period after it was unpublished), and it owns every node on its chains.
            let mut next = unsafe { head.take_for_drop() };
            while let Some(mut node) = next {
                // SAFETY: as above: the rest of the chain.
                next = unsafe { node.next.take_for_drop() };
            }
        }
    }
}

/// Writer-side state, under the map's mutex.
#[derive(Debug)]
struct WriterState {
    len: usize,
}

/// The held writer mutex, with the re-entrancy marker cleared before the unlock.
type MapWriter<'a> = WriterGuard<'a, WriterState>;

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
    writer: WriterLock<WriterState>,
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

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<K, V> RcuHashMap<K, V, RandomState>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty map.
    ///
    /// ```
    /// let m: rcu_kit::map::RcuHashMap<u32, String> = rcu_kit::map::RcuHashMap::new();
    /// assert!(m.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_capacity_and_hasher(0, RandomState::new())
    }

    /// An empty map sized for `capacity` entries without a resize.
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::with_capacity(1000);
    /// let buckets = m.buckets();
    /// for i in 0..1000u32 {
    ///     m.insert(i, i);
    /// }
    /// assert_eq!(m.buckets(), buckets); // no resize
    /// ```
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

#[cfg_attr(rcu_doc_examples, allow(rustdoc::missing_doc_code_examples))] // no page of its own
impl<K, V, S> RcuHashMap<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// An empty map sized for `capacity` entries, hashing with `hasher`.
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// let m = rcu_kit::map::RcuHashMap::with_capacity_and_hasher(8, RandomState::new());
    /// m.insert("k", 1);
    /// assert_eq!(m.get_cloned("k"), Some(1));
    /// ```
    pub fn with_capacity_and_hasher(capacity: usize, hasher: S) -> Self {
        let buckets = (capacity.saturating_mul(4) / 3 + 1)
            .max(MIN_BUCKETS)
            .next_power_of_two();
        RcuHashMap {
            table: Atomic::from_box(Some(Table::new(buckets))),
            writer: WriterLock::new(WriterState { len: 0 }),
            len: AtomicUsize::new(0),
            hasher,
        }
    }

    /// Takes the writer mutex.
    ///
    /// # Panics
    /// When the calling thread already holds it (user code run by a writer calling back into the
    /// map): that would deadlock.
    #[track_caller]
    fn lock_writer(&self) -> MapWriter<'_> {
        self.writer.lock(
            "RcuHashMap: a writer method was called by the thread that already holds the map's \
             writer lock (from a key's or value's Eq or Clone run by a writer): it would deadlock",
        )
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
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// m.insert(String::from("a"), 1);
    /// let g = rcu_kit::rcu_read_lock();
    /// assert_eq!(m.get("a", &g), Some(&1)); // a `&str` looks up a `String` key
    /// assert_eq!(m.get("b", &g), None);
    /// ```
    #[inline]
    pub fn get<'g, Q>(&'g self, key: &Q, guard: &'g RcuReadGuard) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_key_value(key, guard).map(|(_, v)| v)
    }

    /// The stored key and value for `key`, valid while `guard` lives.
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// m.insert(7u64, 'x');
    /// let g = rcu_kit::rcu_read_lock();
    /// assert_eq!(m.get_key_value(&7, &g), Some((&7, &'x')));
    /// ```
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
        // Link loads are Acquire (here and on every `next`): they pair with the Release stores
        // in `insert`/`remove` that linked a node, so its fields are initialised before we read
        // them; the `Shared` they give is valid while `guard` lives.
        let mut cur = table.bucket(hash).load(guard);
        while let Some(node) = cur.as_ref() {
            if node.hash == hash && node.key.borrow() == key {
                return Some((&node.key, &node.value));
            }
            cur = node.next.load(guard);
        }
        None
    }

    /// A clone of the value for `key` (takes and drops a guard itself).
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// m.insert(1, vec![1, 2]);
    /// assert_eq!(m.get_cloned(&1), Some(vec![1, 2]));
    /// ```
    pub fn get_cloned<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let g = rcu_read_lock();
        self.get(key, &g).cloned()
    }

    /// Whether `key` is present (takes and drops a guard itself).
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// m.insert(1, ());
    /// assert!(m.contains_key(&1) && !m.contains_key(&2));
    /// ```
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
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// assert!(m.insert("k", 1)); // new
    /// let g = rcu_kit::rcu_read_lock();
    /// let old = m.get("k", &g).unwrap();
    /// assert!(!m.insert("k", 2)); // replaced: the old entry is retired with kfree_rcu
    /// assert_eq!(*old, 1); // still valid under `g`
    /// assert_eq!(m.get("k", &g), Some(&2));
    /// ```
    pub fn insert(&self, key: K, value: V) -> bool {
        let hash = self.hash(&key);
        let mut w = self.lock_writer();
        // Writers hold the mutex: the table pointer and every chain link are ours to change.
        // Relaxed loads of them suffice (the mutex orders us after the previous writer).
        let table_ptr = self.table.load_relaxed_by_writer();
        // SAFETY: only writers (serialised by the mutex) unpublish a table, so it is alive; this
        // borrow is last used before `resize` may free the table.
        let table = unsafe { &*table_ptr };
        let head = table.bucket(hash);
        let mut link = head;
        // SAFETY: we hold the writer mutex, and use a node only before we unlink it.
        while let Some(node) = unsafe { link.load_by_writer() } {
            if node.hash == hash && node.key == key {
                let new = Box::new(Node {
                    hash,
                    key,
                    value,
                    // SAFETY: writer mutex held; `next` of the node published below.
                    next: unsafe { Link::copy_by_writer(&node.next) },
                });
                // SAFETY: writer mutex held; `link` points at `node`, owned by the table;
                // `new.next` is `node`'s successor. Release publishes `new` (`Link` docs).
                let (_, old) = unsafe { link.replace(node, new) };
                drop(w); // retire outside the lock (module docs, re-entrancy)
                old.kfree_rcu();
                return false;
            }
            link = &node.next;
        }
        let new = Box::new(Node {
            hash,
            key,
            value,
            // SAFETY: writer mutex held; `next` of the node published below.
            next: unsafe { Link::copy_by_writer(head) },
        });
        // SAFETY: writer mutex held; the old first node is `new`'s successor, still reachable.
        unsafe { head.publish(new) };
        w.len += 1;
        self.len.store(w.len, Ordering::Relaxed);
        let buckets = table.buckets.len();
        if w.len > buckets / 4 * 3 {
            let old = self.resize(table_ptr, buckets * 2);
            drop(w); // retire outside the lock (module docs, re-entrancy)
            old.kfree_rcu();
        }
        true
    }

    /// Removes `key`; returns whether it was present. The entry is retired with `kfree_rcu`.
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// m.insert(1, "one");
    /// assert!(m.remove(&1));
    /// assert!(!m.remove(&1));
    /// rcu_kit::kvfree_rcu_barrier(); // the removed entry is freed by now
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
        let mut link = table.bucket(hash);
        // SAFETY: as in `insert`.
        while let Some(node) = unsafe { link.load_by_writer() } {
            if node.hash == hash && node.key.borrow() == key {
                // SAFETY: writer mutex held; `link` points at `node`, owned by the table, and
                // `node.next` is its successor. The store is Release (`Link` docs).
                let old = unsafe { link.unlink(node, &node.next) };
                w.len -= 1;
                self.len.store(w.len, Ordering::Relaxed);
                drop(w); // retire outside the lock (module docs, re-entrancy)
                old.kfree_rcu();
                return true;
            }
            link = &node.next;
        }
        false
    }

    /// Copy-and-publish: a table of `buckets` buckets with copies of every node replaces `old`
    /// (the current table), which comes back to be retired whole once the caller has released
    /// the writer mutex. Called with the writer mutex held.
    ///
    /// `old` is a raw pointer, not a `&Table`: the caller's `kfree_rcu` may free the old table
    /// before it returns (with no page to queue it in, it waits for a grace period and frees
    /// inline), and a reference argument would be live for the caller's whole borrow.
    #[must_use = "the old table is handed back to be retired"]
    fn resize(&self, old: *const Table<K, V>, buckets: usize) -> Retired<Table<K, V>> {
        let new = Table::new(buckets);
        // SAFETY: `old` is the current table, alive under the writer mutex until it is retired
        // below; this borrow ends before that.
        let old_table = unsafe { &*old };
        for head in old_table.buckets.iter() {
            // SAFETY: nodes of the current table, alive under the writer mutex (unlinked by
            // nobody while we hold it).
            let mut cur = unsafe { head.load_by_writer() };
            while let Some(node) = cur {
                let slot = new.bucket(node.hash);
                let copy = Box::new(Node {
                    hash: node.hash,
                    key: node.key.clone(),
                    value: node.value.clone(),
                    // SAFETY: writer mutex held; `next` of the copy published below.
                    next: unsafe { Link::copy_by_writer(slot) },
                });
                // SAFETY: the new table is private to this writer until published below; the
                // previous first node becomes the copy's successor.
                unsafe { slot.publish(copy) };
                // SAFETY: as above.
                cur = unsafe { node.next.load_by_writer() };
            }
        }
        // `Atomic::swap` (AcqRel): its Release publishes the new table and every node built above
        // (pairs with the Acquire load in `table`).
        let prev = self
            .table
            .swap(Some(new))
            .expect("the table pointer is never null");
        debug_assert!(ptr::eq(prev.as_ptr(), old));
        // Freed after a grace period (by the caller's retire); its drop then frees the nodes it
        // owns.
        prev
    }

    /// Number of entries (a snapshot).
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// m.insert(1, 1);
    /// m.insert(2, 2);
    /// assert_eq!(m.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the map is empty (a snapshot).
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::<u8, u8>::default();
    /// assert!(m.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets of the current table (a snapshot).
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// assert!(m.buckets().is_power_of_two());
    /// for i in 0..100 {
    ///     m.insert(i, i);
    /// }
    /// assert!(m.buckets() >= 128); // grown past 3/4 full
    /// ```
    pub fn buckets(&self) -> usize {
        let g = rcu_read_lock();
        self.table(&g).buckets.len()
    }

    /// Visits every entry of the table current at the call, under `guard`. Entries inserted or
    /// removed during the walk may or may not be seen; none is seen twice unless it is replaced
    /// during the walk.
    ///
    /// ```
    /// let m = rcu_kit::map::RcuHashMap::new();
    /// m.insert("a", 1);
    /// m.insert("b", 2);
    /// let g = rcu_kit::rcu_read_lock();
    /// let mut keys: Vec<_> = m.iter(&g).map(|(k, _)| *k).collect();
    /// keys.sort_unstable();
    /// assert_eq!(keys, ["a", "b"]);
    /// ```
    pub fn iter<'g>(&'g self, guard: &'g RcuReadGuard) -> Iter<'g, K, V> {
        Iter {
            table: self.table(guard),
            guard,
            bucket: 0,
            node: Shared::null(),
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
    guard: &'g RcuReadGuard,
    bucket: usize,
    node: Shared<'g, Node<K, V>>,
}

impl<'g, K, V> Iterator for Iter<'g, K, V> {
    type Item = (&'g K, &'g V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Nodes reached from a table loaded under the guard stay valid for `'g`; link loads
            // are Acquire (see `get_key_value`).
            if let Some(node) = self.node.as_ref() {
                self.node = node.next.load(self.guard);
                return Some((&node.key, &node.value));
            }
            let head = self.table.buckets.get(self.bucket)?;
            self.bucket += 1;
            self.node = head.load(self.guard);
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

    /// A key or value whose `Clone` (run by a resize), `Eq` or `Drop` calls back into the map
    /// from inside a writer would relock the writer mutex on the same thread.
    static REENTRANT: std::sync::OnceLock<RcuHashMap<u64, Reenter>> = std::sync::OnceLock::new();
    static REENTER_ON_CLONE: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    struct Reenter(u64);
    impl Clone for Reenter {
        fn clone(&self) -> Self {
            if REENTER_ON_CLONE.swap(false, Ordering::SeqCst) {
                REENTRANT.get().unwrap().insert(u64::MAX, Reenter(0));
            }
            Reenter(self.0)
        }
    }
    impl Drop for Reenter {
        fn drop(&mut self) {
            // Runs wherever the batcher frees it: on the worker, or inline in a later retire
            // (inside an `insert`, say).
            if self.0 % 2 == 1 {
                REENTRANT.get().unwrap().remove(&(u64::MAX - 1));
            }
        }
    }

    #[test]
    fn a_clone_calling_back_into_the_map_panics_instead_of_deadlocking() {
        if test_support::child_case().as_deref() == Some("clone") {
            let m = REENTRANT.get_or_init(RcuHashMap::new);
            REENTER_ON_CLONE.store(true, Ordering::SeqCst);
            let r = std::panic::catch_unwind(|| {
                for i in 0..100 {
                    m.insert(i * 2, Reenter(i * 2)); // the first resize clones
                }
            });
            let msg = test_support::panic_text(&*r.expect_err("re-entrant writer"));
            assert!(msg.contains("already holds the map's writer lock"), "{msg}");
            // The map stays usable.
            m.insert(1_000_000, Reenter(0));
            assert!(m.contains_key(&1_000_000));
            return;
        }
        if test_support::child_case().is_some() {
            return;
        }
        let out = test_support::run_child(
            "map::tests::a_clone_calling_back_into_the_map_panics_instead_of_deadlocking",
            "clone",
            &[],
            std::time::Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", test_support::stderr(&out));
    }

    /// A value whose `Clone` (run by a resize, under the writer mutex) waits for a grace period
    /// while a reader waits for that mutex inside its critical section.
    static SYNC_ON_CLONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static IN_READER: std::sync::Barrier = std::sync::Barrier::new(2);
    static OLD: Atomic<u64> = Atomic::null();

    struct SyncOnClone;
    impl Clone for SyncOnClone {
        fn clone(&self) -> Self {
            if SYNC_ON_CLONE.swap(false, Ordering::SeqCst) {
                IN_READER.wait();
                OLD.store(Some(Box::new(1)));
                drop(OLD.swap(None).unwrap().synchronize());
            }
            SyncOnClone
        }
    }

    #[test]
    fn synchronize_under_the_map_writer_lock_panics_instead_of_deadlocking() {
        if test_support::child_case().as_deref() == Some("sync-under-writer") {
            let m = RcuHashMap::new();
            for i in 0..12u64 {
                m.insert(i, SyncOnClone);
            }
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _g = rcu_read_lock();
                    IN_READER.wait();
                    m.insert(1_000, SyncOnClone); // waits for the mutex inside the reader
                });
                SYNC_ON_CLONE.store(true, Ordering::SeqCst);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    m.insert(12, SyncOnClone); // 13 > 12: resize, clone
                }));
                let msg = test_support::panic_text(
                    &*r.expect_err("synchronize under the map's writer lock"),
                );
                assert!(
                    msg.contains("holds an RcuList or RcuHashMap writer lock"),
                    "{msg}"
                );
            });
            assert!(m.contains_key(&1_000));
            kfree_batch::kvfree_rcu_barrier();
            return;
        }
        if test_support::child_case().is_some() {
            return;
        }
        let out = test_support::run_child(
            "map::tests::synchronize_under_the_map_writer_lock_panics_instead_of_deadlocking",
            "sync-under-writer",
            &[],
            std::time::Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", test_support::stderr(&out));
    }

    /// Values retired by `insert` and `remove` may be freed inline by a later retire; one whose
    /// `Drop` uses the map must not find the writer mutex held by its own thread.
    #[test]
    fn a_value_whose_drop_uses_the_map_can_be_replaced_and_removed() {
        if test_support::child_case().as_deref() == Some("drop") {
            let m = REENTRANT.get_or_init(RcuHashMap::new);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            for i in 0..20_000u64 {
                if std::time::Instant::now() > deadline {
                    break;
                }
                m.insert(i % 64, Reenter(i));
                if i % 3 == 0 {
                    m.remove(&((i + 7) % 64));
                }
                if i % 256 == 0 {
                    rcu_core::synchronize_rcu(); // let earlier blocks become ready
                }
            }
            kfree_batch::kvfree_rcu_barrier();
            return;
        }
        if test_support::child_case().is_some() {
            return;
        }
        let out = test_support::run_child(
            "map::tests::a_value_whose_drop_uses_the_map_can_be_replaced_and_removed",
            "drop",
            &[],
            std::time::Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", test_support::stderr(&out));
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
