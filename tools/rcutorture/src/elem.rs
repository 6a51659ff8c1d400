//! The elements readers look at, and small helpers (fallible boxing, the random generator).
//!
//! # Implementation
//!
//! An [`Elem`] lives either in a `Box` (every mode but typesafe) or in a `SLAB_TYPESAFE_BY_RCU`
//! cache. All its fields are atomics, so a reader racing with a (wrong) destruction reads stale
//! or poisoned values, never torn ones.
//!
//! | `magic`       | meaning                                                              |
//! |---------------|----------------------------------------------------------------------|
//! | `MAGIC_BOX`   | boxed element, identity alive                                        |
//! | `POISON_BOX`  | boxed element destroyed early (broken build), memory not yet freed   |
//! | `MAGIC_SLAB`  | typesafe cache object (set by the ctor, kept across reuse)           |
//! | `POISON_SLAB` | typesafe object dropped by the cache (its slab is being discarded)   |
//!
//! A boxed element's destructor ([`Drop`]) kills its identity in the table and counts the free,
//! so it does not matter which path frees it (a callback, the kfree batcher, the writer).

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};

use rcu_kit::{impl_has_rcu_head, RcuHead};

use super::table::table;

/// Boxed element, identity alive.
pub(crate) const MAGIC_BOX: u64 = 0x7263_7574_6f72_7421;
/// Boxed element destroyed before its grace period (broken build).
pub(crate) const POISON_BOX: u64 = 0xdead_b0c5_dead_b0c5;
/// Object of the typesafe cache.
pub(crate) const MAGIC_SLAB: u64 = 0x7263_7574_736c_6162;
/// Object of the typesafe cache whose slab is being discarded.
pub(crate) const POISON_SLAB: u64 = 0xdead_51ab_dead_51ab;

/// Boxed elements allocated.
pub(crate) static BOX_ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Boxed elements freed (destructor ran).
pub(crate) static BOX_FREES: AtomicU64 = AtomicU64::new(0);
/// Destructors that found an element in an unknown state (memory corrupted).
pub(crate) static BAD_DROPS: AtomicU64 = AtomicU64::new(0);

/// What readers read. See the module docs.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Elem {
    /// The identity (table slot + generation).
    tag: AtomicU64,
    /// `mix(tag)` for boxed elements (immutable while reachable); checks publication order.
    check: AtomicU64,
    /// One of the `MAGIC_*` / `POISON_*` values.
    magic: AtomicU64,
    /// For `kfree_rcu_head`; readers never look at it.
    head: RcuHead,
}

impl_has_rcu_head!(Elem, head);

/// A 64-bit mixer (splitmix64's finaliser).
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `Box::new` that reports allocation failure instead of aborting, so that runs under
/// `RLIMIT_AS` can count failures and go on. On failure the value comes back unmoved (`Err`):
/// the caller decides whether it is dropped (an element's destructor ends its identity).
pub(crate) fn try_box<T>(value: T) -> Result<Box<T>, T> {
    let layout = Layout::new::<T>();
    assert!(
        layout.size() > 0,
        "try_box: zero-sized types need no allocation"
    );
    // SAFETY: the layout has a non-zero size (checked above).
    let p = unsafe { std::alloc::alloc(layout) }.cast::<T>();
    if p.is_null() {
        return Err(value);
    }
    // SAFETY: `p` is a fresh allocation from the global allocator with `T`'s layout; writing the
    // value and handing ownership to a `Box` is what `Box::new` does.
    unsafe {
        p.write(value);
        Ok(Box::from_raw(p))
    }
}

impl Elem {
    /// The typesafe cache's ctor: a valid object with no identity.
    pub(crate) fn slab_ctor() -> Elem {
        Elem {
            tag: AtomicU64::new(0),
            check: AtomicU64::new(0),
            magic: AtomicU64::new(MAGIC_SLAB),
            head: RcuHead::new(),
        }
    }

    /// A boxed element carrying identity `tag`, or `None` when memory cannot be had (the
    /// identity is then left alive for the caller to end: nothing was allocated, so no element
    /// was destroyed).
    pub(crate) fn new_box(tag: u64) -> Option<Box<Elem>> {
        let elem = Elem {
            tag: AtomicU64::new(tag),
            check: AtomicU64::new(mix(tag)),
            magic: AtomicU64::new(MAGIC_BOX),
            head: RcuHead::new(),
        };
        match try_box(elem) {
            Ok(b) => {
                BOX_ALLOCS.fetch_add(1, Ordering::Relaxed);
                Some(b)
            }
            Err(unallocated) => {
                // Its destructor would end the identity and count a free of a box that never
                // existed; the caller ends the identity once (`make_elem`). Atomics and an
                // unlinked head own nothing, so forgetting it leaks nothing.
                core::mem::forget(unallocated);
                None
            }
        }
    }

    /// Gives a (possibly reused) typesafe object the identity `tag` before it is published.
    pub(crate) fn set_identity(&self, tag: u64) {
        self.check.store(mix(tag), Ordering::Relaxed);
        // Release pairs with the Acquire in `tag`: a reader that still holds this object from an
        // earlier publication (typesafe reuse) and sees the new tag also sees the table word
        // `create` stored for it; otherwise it could read the slot's previous generation and
        // report a false "recycled".
        self.tag.store(tag, Ordering::Release);
    }

    /// The identity.
    #[inline]
    pub(crate) fn tag(&self) -> u64 {
        // Acquire: see `set_identity`.
        self.tag.load(Ordering::Acquire)
    }

    /// The integrity word (`mix(tag)` for boxed elements).
    #[inline]
    pub(crate) fn check(&self) -> u64 {
        self.check.load(Ordering::Relaxed)
    }

    /// The magic word.
    #[inline]
    pub(crate) fn magic(&self) -> u64 {
        self.magic.load(Ordering::Relaxed)
    }

    /// Broken build only: destroys a boxed element now (kills its identity, poisons it) while
    /// its memory stays allocated until the normal, grace-period-deferred free.
    pub(crate) fn destroy_early(&self) {
        if self.magic() == MAGIC_BOX {
            table().kill(self.tag());
            self.magic.store(POISON_BOX, Ordering::Relaxed);
        }
    }
}

impl Drop for Elem {
    fn drop(&mut self) {
        match self.magic() {
            MAGIC_BOX => {
                table().kill(self.tag());
                self.check.store(!self.check(), Ordering::Relaxed);
                self.magic.store(POISON_BOX, Ordering::Relaxed);
                BOX_FREES.fetch_add(1, Ordering::Relaxed);
            }
            POISON_BOX => {
                BOX_FREES.fetch_add(1, Ordering::Relaxed);
            }
            MAGIC_SLAB => self.magic.store(POISON_SLAB, Ordering::Relaxed),
            _ => {
                BAD_DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// xorshift64*: cheap, good enough for scheduling choices.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` of `seed`.
    pub(crate) fn new(seed: u64, stream: u64) -> Rng {
        Rng(mix(seed ^ mix(stream.wrapping_add(0x9e37_79b9_7f4a_7c15))) | 1)
    }

    /// The next value.
    #[inline]
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next() >> 32) * u128::from(n)) >> 32) as u64
    }
}
