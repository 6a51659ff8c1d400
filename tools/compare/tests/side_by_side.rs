//! The baselines' side of the guide's section 6 (docs/guide.md): the same structures written on
//! arc-swap and crossbeam-epoch, compiled and run here because the baselines are dependencies of
//! this package only. Keep each body identical to its block in the guide (the guide counts their
//! unsafe blocks and lines).
#![allow(clippy::undocumented_unsafe_blocks, missing_docs)]

#[test]
fn config_holder_arc_swap() {
    use arc_swap::ArcSwap;
    use std::sync::Arc;
    struct Config {
        version: u64,
    }

    let current = ArcSwap::from_pointee(Config { version: 0 });
    assert_eq!(current.load().version, 0);
    current.rcu(|c| {
        Arc::new(Config {
            version: c.version + 1,
        })
    });
    assert_eq!(current.load().version, 1);
}

#[test]
fn config_holder_crossbeam_epoch() {
    use crossbeam_epoch::{self as epoch, Atomic, Owned};
    use std::sync::atomic::Ordering::{AcqRel, Acquire};
    struct Config {
        version: u64,
    }

    let current = Atomic::new(Config { version: 0 });
    {
        let g = epoch::pin();
        // SAFETY (guide): loaded under `g`; retired values are destroyed only after it unpins.
        assert_eq!(unsafe { current.load(Acquire, &g).deref() }.version, 0);
    }
    let g = epoch::pin();
    let old = current.swap(Owned::new(Config { version: 1 }), AcqRel, &g);
    // SAFETY (guide): unlinked by the swap, retired once.
    unsafe { g.defer_destroy(old) };
    drop(g);
    // SAFETY (guide): no reader is left; the last value is freed here.
    drop(unsafe { current.into_owned() });
}

#[test]
fn treiber_stack_crossbeam_epoch() {
    use crossbeam_epoch::{self as epoch, Atomic, Owned};
    use std::mem::ManuallyDrop;
    use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

    struct Node<T> {
        data: ManuallyDrop<T>,
        next: Atomic<Node<T>>,
    }
    struct Stack<T> {
        head: Atomic<Node<T>>,
    }

    impl<T> Stack<T> {
        fn push(&self, t: T) {
            let mut n = Owned::new(Node {
                data: ManuallyDrop::new(t),
                next: Atomic::null(),
            });
            let g = epoch::pin();
            loop {
                let head = self.head.load(Relaxed, &g);
                n.next.store(head, Relaxed);
                match self.head.compare_exchange(head, n, Release, Relaxed, &g) {
                    Ok(_) => break,
                    Err(e) => n = e.new,
                }
            }
        }
        fn pop(&self) -> Option<T> {
            let g = epoch::pin();
            loop {
                let head = self.head.load(Acquire, &g);
                // SAFETY (guide): loaded under `g`.
                let h = unsafe { head.as_ref() }?;
                let next = h.next.load(Relaxed, &g);
                if self
                    .head
                    .compare_exchange(head, next, Relaxed, Relaxed, &g)
                    .is_ok()
                {
                    // SAFETY (guide): unlinked by the CAS; retired once.
                    unsafe { g.defer_destroy(head) };
                    // SAFETY (guide): the CAS winner owns `data`; the node's drop never drops it.
                    return Some(ManuallyDrop::into_inner(unsafe { std::ptr::read(&h.data) }));
                }
            }
        }
    }
    impl<T> Drop for Stack<T> {
        fn drop(&mut self) {
            while self.pop().is_some() {}
        }
    }

    let s = Stack {
        head: Atomic::null(),
    };
    s.push(String::from("a"));
    assert_eq!(s.pop().as_deref(), Some("a"));
}
