//! Loom model of a per-thread front channel (`chan.rs`) against a collector: the owner puts
//! objects into its open block inside read-side critical sections — appending, or replacing the
//! ready objects of a recycled block and freeing those after the section — or detaches the block
//! itself, while a collector swaps it out, waits for a grace period and frees what it holds (run
//! with `RUSTFLAGS="--cfg rcu_loom"`, `LOOM_MAX_PREEMPTIONS=2`, `--release`).
//!
//! Every "free" poisons the object's loom cell after checking it was not poisoned already, and
//! counts it: an object lost (a put the collector did not see), freed twice (a replaced object
//! the collector also frees), or freed while a reader may still read it (a race on the cell that
//! loom reports) fails the model.
#![cfg(rcu_loom)]

mod common_loom;

use common_loom::{check_pages, collect_slots, obj, spawn_reader, HeapPages, Obj};
use kfree_batch::raw::{stamp_stolen, Batch, Batcher, FrontChan, Processed, Put};
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_core::raw::Domain;
use rcu_core::Mode;

/// Poisons one object (the write loom checks against readers) after checking it was not freed
/// before, and counts it in the `AtomicUsize` that is the channel's context.
fn poison_one(p: *mut u8, ctx: *const ()) {
    // SAFETY: objects stay allocated until the end of the model.
    let o = unsafe { &*(p as *const Obj) };
    // SAFETY: loom checks these accesses against every other access to the cell.
    o.payload.with_mut(|v| unsafe {
        assert_ne!(*v, u64::MAX, "object freed twice");
        *v = u64::MAX;
    });
    // SAFETY: the context is the model's counter, alive until the model ends.
    unsafe { &*(ctx as *const AtomicUsize) }.fetch_add(1, Ordering::Relaxed);
}

/// The channel's free function (blocks freed by a collector or from a slot).
unsafe fn poison(ctx: *const (), objs: &[*mut u8]) {
    for &p in objs {
        poison_one(p, ctx);
    }
}

fn no_clock() -> u64 {
    0
}

type B = Batcher<'static, HeapPages>;

fn setup(pages: usize) -> (&'static Domain, Arc<B>, Arc<AtomicUsize>, Arc<FrontChan>) {
    let dom: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
    let b = Arc::new(Batcher::new(
        1,
        1 << 30,
        pages,
        dom,
        HeapPages::default(),
        no_clock,
    ));
    let freed = Arc::new(AtomicUsize::new(0));
    let c = Arc::new(FrontChan::new());
    c.set_key(poison, Arc::as_ptr(&freed).cast());
    (dom, b, freed, c)
}

/// What a collector pass does with fronts: steal, stamp after the swaps, wait, free.
fn collect_front(b: &B, c: &FrontChan) -> usize {
    let mut stolen = Batch::new();
    c.steal(&mut stolen, true, 0, 0);
    let mut out = Batch::new();
    let mut res = Processed::default();
    if let Some(s) = stamp_stolen(b, stolen, &mut out, 0) {
        b.domain().wait_for(s, false);
    }
    b.free_all(&mut out, &mut res);
    res.objects
}

fn free_objs(objs: &[usize]) {
    for &o in objs {
        // SAFETY: each object is dropped once, after the model's threads are done.
        unsafe { drop(Box::from_raw(o as *mut Obj)) };
    }
}

/// A reader holds the object the owner unpublishes and appends to its open block, then the
/// owner hands the block over (as when it fills up) while a collector steals it: the object is
/// freed exactly once, never inside the reader's section, whichever side gets the block — and
/// if the collector took the block before the put, the put sees no block.
#[test]
fn append_and_hand_over_race_a_collector() {
    loom::model(|| {
        let (dom, b, freed, c) = setup(1);
        let old = obj(1);
        let slot = Arc::new(AtomicPtr::new(old));
        c.open(&b, 0, poison, false, true, 0).expect("open");
        let reader = spawn_reader(dom, slot.clone());
        let owner = {
            let (b, c, slot) = (b.clone(), c.clone(), slot.clone());
            thread::spawn(move || {
                let new = obj(2);
                let old = slot.swap(new, Ordering::AcqRel);
                let rec = dom.register();
                dom.read_lock(rec);
                // SAFETY: this thread owns the channel and holds the read lock across the call.
                let put = unsafe { c.put(old.cast(), 8, true) };
                let appended = matches!(put, Put::Appended { full: false });
                assert!(appended || put == Put::NoBlock, "{put:?}");
                dom.read_unlock(rec);
                dom.unregister(rec);
                if appended {
                    if let Some(mut added) = c.hand_over(&b, 0, false, false) {
                        assert!(added.take_recycle().is_none());
                    }
                }
                appended
            })
        };
        let by_collector = collect_front(&b, &c);
        let appended = owner.join().unwrap();
        reader.join().unwrap();
        let by_slots = collect_slots(&b).objects;
        assert!(c.hand_over(&b, 0, false, false).is_none());
        assert_eq!(
            by_collector + by_slots,
            usize::from(appended),
            "an appended object was lost or freed twice"
        );
        assert_eq!(freed.load(Ordering::Relaxed), usize::from(appended));
        check_pages(&b);
        let last = slot.load(Ordering::Relaxed) as usize;
        free_objs(&[old as usize, last]);
    });
}

