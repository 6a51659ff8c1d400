//! `Domain::try_advance`: a grace period run by a caller that never waits. With no reader in
//! the way it ends the snapshot at once; a reader that began before blocks it, and the grace
//! period it leaves in progress still waits for that reader when the next runner finishes it.
#![cfg(not(rcu_loom))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rcu_core::raw::Domain;
use rcu_core::Mode;

/// Domains of this binary, kept reachable from a static so that the leak checker of the
/// sanitizer job does not report them (threads borrow them for `'static`).
static DOMAINS: std::sync::Mutex<Vec<&'static Domain>> = std::sync::Mutex::new(Vec::new());

fn domain() -> &'static Domain {
    let d: &'static Domain = Box::leak(Box::new(Domain::new(Mode::Fences)));
    DOMAINS.lock().unwrap().push(d);
    d
}

#[test]
fn ends_the_snapshot_when_no_reader_blocks() {
    let d = domain();
    let rec = d.register();
    let snap = d.get_state();
    assert!(!d.poll(snap));
    let gps = d.completed_grace_periods();
    assert!(d.try_advance(snap), "no reader is inside a section");
    assert!(d.poll(snap));
    assert_eq!(
        d.completed_grace_periods() - gps,
        1,
        "one grace period for one snapshot"
    );
    // A snapshot already done costs nothing.
    assert!(d.try_advance(snap));
    assert_eq!(d.completed_grace_periods() - gps, 1);
    d.unregister(rec);
}

#[test]
fn a_reader_blocks_it_and_the_next_runner_still_waits_for_that_reader() {
    let d = domain();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let left = Arc::new(AtomicBool::new(false));
    let reader = {
        let left = left.clone();
        std::thread::spawn(move || {
            let rec = d.register();
            d.read_lock(rec);
            entered_tx.send(()).unwrap();
            leave_rx.recv().unwrap();
            left.store(true, Ordering::SeqCst);
            d.read_unlock(rec);
            d.unregister(rec);
        })
    };
    entered_rx.recv().unwrap();
    let snap = d.get_state();
    assert!(
        !d.try_advance(snap),
        "the reader's section began before the snapshot"
    );
    assert!(!d.poll(snap));
    // Inside its own section a caller blocks itself: still no waiting, still `false`.
    let me = d.register();
    d.read_lock(me);
    assert!(!d.try_advance(snap));
    d.read_unlock(me);
    d.unregister(me);
    // A waiter finishes the grace period left in progress, only after the reader leaves.
    let waiter = std::thread::spawn(move || {
        d.wait_for(snap, false);
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !d.poll(snap),
        "the grace period ended with the reader still inside"
    );
    leave_tx.send(()).unwrap();
    waiter.join().unwrap();
    assert!(left.load(Ordering::SeqCst));
    assert!(d.poll(snap));
    reader.join().unwrap();
    // And once the reader is gone a new try succeeds without help.
    let snap2 = d.get_state();
    assert!(d.try_advance(snap2));
}