/// A recycled block holds two ready objects; the owner puts two new ones in their place inside
/// its read-side sections (one of them unpublished while a reader may hold it) and frees each
/// replaced object after its section, while a collector steals the block, waits for a grace
/// period and frees what it holds: every object is freed exactly once, and the new object never
/// inside the reader's section.
#[test]
fn replacing_puts_race_a_collector() {
    loom::model(|| {
        let (dom, b, freed, c) = setup(2);
        let ready = [obj(1), obj(2)];
        // Set-up on this thread: fill a block with the two objects, hand it over and let its
        // grace period end; then hand over a second block, which brings the first back to be
        // recycled (the owner's path when a block fills up).
        let rec = dom.register();
        let append = |o: *mut Obj| {
            dom.read_lock(rec);
            // SAFETY: this thread owns the channel and holds the read lock.
            let put = unsafe { c.put(o.cast(), 8, true) };
            dom.read_unlock(rec);
            assert_eq!(put, Put::Appended { full: false });
        };
        c.open(&b, 0, poison, true, true, 0).expect("open");
        ready.iter().for_each(|&o| append(o));
        assert!(c.hand_over(&b, 0, true, true).is_some());
        dom.wait_for(dom.get_state(), false);
        let second = obj(3);
        c.open(&b, 0, poison, true, true, 0).expect("open");
        append(second);
        let mut added = c.hand_over(&b, 0, true, true).expect("ours");
        let back = added.take_recycle().expect("the ready block comes back");
        assert_eq!(c.install(&b, back, 0).blocks, 0, "installed, not freed");
        dom.unregister(rec);
        let new = [obj(10), obj(11)];
        let published = obj(12);
        let slot = Arc::new(AtomicPtr::new(new[0]));
        let reader = spawn_reader(dom, slot.clone());
        let owner = {
            let (c, slot, count) = (c.clone(), slot.clone(), freed.clone());
            let new = new.map(|o| o as usize);
            let published = published as usize;
            thread::spawn(move || {
                let rec = dom.register();
                let (mut replaced, mut put_in) = (0, 0);
                for (i, &o) in new.iter().enumerate() {
                    if i == 0 {
                        // Unpublish the first new object before retiring it.
                        slot.store(published as *mut Obj, Ordering::Release);
                    }
                    dom.read_lock(rec);
                    // SAFETY: this thread owns the channel and holds the read lock.
                    let put = unsafe { c.put(o as *mut u8, 8, true) };
                    dom.read_unlock(rec);
                    match put {
                        Put::Replaced { freed: p, full } => {
                            assert!(!full);
                            // After the section, as the real path frees it.
                            poison_one(p, Arc::as_ptr(&count).cast());
                            replaced += 1;
                            put_in += 1;
                        }
                        Put::Appended { full: false } => put_in += 1,
                        Put::NoBlock => break,
                        other => panic!("{other:?}"),
                    }
                }
                dom.unregister(rec);
                (replaced, put_in)
            })
        };
        let by_collector = collect_front(&b, &c);
        let (replaced, put_in) = owner.join().unwrap();
        reader.join().unwrap();
        let by_slots = collect_slots(&b).objects;
        assert!(
            c.hand_over(&b, 0, false, false).is_none(),
            "the collector took the block"
        );
        // The two ready objects, the second block's object and every new object put in: each
        // freed once, by the owner (replaced), the collector (still in the block) or a slot.
        assert_eq!(
            replaced + by_collector + by_slots,
            3 + put_in,
            "an object was lost"
        );
        assert_eq!(freed.load(Ordering::Relaxed), 3 + put_in);
        check_pages(&b);
        free_objs(&[ready[0] as usize, ready[1] as usize, second as usize]);
        free_objs(&new.map(|o| o as usize));
        free_objs(&[published as usize]);
    });
}

/// The owner unpublishes an object inside an outer read-side critical section and puts it into
/// its open block in a nested one — no barrier between the unpublish and the put's load of the
/// slot, as when `RcuCell`'s replace-and-kfree or a map's remove runs under a guard — while a
/// collector steals the block, waits for its stamp and frees what it holds, and a reader loads
/// the published pointer in its own section. The put's load of the slot seeing the block only
/// reads before the collector's swap: it does not order the unpublish before the grace period's
/// start, so a reader that begins after that start (not waited for) may still load the object.
/// The object is never freed inside the reader's section, and freed once if it was put.
#[test]
fn put_inside_an_outer_section_races_a_steal() {
    loom::model(|| {
        let (dom, b, freed, c) = setup(1);
        let (old, new) = (obj(1), obj(2));
        let slot = Arc::new(AtomicPtr::new(old));
        c.open(&b, 0, poison, false, true, 0).expect("open");
        let reader = spawn_reader(dom, slot.clone());
        let owner = {
            let (c, slot) = (c.clone(), slot.clone());
            let new = new as usize;
            thread::spawn(move || {
                let rec = dom.register();
                dom.read_lock(rec);
                let old = slot.swap(new as *mut Obj, Ordering::AcqRel);
                // The retire's own section is nested: no barrier after the unpublish.
                dom.read_lock(rec);
                // SAFETY: this thread owns the channel and holds the read lock across the call.
                let put = unsafe { c.put(old.cast(), 8, true) };
                dom.read_unlock(rec);
                dom.read_unlock(rec);
                dom.unregister(rec);
                // No block: the real retire takes its slow path; the model leaves the object
                // allocated (it checks frees, not that path).
                assert!(
                    matches!(put, Put::Appended { full: false } | Put::NoBlock),
                    "{put:?}"
                );
                put != Put::NoBlock
            })
        };
        let by_collector = collect_front(&b, &c);
        let appended = owner.join().unwrap();
        reader.join().unwrap();
        assert_eq!(
            by_collector,
            usize::from(appended),
            "an appended object was lost or freed twice"
        );
        assert_eq!(freed.load(Ordering::Relaxed), usize::from(appended));
        check_pages(&b);
        free_objs(&[old as usize, new as usize]);
    });
}
